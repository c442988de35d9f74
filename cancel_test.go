//go:build cgo

package fidius

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

const spinSource = `
__interface_hash__ = 0x1234
import time

def spin():
    while True:
        pass

def stubborn():
    # Catches the first interrupt and loops on: the next one stops it.
    try:
        while True:
            pass
    except BaseException:
        pass
    while True:
        pass

def spin_raw(data):
    while True:
        pass

def nap(seconds):
    time.sleep(seconds)
    return "rested"

def ping():
    return "pong"

def busy(n):
    x = 0
    for i in range(n):
        x += i
    return x
`

func spinPlugin(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, spinSource, MethodDesc{Name: "spin"}, MethodDesc{Name: "stubborn"},
		MethodDesc{Name: "spin_raw", WireRaw: true}, MethodDesc{Name: "nap"}, MethodDesc{Name: "ping"}, MethodDesc{Name: "busy"})
	return mustLoad(t, dir, d)
}

// guarded runs call, failing the test instead of hanging if it has not
// returned within 10 seconds.
func guarded(t *testing.T, call func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not return within 10s")
		return nil
	}
}

func TestDeadlineInterruptsRunningPython(t *testing.T) {
	h := spinPlugin(t)
	for _, c := range []struct {
		name string
		call func(context.Context) error
	}{
		{"spin", func(c context.Context) error { _, err := h.CallJSON(c, 0, nil); return err }},
		{"stubborn", func(c context.Context) error { _, err := h.CallJSON(c, 1, nil); return err }},
		{"spin_raw", func(c context.Context) error { _, err := h.CallRaw(c, 2, []byte("x")); return err }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := guarded(t, func() error { return c.call(dctx) })
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want context.DeadlineExceeded", err)
			}
			wantErr(t, err, context.DeadlineExceeded, c.name, "interrupted")
			t.Logf("returned %v after the call started", time.Since(start).Round(time.Millisecond))
			// The interpreter serves further calls normally.
			if got, err := Call[string](ctx, h, 4); err != nil || got != "pong" {
				t.Fatalf("after the interrupt: %q, %v", got, err)
			}
		})
	}
}

func TestCancelInterruptsRunningPython(t *testing.T) {
	h := spinPlugin(t)
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(30*time.Millisecond, cancel)
	err := guarded(t, func() error { _, err := h.CallJSON(cctx, 0, nil); return err })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestCancelLeavesOtherCallsAlone(t *testing.T) {
	h := spinPlugin(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls, failures int
	var mu sync.Mutex
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Cancellable contexts, so these calls carry control blocks too.
				c, cancel := context.WithTimeout(ctx, time.Minute)
				got, err := Call[string](c, h, 4)
				cancel()
				mu.Lock()
				calls++
				if err != nil || got != "pong" {
					failures++
					t.Errorf("concurrent call: %q, %v", got, err)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < 10; i++ {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		err := guarded(t, func() error { _, err := h.CallJSON(dctx, 0, nil); return err })
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("spin %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	if calls == 0 || failures != 0 {
		t.Fatalf("%d concurrent calls, %d failed", calls, failures)
	}
}

func TestLateInterruptDoesNotLeak(t *testing.T) {
	// Deadlines spread over the length of a short call, so that some
	// interrupts land during it and some just after it: one that misses
	// its call must not land in a later call on the same thread.
	h := spinPlugin(t)
	start := time.Now()
	if _, err := Call[int](ctx, h, 5, 2000); err != nil {
		t.Fatal(err)
	}
	length := time.Since(start)
	var interrupted, finished int
	for i := 0; i < 400; i++ {
		dctx, cancel := context.WithTimeout(ctx, time.Duration(i%40)*length/20)
		got, err := Call[int](dctx, h, 5, 2000)
		cancel()
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			interrupted++
		case err == nil && got == 1999000:
			finished++
		default:
			t.Fatalf("call %d: %d, %v", i, got, err)
		}
		if got, err := Call[string](ctx, h, 4); err != nil || got != "pong" {
			t.Fatalf("call after %d: %q, %v", i, got, err)
		}
	}
	if interrupted == 0 || finished == 0 {
		t.Fatalf("%d interrupted, %d finished: the deadlines missed the window", interrupted, finished)
	}
	t.Logf("%d interrupted, %d finished (a call takes %v)", interrupted, finished, length)
}

func TestCallerLeavesWhilePythonSleeps(t *testing.T) {
	// time.sleep cannot be interrupted, but the caller does not wait for
	// it: it gets its error when the deadline passes, and the call ends in
	// the background.
	h := spinPlugin(t)
	dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := guarded(t, func() error { _, err := h.CallJSON(dctx, 3, []byte(`1.0`)); return err })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if took := time.Since(start); took >= time.Second {
		t.Fatalf("returned after %v, when the sleep had ended: the caller waited for Python", took)
	}
	if out, err := h.CallJSON(ctx, 4, nil); err != nil || string(out) != `"pong"` {
		t.Fatalf("a call after it: %s, %v", out, err)
	}
}

func TestDeadlineJustBeforePythonStarts(t *testing.T) {
	// Deadlines of a few microseconds expire around the moment a call
	// enters Python, some after the context was last checked in Go: each
	// of these endless calls must still be interrupted.
	h := spinPlugin(t)
	for i := 0; i < 300; i++ {
		dctx, cancel := context.WithTimeout(ctx, time.Duration(i%30)*time.Microsecond)
		err := guarded(t, func() error { _, err := h.CallJSON(dctx, 0, nil); return err })
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	// Their callers have left; the calls themselves must have stopped too,
	// or they would hold every thread the gate allows and this would hang.
	err := guarded(t, func() error { _, err := h.CallJSON(ctx, 4, nil); return err })
	if err != nil {
		t.Fatal(err)
	}
}

const stormSource = `
__interface_hash__ = 0x1234
import importlib, logging, sys, threading, time
import vlock  # vendored: vendor/vlock.py

class CountingHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.n = 0

    def emit(self, record):
        self.n += 1

handler = CountingHandler()
log = logging.getLogger(__name__ + ".storm")
log.addHandler(handler)
log.propagate = False
log.setLevel(logging.INFO)
HELPER = __name__ + "_helper"
ticks = 0
cleaned = []

def spin():
    while True:
        pass

def logloop():
    while True:
        log.info("tick %d", 1)

def reimport():
    while True:
        sys.modules.pop(HELPER, None)
        try:
            importlib.import_module(HELPER)
        except KeyError:
            pass  # another thread popped it mid-import: the plugin's own race

def vendored():
    while True:
        vlock.critical()

def swallow():
    # Catches every cancellation and goes on: stopped once it has
    # swallowed one.
    global ticks
    while True:
        try:
            while True:
                ticks += 1
        except BaseException:
            pass

def loop_in_handler():
    # Loops inside the handler: stopped when the grace period ends.
    global ticks
    try:
        while True:
            pass
    except BaseException:
        while True:
            ticks += 1

started = []

def cleanup():
    started.append(1)
    try:
        while True:
            pass
    finally:
        cleaned.append("done")

def read_started():
    return len(started)

def read_ticks():
    return ticks

def read_cleaned():
    return list(cleaned)

def traced():
    def f(x):
        return x + 1
    sys.settrace(lambda *a: None)
    try:
        n = f(1)
    finally:
        sys.settrace(None)
    import cProfile  # here: an isolated interpreter on 3.12 refuses it
    p = cProfile.Profile()
    p.enable()
    n += f(2)
    p.disable()
    return n

def check():
    # From a new Python thread: a lock left held by a cancelled call on
    # this OS thread would be re-entrant here and hide the leak.
    result = {}

    def probe():
        held = []
        for name, lock in (("handler", handler.lock), ("vendored", vlock.LOCK)):
            if lock.acquire(timeout=2):
                lock.release()
            else:
                held.append(name)
        sys.modules.pop(HELPER, None)
        importlib.import_module(HELPER)
        log.info("after the storm")
        result["held"] = held

    t = threading.Thread(target=probe)
    t.start()
    t.join(10)
    if t.is_alive():
        return {"held": ["import or logging hangs"]}
    result["started"] = vlock.started
    result["finished"] = vlock.finished
    return result
`

const vlockSource = `
import threading, time
LOCK = threading.Lock()
started = 0
finished = 0

def critical():
    # acquire(); try: -- safe only because nothing interrupts it half-way.
    global started, finished
    LOCK.acquire()
    try:
        started += 1
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        finished += 1
    finally:
        LOCK.release()
`

func stormPlugin(t *testing.T) *PluginHandle {
	t.Helper()
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{
		mod + ".py":        strings.TrimPrefix(stormSource, "\n"),
		mod + "_helper.py": "import time\ntime.sleep(0.0005)\nVALUE = 1\n",
		"vendor/vlock.py":  vlockSource,
	})
	d := &InterfaceDescriptor{InterfaceName: "Storm", InterfaceHash: 0x1234}
	for _, n := range []string{"spin", "logloop", "reimport", "vendored", "swallow", "loop_in_handler", "cleanup",
		"read_ticks", "read_cleaned", "traced", "check", "read_started"} {
		d.Methods = append(d.Methods, MethodDesc{Name: n})
	}
	return mustLoad(t, dir, d)
}

// call calls the storm plugin's method by name without a deadline.
func callNamed[T any](t *testing.T, h *PluginHandle, name string, args ...any) T {
	t.Helper()
	var out T
	err := guarded(t, func() (err error) { out, err = Call[T](ctx, h, hidx(h, name), args...); return err })
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

// cancelAfter calls method name under a deadline of d and wants the
// deadline's error.
func cancelAfter(t *testing.T, h *PluginHandle, name string, d time.Duration) {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := guarded(t, func() error { _, err := h.CallJSON(dctx, hidx(h, name), nil); return err })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%s under %v: %v", name, d, err)
	}
}

// quiet waits until the plugin's ticks stop moving: the background work
// of cancelled calls has stopped.
func quiet(t *testing.T, h *PluginHandle) {
	t.Helper()
	last := callNamed[int](t, h, "read_ticks")
	for deadline := time.Now().Add(10 * time.Second); ; {
		time.Sleep(300 * time.Millisecond)
		now := callNamed[int](t, h, "read_ticks")
		if now == last {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a cancelled call is still running: ticks went on from %d to %d", last, now)
		}
		last = now
	}
}

func TestTracingWorksAfterCancelledCalls(t *testing.T) {
	if pythonMinor() == "3.12" {
		sharedOnly(t, "cProfile needs _lsprof, which an isolated interpreter refuses on 3.12")
	}
	// On 3.11 a withdrawn asynchronous exception left the thread's
	// "pending" flag set, and the first traced call after it hung.
	if !inChild(t) {
		wantChildPass(t, runChild(t, 60*time.Second))
		return
	}
	h := stormPlugin(t)
	for i := 0; i < 20; i++ {
		cancelAfter(t, h, "spin", time.Duration(5+i)*time.Millisecond)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ { // over several threads, where the cancelled calls ran
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				if got := callNamed[int](t, h, "traced"); got != 5 {
					t.Errorf("traced: %d", got)
				}
			}
		}()
	}
	wg.Wait()
}

func TestCancelStormsLeaveNoLockHeld(t *testing.T) {
	inProcessOnly(t, "a worker raises the cancellation wherever the call is, the standard library and vendor/ included, and kills a worker that does not stop")
	// Deadlines spread over 1-20 ms from three goroutines, against loops
	// in the standard library's logging and import machinery and in
	// vendored code that holds a lock between acquire() and try.
	if !inChild(t) {
		wantChildPass(t, runChild(t, 120*time.Second))
		return
	}
	h := stormPlugin(t)
	var wg sync.WaitGroup
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				d := time.Duration(1+(i*7+g*3)%20) * time.Millisecond
				for _, m := range []string{"logloop", "reimport", "vendored"} {
					cancelAfter(t, h, m, d)
				}
			}
		}()
	}
	wg.Wait()
	quiet(t, h)
	time.Sleep(500 * time.Millisecond) // the last calls stop at their next plugin line
	got := callNamed[map[string]any](t, h, "check")
	if held, _ := got["held"].([]any); len(held) != 0 {
		t.Fatalf("left held after 900 cancellations: %v", held)
	}
	if got["started"] != got["finished"] || got["started"] == 0.0 {
		t.Fatalf("vendored critical sections: %v started, %v finished: vendored code was interrupted half-way", got["started"], got["finished"])
	}
}

func TestPluginsThatSwallowCancellationAreStopped(t *testing.T) {
	h := stormPlugin(t)
	for _, m := range []string{"swallow", "loop_in_handler"} {
		t.Run(m, func(t *testing.T) {
			cancelAfter(t, h, m, 30*time.Millisecond)
			quiet(t, h)
		})
	}
}

func TestCancelledCallRunsItsFinally(t *testing.T) {
	inProcessOnly(t, "the test reads a call's progress from other calls while it runs, and a worker runs one call at a time (TestWorkerCancelledCallRunsItsFinally)")
	h := stormPlugin(t)
	// Cancelled once it runs: a call cancelled while it waits for the GIL
	// never starts, and has no finally to run.
	cctx, cancel := context.WithCancel(ctx)
	returned := make(chan error, 1)
	go func() { _, err := h.CallJSON(cctx, hidx(h, "cleanup"), nil); returned <- err }()
	for callNamed[int](t, h, "read_started") == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-returned; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	var got []string
	for deadline := time.Now().Add(10 * time.Second); len(got) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		got = callNamed[[]string](t, h, "read_cleaned")
	}
	if len(got) != 1 || got[0] != "done" {
		t.Fatalf("finally blocks that ran: %q", got)
	}
}

const gilSource = `
import time
calls = []

def hold_gil(n):
    return sum(range(n))  # one C call: the GIL is not released

def record(x):
    calls.append(x)
    return x

def recorded():
    return list(calls)

def ping():
    return "pong"

def slow_cleanup():
    try:
        while True:
            yield 1
    finally:
        end = time.monotonic() + 2
        while time.monotonic() < end:
            pass
`

func gilPlugin(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, gilSource, MethodDesc{Name: "hold_gil"}, MethodDesc{Name: "record"},
		MethodDesc{Name: "recorded"}, MethodDesc{Name: "ping"}, MethodDesc{Name: "slow_cleanup", Streaming: true})
	return mustLoad(t, dir, d)
}

// holdGIL starts a call that holds the GIL in one C function for about
// a second here, and returns a channel closed when it ends.
func holdGIL(t *testing.T, h *PluginHandle) <-chan struct{} {
	t.Helper()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		if _, err := Call[int](ctx, h, 0, 100_000_000); err != nil {
			t.Error(err)
		}
	}()
	time.Sleep(100 * time.Millisecond) // well inside the C call
	return ended
}

func TestDeadlineHoldsWhileWaitingForTheGIL(t *testing.T) {
	h := gilPlugin(t)
	ended := holdGIL(t, h)
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	input := []byte(`["mine"]`)
	start := time.Now()
	_, err := h.CallJSON(dctx, 1, input)
	took := time.Since(start)
	select {
	case <-ended:
		t.Fatalf("the call returned after %v, once the GIL was released", took)
	default:
	}
	if took > 500*time.Millisecond { // the GIL is held for about twice that
		t.Fatalf("the call returned after %v: it waited for the GIL", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	copy(input, "XXXXXXXX") // the caller owns its input again
	<-ended
	// The abandoned call never began: nothing of it reached Python.
	if got := callNamed[[]string](t, h, "recorded"); len(got) != 0 {
		t.Fatalf("an abandoned call ran: %q", got)
	}
}

func TestStreamDeadlineWithSlowFinally(t *testing.T) {
	h := gilPlugin(t)
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	var last error
	n := 0
	for _, err := range h.CallStream(dctx, 4, nil) {
		if err != nil {
			last = err
			break
		}
		n++
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the loop ended after %v: it waited for the generator's 2 s finally", took)
	}
	if !errors.Is(last, context.DeadlineExceeded) {
		t.Fatalf("after %d items: %v", n, last)
	}
	if got := callNamed[string](t, h, "ping"); got != "pong" {
		t.Fatal(got)
	}
}

const exitSource = `
import gc, sys, threading, time
lock = threading.Lock()
cleaned = []
ticks = 0

def with_sleep():
    with lock:
        time.sleep(0.05)  # the deadline passes here; __exit__ comes next

def try_finally_sleep():
    lock.acquire()
    try:
        time.sleep(0.05)
    finally:
        lock.release()

def finally_runs(i):
    try:
        time.sleep(0.05)
    finally:
        cleaned.append(i)

def contended_cleanup():
    # The grace period ends while the cleanup waits for the lock.
    try:
        while True:
            pass
    finally:
        with lock:
            cleaned.append("contended")

def hold_lock(seconds):
    with lock:
        time.sleep(seconds)

def lock_free():
    # From a new thread: the lock is not re-entrant, but be sure anyway.
    free = []
    def probe():
        if lock.acquire(timeout=1):
            lock.release()
            free.append(True)
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return bool(free)

def take_cleaned():
    out = list(cleaned)
    cleaned.clear()
    return out

class Loud:
    def __str__(self):
        global ticks
        while True:
            ticks += 1

def loud_result():
    return Loud()

def read_ticks():
    return ticks

def spin():
    while True:
        pass

def blocks():
    gc.collect()
    return sys.getallocatedblocks()
`

func exitPlugin(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, exitSource, MethodDesc{Name: "with_sleep"}, MethodDesc{Name: "try_finally_sleep"},
		MethodDesc{Name: "finally_runs"}, MethodDesc{Name: "contended_cleanup"}, MethodDesc{Name: "hold_lock"},
		MethodDesc{Name: "lock_free"}, MethodDesc{Name: "take_cleaned"}, MethodDesc{Name: "loud_result"},
		MethodDesc{Name: "read_ticks"}, MethodDesc{Name: "spin"}, MethodDesc{Name: "blocks"})
	return mustLoad(t, dir, d)
}

func TestCancelNeverSkipsCleanupAtABlockExit(t *testing.T) {
	// The deadline passes in time.sleep; the next plugin line is a with
	// block's exit or a finally block on the normal path. Raised there,
	// the exception would skip __exit__ or the release.
	h := exitPlugin(t)
	const runs = 10
	for _, m := range []string{"with_sleep", "try_finally_sleep"} {
		for i := 0; i < runs; i++ {
			cancelAfter(t, h, m, 10*time.Millisecond)
			time.Sleep(100 * time.Millisecond) // the sleep has ended
			if !callNamed[bool](t, h, "lock_free") {
				t.Fatalf("%s: the lock is held after cancelled call %d", m, i)
			}
		}
	}
	for i := 0; i < runs; i++ {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
		_, err := Call[any](dctx, h, hidx(h, "finally_runs"), i)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if got := callNamed[[]any](t, h, "take_cleaned"); len(got) != runs {
		t.Fatalf("finally blocks that ran: %v, want all %d", got, runs)
	}
}

func TestCancelAfterTheGracePeriodLetsAWithBlockExit(t *testing.T) {
	h := exitPlugin(t)
	for i := 0; i < 3; i++ {
		held := make(chan struct{})
		go func() {
			defer close(held)
			time.Sleep(10 * time.Millisecond)
			if _, err := Call[any](ctx, h, hidx(h, "hold_lock"), 0.4); err != nil {
				t.Error(err)
			}
		}()
		cancelAfter(t, h, "contended_cleanup", 30*time.Millisecond)
		<-held
		time.Sleep(300 * time.Millisecond)
		if !callNamed[bool](t, h, "lock_free") {
			t.Fatalf("round %d: the lock is held: the cleanup's with block did not exit", i)
		}
	}
	if got := callNamed[[]any](t, h, "take_cleaned"); len(got) != 3 {
		t.Fatalf("cleanups that ran: %v", got)
	}
}

func TestCancelStopsPluginCodeTheEncoderRuns(t *testing.T) {
	h := exitPlugin(t)
	cancelAfter(t, h, "loud_result", 30*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	quiet(t, h)
}

func TestCancelledCallsLeakNothing(t *testing.T) {
	h := exitPlugin(t)
	run := func(n int) {
		for i := 0; i < n; i++ {
			cancelAfter(t, h, "spin", 5*time.Millisecond) // long enough to start: each is stopped
		}
		time.Sleep(300 * time.Millisecond) // the last ones stop
	}
	run(100) // warm-up
	before := callNamed[int](t, h, "blocks")
	run(300)
	if grown := callNamed[int](t, h, "blocks") - before; grown > 50 {
		t.Fatalf("Python's allocated blocks grew by %d over 300 cancelled calls", grown)
	}
}

const escapeSource = `
import sys
ticks = 0

def escape():
    # Turns tracing off once it is interrupted (as a debugger helper
    # might), then loops on.
    global ticks
    try:
        while True:
            ticks += 1
    except BaseException:
        sys.settrace(None)
        if hasattr(sys, "monitoring"):
            for tool in range(6):
                sys.monitoring.set_events(tool, 0)
    while True:
        ticks += 1

def read_ticks():
    return ticks
`

func TestPluginCannotRemoveTheInterrupt(t *testing.T) {
	dir, d := simplePlugin(t, escapeSource, MethodDesc{Name: "escape"}, MethodDesc{Name: "read_ticks"})
	h := mustLoad(t, dir, d)
	cancelAfter(t, h, "escape", 30*time.Millisecond)
	quiet(t, h)
}
