package fidius

import (
	"context"
	"errors"
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
}
