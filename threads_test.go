//go:build cgo

package fidius

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const signalSource = `
import signal, threading, time

def take_signal():
    try:
        signal.signal(signal.SIGUSR1, lambda *a: None)
    except ValueError as e:
        return "refused: " + str(e)
    return "installed on " + threading.current_thread().name

def enable_faulthandler():
    import faulthandler  # here: an isolated interpreter refuses it
    faulthandler.enable()
    return faulthandler.is_enabled()

def register_faulthandler():
    import faulthandler
    faulthandler.register(signal.SIGUSR2)

def ping():
    return "pong"

def block_segv():
    import _signal
    for mod in (signal, _signal):
        try:
            mod.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGSEGV])
        except RuntimeError as e:
            continue
        return "blocked"
    return "refused"

def big_error(n):
    raise ValueError("x" * n)

def hold_gil(n):
    return sum(range(n))  # one C call: the GIL is not released
`

func signalPlugin(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, signalSource, MethodDesc{Name: "take_signal"}, MethodDesc{Name: "enable_faulthandler"},
		MethodDesc{Name: "register_faulthandler"}, MethodDesc{Name: "ping"}, MethodDesc{Name: "big_error"}, MethodDesc{Name: "hold_gil"}, MethodDesc{Name: "block_segv"})
	return mustLoad(t, dir, d)
}

// osThreads is the number of threads in this process.
func osThreads(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

func TestTenThousandConcurrentCallers(t *testing.T) {
	// Every caller used to wait for the GIL on an OS thread of its own,
	// until Go's thread limit ended the process.
	if !inChild(t) {
		r := runChild(t, 120*time.Second)
		wantChildPass(t, r)
		t.Log(strings.TrimSpace(strings.Split(r.Output, "\n")[1]))
		return
	}
	h := signalPlugin(t)
	debug.SetMaxThreads(100) // past it the process dies: the bound is the test
	const callers = 10_000
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c := ctx
			if i%2 == 1 { // half of them under a context that can end
				var cancel context.CancelFunc
				c, cancel = context.WithTimeout(ctx, time.Minute)
				defer cancel()
			}
			if got, err := Call[string](c, h, 3); err != nil || got != "pong" {
				errs <- errors.Join(err, errors.New("got "+got))
			}
		}()
	}
	// Every caller arrives while one call holds the GIL for about a second.
	held := make(chan struct{})
	go func() {
		defer close(held)
		if _, err := Call[int](ctx, h, 5, 100_000_000); err != nil {
			t.Error(err)
		}
	}()
	time.Sleep(50 * time.Millisecond)
	close(start)
	wg.Wait()
	<-held
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	fmt.Printf("%d OS threads after %d concurrent calls\n", osThreads(t), callers)
}

func TestThreadLimit(t *testing.T) {
	inProcessOnly(t, "SetThreadLimit bounds threads inside this process's Python")
	h := signalPlugin(t)
	old := SetThreadLimit(1)
	defer SetThreadLimit(old)
	if old != DefaultThreadLimit {
		t.Fatalf("the limit was %d", old)
	}
	// One thread for all: a caller whose context ends while it waits for
	// that thread leaves at once.
	hold := make(chan struct{})
	released := make(chan struct{})
	go func() {
		shared.withGIL(func() {})
		gate.enter(nil) // the only place
		close(hold)
		<-released
		gate.leave()
	}()
	<-hold
	dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err := h.CallJSON(dctx, 3, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting for a thread: %v", err)
	}
	close(released)
	if got, err := Call[string](ctx, h, 3); err != nil || got != "pong" {
		t.Fatalf("after: %q, %v", got, err)
	}
	if prev := SetThreadLimit(0); prev != 1 {
		t.Fatalf("SetThreadLimit returned %d", prev)
	}
	if got, err := Call[string](ctx, h, 3); err != nil || got != "pong" {
		t.Fatalf("with a limit below 1: %q, %v", got, err)
	}
}

func TestSignalSignalIsRefused(t *testing.T) {
	inProcessOnly(t, "a worker's plugin runs on the worker's main thread, in a process of its own, and may install signal handlers there")
	// Python's signal.signal works only on the thread that started
	// Python; a call that ran there replaced Go's handler for the signal.
	if !inChild(t) {
		wantChildPass(t, runChild(t, 60*time.Second))
		return
	}
	notified := make(chan os.Signal, 1)
	signal.Notify(notified, syscall.SIGUSR1)
	h := signalPlugin(t)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				got, err := Call[string](ctx, h, 0)
				if err != nil || !strings.HasPrefix(got, "refused: signal only works in main thread") {
					t.Errorf("signal.signal from a plugin: %q, %v", got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-notified:
	case <-time.After(5 * time.Second):
		t.Fatal("signal.Notify no longer receives SIGUSR1")
	}
}

// recoverNilPointer makes a Go nil-pointer panic and recovers from it.
func recoverNilPointer() (recovered any) {
	defer func() { recovered = recover() }()
	var p *int
	return *p
}

func TestFaultHandlerCannotTakeGoSignals(t *testing.T) {
	for _, c := range []struct {
		name string
		env  []string
	}{
		{"plugin enables it", nil},
		{"PYTHONFAULTHANDLER=1", []string{"PYTHONFAULTHANDLER=1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sharedOnly(t, "an isolated interpreter cannot import faulthandler")
			if !inChild(t) {
				r := runChild(t, 60*time.Second, c.env...)
				wantChildPass(t, r)
				if strings.Contains(r.Output, "Fatal Python error") {
					t.Fatalf("Python's fault handler ran:\n%s", r.Output)
				}
				return
			}
			h := signalPlugin(t)
			if enabled, err := Call[bool](ctx, h, 1); err != nil || enabled {
				t.Fatalf("faulthandler.enable(): enabled=%v, %v", enabled, err)
			}
			_, err := h.CallJSON(ctx, 2, nil)
			var perr *PluginError
			if !errors.As(err, &perr) || perr.Code != "RuntimeError" || !strings.Contains(perr.Message, "faulthandler.register is disabled") {
				t.Fatalf("faulthandler.register: %v", err)
			}
			if got, err := Call[string](ctx, h, 6); err != nil || got != "refused" {
				t.Fatalf("pthread_sigmask(SIG_BLOCK, [SIGSEGV]): %q, %v", got, err)
			}
			runtime.LockOSThread() // the thread the calls above ran on
			if r := recoverNilPointer(); r == nil {
				t.Fatal("no panic")
			}
			runtime.UnlockOSThread()
			if got, err := Call[string](ctx, h, 3); err != nil || got != "pong" {
				t.Fatalf("after the panic: %q, %v", got, err)
			}
		})
	}
}

func TestLargeErrorMessageIsNotKept(t *testing.T) {
	h := signalPlugin(t)
	runtime.LockOSThread() // calls under context.Background run on this thread
	defer runtime.UnlockOSThread()
	_, err := h.CallJSON(ctx, 4, []byte(`[40000000]`))
	var perr *PluginError
	if !errors.As(err, &perr) || len(perr.Message) != 40_000_000 {
		t.Fatalf("got %T %.100v", err, err)
	}
	if c := threadBufferCap(); c > 1<<20 {
		t.Fatalf("the thread's buffer keeps %d bytes after the error", c)
	}
}

func TestGateLosesNoWakeUp(t *testing.T) {
	// Two goroutines through a gate of one place, as fast as they can: a
	// place given back just as the other registers as a waiter must wake
	// it.
	g := newThreadGate(1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 500_000; i++ {
					g.enter(nil)
					g.leave()
				}
			}()
		}
		wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("stuck: %d in use, %d waiting", g.inUse.Load(), g.waiting.Load())
	}
}
