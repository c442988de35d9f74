//go:build cgo

// Adversarial tests of worker mode (WithWorkers): cancellation races,
// hostile plugins (signals, fork, the protocol's descriptors), streams,
// host functions, payload sizes, value parity with in-process plugins,
// reloads, dropped handles, memory limits and outside kills. Every test
// that could hang runs in a child process with a timeout (inGuard), or
// under a context.

package fidius

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// inGuard runs the rest of t in a child process killed after timeout:
// the parent returns false at once, having checked that the child
// passed; the child returns true and runs the test's body.
func inGuard(t *testing.T, timeout time.Duration) bool {
	t.Helper()
	if inChild(t) {
		return true
	}
	wantChildPass(t, runChild(t, timeout))
	return false
}

// within fails t if f has not returned after d.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		t.Fatalf("%s did not return within %v\n%s", what, d, buf[:runtime.Stack(buf, true)])
	}
}

// settleGoroutines waits until the goroutine count is at most base+slack.
func settleGoroutines(t *testing.T, base, slack int) {
	t.Helper()
	var n int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n = runtime.NumGoroutine(); n <= base+slack {
			return
		}
	}
	buf := make([]byte, 1<<20)
	t.Fatalf("goroutines: %d, was %d\n%s", n, base, buf[:runtime.Stack(buf, true)])
}

func wantPid(t *testing.T, h *PluginHandle, method string) int {
	t.Helper()
	pid, err := Call[int](ctx, h, hidx(h, method))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	return pid
}

// 1. Cancellation at random times over calls of fast, sleeping and
// CPU-bound methods.

const raceSource = `
import os, time
def pid():
    return os.getpid()
def fast(x):
    return x
def nap(ms):
    time.sleep(ms / 1000)
    return ms
def spin(ms):
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n
def count(n, ms):
    for i in range(n):
        time.sleep(ms / 1000)
        yield i
`

func racePlugin(t *testing.T, workers int) *PluginHandle {
	t.Helper()
	dir, d := simplePlugin(t, raceSource, MethodDesc{Name: "pid"}, MethodDesc{Name: "fast"}, MethodDesc{Name: "nap"},
		MethodDesc{Name: "spin"}, MethodDesc{Name: "count", Streaming: true})
	return loadWorkers(t, dir, d, WithWorkers(workers))
}

func TestReviewCancelRaces(t *testing.T) {
	if !inGuard(t, 120*time.Second) {
		return
	}
	for _, workers := range []int{1, 2} {
		t.Run(fmt.Sprint(workers), func(t *testing.T) {
			baseG := runtime.NumGoroutine()
			h := racePlugin(t, workers)
			pids := map[int]bool{}
			for _, pid := range h.workerPids() {
				pids[pid] = true
			}
			rng := rand.New(rand.NewSource(int64(workers)))
			var (
				wg                 sync.WaitGroup
				mu                 sync.Mutex
				ok, cancelled, bad int
				errs               []string
			)
			calls := make(chan [2]int, 500)
			for range 500 {
				calls <- [2]int{rng.Intn(4), rng.Intn(5000)}
			}
			close(calls)
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for c := range calls {
						cx, cancel := context.WithCancel(ctx)
						time.AfterFunc(time.Duration(c[1])*time.Microsecond, cancel)
						var err error
						switch c[0] {
						case 0:
							_, err = h.CallJSON(cx, hidx(h, "fast"), []byte(`["x"]`))
						case 1:
							_, err = h.CallJSON(cx, hidx(h, "nap"), []byte(`[3]`))
						case 2:
							_, err = h.CallJSON(cx, hidx(h, "spin"), []byte(`[4]`))
						case 3:
							for _, e := range h.CallStream(cx, hidx(h, "count"), []byte(`[3, 1]`)) {
								if e != nil {
									err = e
									break
								}
							}
						}
						cancel()
						mu.Lock()
						switch {
						case err == nil:
							ok++
						case errors.Is(err, context.Canceled):
							cancelled++
						default:
							bad++
							errs = append(errs, err.Error())
						}
						mu.Unlock()
					}
				}()
			}
			within(t, 60*time.Second, "500 calls", wg.Wait)
			t.Logf("%d workers: %d ok, %d cancelled, %d other errors", workers, ok, cancelled, bad)
			if bad > 0 {
				t.Errorf("errors other than cancellation: %q", errs)
			}
			// Every method still works.
			if v, err := Call[string](ctx, h, hidx(h, "fast"), "y"); err != nil || v != "y" {
				t.Fatalf("fast after the races: %q, %v", v, err)
			}
			if _, err := Call[int](ctx, h, hidx(h, "spin"), 1); err != nil {
				t.Fatal(err)
			}
			if got, err := collect(t, h.CallStream(ctx, hidx(h, "count"), []byte(`[2, 0]`))); err != nil || len(got) != 2 {
				t.Fatalf("count: %v, %v", got, err)
			}
			// Every call was interruptible Python: no worker had to be
			// killed.
			time.Sleep(workerGrace + 100*time.Millisecond)
			kids := children(t)
			if len(kids) != workers {
				t.Errorf("children: %v, want %d workers", kids, workers)
			}
			replaced := 0
			for pid := range kids {
				if !pids[pid] {
					replaced++
				}
			}
			if replaced > 0 {
				t.Errorf("%d of %d workers were replaced: a cancellation of interruptible Python code killed its worker", replaced, workers)
			}
			h.Close()
			waitNoChildren(t)
			settleGoroutines(t, baseG, 2)
		})
	}
}

// 2. A plugin that swallows CallCancelled and goes on.

func TestReviewSwallowedCancellation(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	dir, d := simplePlugin(t, `
import os, time
def pid():
    return os.getpid()
def stubborn():
    while True:
        try:
            while True:
                time.sleep(0.01)
        except BaseException:
            pass
def spinner():
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass
`, MethodDesc{Name: "pid"}, MethodDesc{Name: "stubborn"}, MethodDesc{Name: "spinner"})
	h := loadWorkers(t, dir, d)
	for _, m := range []string{"stubborn", "spinner"} {
		before := wantPid(t, h, "pid")
		cx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		start := time.Now()
		_, err := h.CallJSON(cx, hidx(h, m), nil)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
			t.Fatalf("%s: %v after %v", m, err, time.Since(start))
		}
		wantGone(t, before)
		if after := wantPid(t, h, "pid"); after == before {
			t.Fatalf("%s: worker %d still answers", m, before)
		}
	}
}

// 3. Hostile plugins: signals, fork, setsid, the protocol's descriptors.

const rvHostileSource = `
import os, signal, struct, time
def pid():
    return os.getpid()
def echo(x):
    return x
def big(n):
    return "x" * n
def raw_echo(b):
    return b
def nap(s):
    time.sleep(s)
    return s
def own_handler():
    signal.signal(signal.SIGUSR1, lambda *a: None)
def default_handler():
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
def ignore():
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
def block():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
def setsid():
    os.setsid()
    return os.getpid()
def fork_linger(s):
    child = os.fork()
    if child == 0:
        time.sleep(s)
        os._exit(0)
    return child
def fork_then_exit(s):
    child = os.fork()
    if child == 0:
        time.sleep(s)
        os._exit(0)
    with open("grandchild", "w") as f:
        f.write(str(child))
    os._exit(3)
def close_fd(fd):
    os.close(fd)
def close_shm_and_open():
    os.close(5)
    f = open("taken", "w+b")
    assert f.fileno() == 5, f.fileno()
    globals()["keep"] = f
def garbage(data):
    os.write(3, bytes(data))
    return "after the garbage"
def shrink_shared():
    os.ftruncate(5, 0)
def inherited():
    return os.system("test -e /proc/self/fd/3 || test -e /proc/self/fd/4 || test -e /proc/self/fd/5")
def read_protocol():
    return len(os.read(3, 8))
def read_protocol_blocking():
    os.set_blocking(3, True)
    return len(os.read(3, 8))
`

func rvHostilePlugin(t *testing.T, opts ...Option) (*PluginHandle, string) {
	t.Helper()
	var methods []MethodDesc
	for _, name := range []string{"pid", "echo", "big", "nap", "own_handler", "default_handler", "ignore", "block", "setsid",
		"fork_linger", "fork_then_exit", "close_fd", "close_shm_and_open", "garbage", "read_protocol", "read_protocol_blocking",
		"shrink_shared", "inherited", "raw_echo"} {
		methods = append(methods, MethodDesc{Name: name, WireRaw: name == "raw_echo"})
	}
	dir, d := simplePlugin(t, rvHostileSource, methods...)
	return loadWorkers(t, dir, d, opts...), dir
}

// wantWorks checks that the handle still answers, and returns the
// worker's pid.
func wantWorks(t *testing.T, h *PluginHandle) int {
	t.Helper()
	var pid int
	within(t, 10*time.Second, "a call after the hostile one", func() {
		v, err := Call[string](ctx, h, hidx(h, "echo"), "still here")
		if err != nil || v != "still here" {
			t.Errorf("echo: %q, %v", v, err)
		}
		pid, err = Call[int](ctx, h, hidx(h, "pid"))
		if err != nil {
			t.Errorf("pid: %v", err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	return pid
}

// cancelNap runs nap(30) under a 100 ms deadline and checks that the
// caller gets its deadline at once.
func cancelNap(t *testing.T, h *PluginHandle) {
	t.Helper()
	cx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.CallJSON(cx, hidx(h, "nap"), []byte("[30]"))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("nap: %v after %v", err, time.Since(start))
	}
}

func TestReviewHostileSignals(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h, _ := rvHostilePlugin(t)
	for _, m := range []string{"own_handler", "default_handler", "ignore", "block"} {
		t.Run(m, func(t *testing.T) {
			before := wantWorks(t, h)
			if _, err := h.CallJSON(ctx, hidx(h, m), nil); err != nil {
				t.Fatal(err)
			}
			// The cancellation cannot raise: the caller still returns at
			// once, the worker is killed (or dies of the signal) and
			// replaced.
			cancelNap(t, h)
			wantGone(t, before)
			wantWorks(t, h)
		})
	}
}

func TestReviewHostileSetsid(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h, _ := rvHostilePlugin(t)
	// The worker leads its process group: setsid is refused.
	_, err := h.CallJSON(ctx, hidx(h, "setsid"), nil)
	var pe *PluginError
	if !errors.As(err, &pe) || pe.Code != "PermissionError" {
		t.Fatal(err)
	}
	wantWorks(t, h)
	cancelNap(t, h)
	wantWorks(t, h)
	within(t, 5*time.Second, "Close", func() { h.Close() })
	waitNoChildren(t)
}

// A fork whose child lingers with the worker's stdout, stderr and
// protocol socket: Close must not wait for it.
func TestReviewHostileForkLingers(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h, _ := rvHostilePlugin(t)
	grandchild, err := Call[int](ctx, h, hidx(h, "fork_linger"), 20)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(grandchild, syscall.SIGKILL)
	wantWorks(t, h)
	within(t, 5*time.Second, "Close with a forked child holding the worker's pipes", func() { h.Close() })
	waitNoChildren(t)
}

// A worker that forks and then exits: the call must get its crash at
// once, not when the forked child (which holds the socket) exits.
func TestReviewHostileForkThenExit(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h, dir := rvHostilePlugin(t)
	defer func() {
		if b, err := os.ReadFile(filepath.Join(dir, "grandchild")); err == nil {
			var pid int
			fmt.Sscan(string(b), &pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}()
	within(t, 5*time.Second, "a call whose worker exited leaving a forked child", func() {
		_, err := h.CallJSON(ctx, hidx(h, "fork_then_exit"), []byte("[20]"))
		ce := wantCrash(t, err)
		if ce.ExitCode != 3 {
			t.Errorf("crash: %+v", ce)
		}
	})
	wantWorks(t, h)
}

// A plugin that shrinks the shared file under the host's mapping: the
// host must not die of SIGBUS.
func TestReviewHostileShrinksSharedFile(t *testing.T) {
	if !inGuard(t, 30*time.Second) {
		return
	}
	h, _ := rvHostilePlugin(t)
	big := bytes.Repeat([]byte("b"), 1<<20)
	if out, err := h.CallRaw(ctx, hidx(h, "raw_echo"), big); err != nil || !bytes.Equal(out, big) {
		t.Fatalf("echo: %d bytes, %v", len(out), err)
	}
	if _, err := h.CallJSON(ctx, hidx(h, "shrink_shared"), nil); err != nil {
		t.Fatal(err)
	}
	// The host's copy into the shrunk file faults: the call fails, and
	// its worker, which broke the protocol, is replaced.
	_, err := h.CallRaw(ctx, hidx(h, "raw_echo"), big)
	if ce := wantCrash(t, err); !strings.Contains(ce.Reason, "shared file") {
		t.Fatalf("echo after the shrink: %v", err)
	}
	if out, err := h.CallRaw(ctx, hidx(h, "raw_echo"), big); err != nil || !bytes.Equal(out, big) {
		t.Fatalf("echo on the new worker: %d bytes, %v", len(out), err)
	}
	wantWorks(t, h)
}

func TestReviewHostileDescriptors(t *testing.T) {
	if !inGuard(t, 90*time.Second) {
		return
	}
	h, _ := rvHostilePlugin(t)
	t.Run("close fd 3", func(t *testing.T) {
		within(t, 5*time.Second, "the call", func() {
			_, err := h.CallJSON(ctx, hidx(h, "close_fd"), []byte("[3]"))
			wantCrash(t, err)
		})
		wantWorks(t, h)
	})
	t.Run("close fd 4", func(t *testing.T) {
		before := wantWorks(t, h)
		if _, err := h.CallJSON(ctx, hidx(h, "close_fd"), []byte("[4]")); err != nil {
			t.Fatal(err)
		}
		wantWorks(t, h)
		// The cancellation's handler cannot read fd 4, so it cannot
		// raise: the worker is killed after the grace period.
		cancelNap(t, h)
		wantGone(t, before)
		wantWorks(t, h)
	})
	t.Run("close fd 5", func(t *testing.T) {
		if _, err := h.CallJSON(ctx, hidx(h, "close_fd"), []byte("[5]")); err != nil {
			t.Fatal(err)
		}
		within(t, 5*time.Second, "a large result", func() {
			_, err := h.CallJSON(ctx, hidx(h, "big"), []byte("[100000]"))
			wantCrash(t, err)
		})
		wantWorks(t, h)
	})
	t.Run("fd 5 replaced by a file", func(t *testing.T) {
		if _, err := h.CallJSON(ctx, hidx(h, "close_shm_and_open"), nil); err != nil {
			t.Fatal(err)
		}
		within(t, 5*time.Second, "a large result", func() {
			out, err := h.CallJSON(ctx, hidx(h, "big"), []byte("[100000]"))
			if err == nil && string(out) != `"`+strings.Repeat("x", 100000)+`"` {
				t.Errorf("a wrong result, and no error: %d bytes starting %q", len(out), out[:min(len(out), 20)])
			}
		})
		wantWorks(t, h)
	})
	for _, garbage := range []string{"garbage!", "\x00\x00\x00\x00\x00\x00\x00\x00", "\xff\xff\xff\x7f\x14\x00\x00\x00", "\x10\x00\x00\x00\x14\x80\x00\x00"} {
		t.Run(fmt.Sprintf("write %q to fd 3", garbage), func(t *testing.T) {
			in, _ := json.Marshal([][]byte{[]byte(garbage)})
			in = bytes.Replace(in, []byte(`"`), nil, -1)
			var ints []int
			for _, c := range []byte(garbage) {
				ints = append(ints, int(c))
			}
			in, _ = json.Marshal([][]int{ints})
			h, _ := rvHostilePlugin(t)
			within(t, 5*time.Second, "the call", func() {
				out, err := h.CallJSON(ctx, hidx(h, "garbage"), in)
				if err == nil {
					t.Errorf("garbage on the protocol, and the call answered %q", out)
				} else if ce := wantCrash(t, err); !strings.Contains(ce.Reason, "it sent") {
					t.Errorf("not a protocol error: %v", err)
				}
				t.Logf("error: %v", err)
			})
			wantWorks(t, h)
		})
	}
	t.Run("programs it runs do not inherit the protocol", func(t *testing.T) {
		if st, err := Call[int](ctx, h, hidx(h, "inherited")); err != nil || st == 0 {
			t.Fatalf("a shell the plugin ran has fd 3, 4 or 5 (status %d, %v)", st, err)
		}
	})
	t.Run("read fd 3", func(t *testing.T) {
		_, err := h.CallJSON(ctx, hidx(h, "read_protocol"), nil)
		var pe *PluginError
		if !errors.As(err, &pe) || pe.Code != "BlockingIOError" {
			t.Fatalf("reading the protocol: %v", err)
		}
		wantWorks(t, h)
		cx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err = h.CallJSON(cx, hidx(h, "read_protocol_blocking"), nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a blocking read of the protocol: %v", err)
		}
		wantWorks(t, h)
	})
}

// 4. Streams.

const rvStreamSource = `
import os, time
state = {"closed": 0, "version": VERSION}
def pid():
    return os.getpid()
def closed():
    return state["closed"]
def version():
    return state["version"]
def count(n, ms):
    try:
        for i in range(n):
            if ms:
                time.sleep(ms / 1000)
            yield [state["version"], i]
    finally:
        state["closed"] += 1
def crash_at(n, code):
    for i in range(n):
        yield i
    os._exit(code)
`

func rvStreamPlugin(t *testing.T, opts ...Option) (*PluginHandle, string) {
	t.Helper()
	dir, d := simplePlugin(t, strings.Replace(rvStreamSource, "VERSION", "1", 1), MethodDesc{Name: "pid"}, MethodDesc{Name: "closed"},
		MethodDesc{Name: "version"}, MethodDesc{Name: "count", Streaming: true}, MethodDesc{Name: "crash_at", Streaming: true})
	return loadWorkers(t, dir, d, opts...), dir
}

func TestReviewStreams(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h, dir := rvStreamPlugin(t)
	closed := func() int {
		t.Helper()
		n, err := Call[int](ctx, h, hidx(h, "closed"))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Run("break early", func(t *testing.T) {
		before := closed()
		n := 0
		for _, err := range h.CallStream(ctx, hidx(h, "count"), []byte("[100, 0]")) {
			if err != nil {
				t.Fatal(err)
			}
			if n++; n == 2 {
				break
			}
		}
		if closed() != before+1 {
			t.Fatalf("the generator's finally did not run before the loop returned")
		}
	})
	t.Run("cancel mid-stream", func(t *testing.T) {
		before := closed()
		pid := wantPid(t, h, "pid")
		cx, cancel := context.WithCancel(ctx)
		defer cancel()
		n := 0
		var last error
		start := time.Now()
		for _, err := range h.CallStream(cx, hidx(h, "count"), []byte("[100, 50]")) {
			if err != nil {
				last = err
				break
			}
			if n++; n == 2 {
				cancel()
			}
		}
		if !errors.Is(last, context.Canceled) || time.Since(start) > 2*time.Second {
			t.Fatalf("after cancel: %v (%v)", last, time.Since(start))
		}
		for deadline := time.Now().Add(2 * time.Second); closed() != before+1 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if closed() != before+1 {
			t.Fatalf("the cancelled generator's finally did not run")
		}
		if after := wantPid(t, h, "pid"); after != pid {
			t.Fatalf("a cancelled stream of interruptible code killed its worker")
		}
	})
	t.Run("crash mid-stream", func(t *testing.T) {
		var got []string
		var last error
		for item, err := range h.CallStream(ctx, hidx(h, "crash_at"), []byte("[2, 9]")) {
			if err != nil {
				last = err
				break
			}
			got = append(got, string(item))
		}
		if ce := wantCrash(t, last); ce.ExitCode != 9 || len(got) != 2 {
			t.Fatalf("%v, %+v", got, ce)
		}
		wantPid(t, h, "pid")
	})
	t.Run("nested", func(t *testing.T) {
		var got []string
		for a, err := range h.CallStream(ctx, hidx(h, "count"), []byte("[3, 0]")) {
			if err != nil {
				t.Fatal(err)
			}
			for b, err := range h.CallStream(ctx, hidx(h, "count"), []byte("[2, 0]")) {
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(a)+string(b))
			}
		}
		if len(got) != 6 {
			t.Fatalf("%v", got)
		}
	})
	t.Run("reload while open", func(t *testing.T) {
		var got []string
		reloaded := false
		for item, err := range h.CallStream(ctx, hidx(h, "count"), []byte("[3, 0]")) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, string(item))
			if !reloaded {
				reloaded = true
				files, _ := filepath.Glob(filepath.Join(dir, "*.py"))
				src, _ := os.ReadFile(files[0])
				os.WriteFile(files[0], bytes.Replace(src, []byte(`"version": 1`), []byte(`"version": 2`), 1), 0o644)
				if err := h.Reload(); err != nil {
					t.Fatal(err)
				}
				if v, err := Call[int](ctx, h, hidx(h, "version")); err != nil || v != 2 {
					t.Fatalf("a call after the reload: %d, %v", v, err)
				}
			}
		}
		if strings.Join(got, " ") != "[1,0] [1,1] [1,2]" {
			t.Fatalf("the stream open at the reload: %v", got)
		}
	})
	t.Run("Close while open", func(t *testing.T) {
		var got []string
		var last error
		closedAt := -1
		for item, err := range h.CallStream(ctx, hidx(h, "count"), []byte("[3, 0]")) {
			if err != nil {
				last = err
				break
			}
			got = append(got, string(item))
			if closedAt < 0 {
				closedAt = len(got)
				h.Close()
			}
		}
		t.Logf("items %v, then %v", got, last)
		waitNoChildren(t)
	})
}

// A stream left open (a panic in the loop body) must not keep its worker
// alive after Close.
func TestReviewStreamPanicThenClose(t *testing.T) {
	if !inGuard(t, 30*time.Second) {
		return
	}
	h, _ := rvStreamPlugin(t)
	for _, how := range []string{"panic", "Goexit"} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer func() { recover() }()
			for range h.CallStream(ctx, hidx(h, "count"), []byte("[100, 0]")) {
				if how == "panic" {
					panic("the loop body panics")
				}
				runtime.Goexit() // as t.FailNow in a loop body
			}
		}()
		<-done
		// As in-process, the generator is closed (its finally ran) when
		// the loop is left.
		if n, err := Call[int](ctx, h, hidx(h, "closed")); err != nil || n != 1 {
			t.Fatalf("after a %s in the loop body: %d generators closed, %v", how, n, err)
		}
		h.Close()
		waitNoChildren(t)
		h, _ = rvStreamPlugin(t)
	}
}

// 5. Host functions.

const backSource = `
import fidius, os, time
__fidius_host_imports__ = {"Back": {"version": 1, "hash": 7}}
def pid():
    return os.getpid()
def rec(n):
    if n == 0:
        return [os.getpid()]
    return fidius.host("Back").again(n - 1) + [os.getpid()]
def ask(what):
    return fidius.host("Back").ask(what)
def ask_and_keep(what):
    try:
        return fidius.host("Back").ask(what)
    except Exception as e:
        return [type(e).__name__, getattr(e, "code", None), str(e)]
def nap(s):
    time.sleep(s)
    return s
`

func backPlugin(t *testing.T, ask HostFunc, opts ...Option) (*PluginHandle, string) {
	t.Helper()
	var h *PluginHandle
	back := &HostInterface{Name: "Back", Version: 1, Hash: 7, Funcs: map[string]HostFunc{
		"again": func(args json.RawMessage) (any, error) {
			var a []int
			json.Unmarshal(args, &a)
			return Call[[]int](ctx, h, hidx(h, "rec"), a[0])
		},
		"ask": ask,
	}}
	dir, d := simplePlugin(t, backSource, MethodDesc{Name: "pid"}, MethodDesc{Name: "rec"}, MethodDesc{Name: "ask"},
		MethodDesc{Name: "ask_and_keep"}, MethodDesc{Name: "nap"})
	h = loadWorkers(t, dir, d, append([]Option{WithHostInterface(back)}, opts...)...)
	return h, dir
}

func TestReviewHostFunctions(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	release := make(chan struct{})
	h, _ := backPlugin(t, func(args json.RawMessage) (any, error) {
		var a []string
		json.Unmarshal(args, &a)
		switch a[0] {
		case "panic":
			panic("the host function panics")
		case "block":
			<-release
			return "released", nil
		case "slow":
			time.Sleep(time.Second)
			return "slow", nil
		}
		return a[0], nil
	})
	t.Run("recursion with one worker", func(t *testing.T) {
		var pids []int
		within(t, 10*time.Second, "rec(30)", func() {
			var err error
			pids, err = Call[[]int](ctx, h, hidx(h, "rec"), 30)
			if err != nil {
				t.Error(err)
			}
		})
		if len(pids) != 31 {
			t.Fatalf("%v", pids)
		}
		for _, p := range pids {
			if p != pids[0] {
				t.Fatalf("not one worker: %v", pids)
			}
		}
	})
	t.Run("panic", func(t *testing.T) {
		got, err := Call[[]any](ctx, h, hidx(h, "ask_and_keep"), "panic")
		if err != nil || len(got) != 3 || got[1] != "HOST_PANIC" || !strings.Contains(fmt.Sprint(got[2]), "the host function panics") {
			t.Fatalf("%v, %v", got, err)
		}
		_, err = h.CallJSON(ctx, hidx(h, "ask"), []byte(`["panic"]`))
		var pe *PluginError
		if !errors.As(err, &pe) || pe.Code != "HOST_PANIC" {
			t.Fatalf("%v", err)
		}
		wantPid(t, h, "pid")
	})
	t.Run("blocks past the call's deadline", func(t *testing.T) {
		// The worker waits for Go, not in plugin code: nothing to kill.
		before := wantPid(t, h, "pid")
		cx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := h.CallJSON(cx, hidx(h, "ask"), []byte(`["slow"]`))
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 500*time.Millisecond {
			t.Fatalf("%v after %v", err, time.Since(start))
		}
		time.Sleep(1500 * time.Millisecond) // the host function returns meanwhile
		if after := wantPid(t, h, "pid"); after != before {
			t.Errorf("the worker (%d, now %d) was killed while it waited for a host function: nothing in it needed stopping", before, after)
		}
	})
	t.Run("blocks forever", func(t *testing.T) {
		cx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err := h.CallJSON(cx, hidx(h, "ask"), []byte(`["block"]`))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		// The blocked host function holds nothing the other calls need.
		wantPid(t, h, "pid")
		close(release)
	})
}

// A call that waits in a host function lends its worker; a cancellation
// of that call must not kill an unrelated call running in the worker
// meanwhile.
func TestReviewLenderCancelKillsBorrower(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h, _ := backPlugin(t, func(args json.RawMessage) (any, error) {
		time.Sleep(300 * time.Millisecond)
		return "slept", nil
	})
	cx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	aDone := make(chan error, 1)
	go func() {
		_, err := h.CallJSON(cx, hidx(h, "ask"), []byte(`["x"]`))
		aDone <- err
	}()
	time.Sleep(50 * time.Millisecond)
	// B borrows the worker A lent while its host function runs.
	v, err := Call[float64](ctx, h, hidx(h, "nap"), 1.5)
	if err != nil || v != 1.5 {
		t.Errorf("an unrelated call: %v, %v", v, err)
	}
	if err := <-aDone; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the cancelled call: %v", err)
	}
}

// Reload and Close while a call waits in a host function: that call
// must finish normally.
func TestReviewReloadCloseDuringHostFunction(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	for _, what := range []string{"Reload", "Close"} {
		t.Run(what, func(t *testing.T) {
			h, _ := backPlugin(t, func(args json.RawMessage) (any, error) {
				time.Sleep(300 * time.Millisecond)
				return "slept", nil
			})
			done := make(chan error, 1)
			go func() {
				v, err := Call[string](ctx, h, hidx(h, "ask"), "x")
				if err == nil && v != "slept" {
					err = fmt.Errorf("got %q", v)
				}
				done <- err
			}()
			time.Sleep(100 * time.Millisecond)
			if what == "Reload" {
				if err := h.Reload(); err != nil {
					t.Fatal(err)
				}
			} else {
				h.Close()
			}
			if err := <-done; err != nil {
				t.Errorf("a call in a host function at the %s: %v", what, err)
			}
			h.Close()
			waitNoChildren(t)
		})
	}
}

// 6. Client and bidirectional streams whose items call the plugin.

const feedSource = `
import os
def pid():
    return os.getpid()
def echo(x):
    return x
def count(n):
    for i in range(n):
        yield i
def total(items):
    return sum(items)
def doubled(items):
    for x in items:
        yield 2 * x
`

func feedPlugin(t *testing.T) *PluginHandle {
	t.Helper()
	dir, d := simplePlugin(t, feedSource, MethodDesc{Name: "pid"}, MethodDesc{Name: "echo"}, MethodDesc{Name: "count", Streaming: true},
		MethodDesc{Name: "total", ClientStreaming: true}, MethodDesc{Name: "doubled", Streaming: true, ClientStreaming: true})
	return loadWorkers(t, dir, d)
}

func TestReviewFeeds(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h := feedPlugin(t)
	calling := func(yield func(json.RawMessage, error) bool) {
		for i := 1; i <= 5; i++ {
			out, err := h.CallJSON(ctx, hidx(h, "echo"), []byte(fmt.Sprint(i)))
			if !yield(out, err) {
				return
			}
		}
	}
	streaming := func(yield func(json.RawMessage, error) bool) {
		for item, err := range h.CallStream(ctx, hidx(h, "count"), []byte("[5]")) {
			if !yield(item, err) {
				return
			}
		}
	}
	for name, items := range map[string]iter.Seq2[json.RawMessage, error]{"calls": calling, "a stream": streaming} {
		t.Run("items that make "+name, func(t *testing.T) {
			within(t, 10*time.Second, "the calls", func() {
				out, err := h.CallClientStream(ctx, hidx(h, "total"), items, nil)
				if err != nil {
					t.Errorf("client stream: %v", err)
				}
				t.Logf("total: %s", out)
				got, err := collect(t, h.CallBidiStream(ctx, hidx(h, "doubled"), items, nil))
				if err != nil || len(got) != 5 {
					t.Errorf("bidi: %v, %v", got, err)
				}
			})
		})
	}
	t.Run("items that panic", func(t *testing.T) {
		panicking := func(yield func(json.RawMessage, error) bool) {
			yield(json.RawMessage("1"), nil)
			panic("the items panic")
		}
		_, err := h.CallClientStream(ctx, hidx(h, "total"), panicking, nil)
		if err == nil || !strings.Contains(err.Error(), "the items panic") {
			t.Fatalf("%v", err)
		}
		_, err = collect(t, h.CallBidiStream(ctx, hidx(h, "doubled"), panicking, nil))
		if err == nil || !strings.Contains(err.Error(), "the items panic") {
			t.Fatalf("%v", err)
		}
		wantPid(t, h, "pid")
	})
	t.Run("items that never end", func(t *testing.T) {
		baseG := runtime.NumGoroutine()
		var stopped atomic.Int32
		endless := func(yield func(json.RawMessage, error) bool) {
			defer stopped.Add(1)
			for yield(json.RawMessage("1"), nil) {
			}
		}
		blocked := func(yield func(json.RawMessage, error) bool) {
			defer stopped.Add(1)
			yield(json.RawMessage("1"), nil)
			select {} // never: only stop ends it... which it cannot
		}
		_ = blocked
		cx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := h.CallClientStream(cx, hidx(h, "total"), endless, nil)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
			t.Fatalf("%v after %v", err, time.Since(start))
		}
		cx2, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel2()
		_, err = collect(t, h.CallBidiStream(cx2, hidx(h, "doubled"), endless, nil))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v", err)
		}
		for deadline := time.Now().Add(3 * time.Second); stopped.Load() < 2 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if stopped.Load() != 2 {
			t.Fatalf("the items were not stopped: %d", stopped.Load())
		}
		wantPid(t, h, "pid")
		settleGoroutines(t, baseG, 2)
	})
}

// 7. Payload sizes.

const payloadSource = `
import array
def echo(b):
    return b
def length(b):
    return len(b).to_bytes(8, "little")
def make(n):
    return b"y" * int.from_bytes(n, "little")
def strided(b):
    return memoryview(b)[::2]
def doubles(b):
    return array.array("d", [1.5, 2.5])
def as_memoryview(b):
    return memoryview(bytearray(b))
def empty(b):
    return b""
def jecho(x):
    return x
`

func payloadMethods() []MethodDesc {
	var methods []MethodDesc
	for _, name := range []string{"echo", "length", "make", "strided", "doubles", "as_memoryview", "empty"} {
		methods = append(methods, MethodDesc{Name: name, WireRaw: true})
	}
	return append(methods, MethodDesc{Name: "jecho"})
}

func TestReviewPayloads(t *testing.T) {
	if !inGuard(t, 120*time.Second) {
		return
	}
	dir, d := simplePlugin(t, payloadSource, payloadMethods()...)
	h := loadWorkers(t, dir, d)
	for _, n := range []int{0, 1, 4095, 4096, shmMin - frameHeader - 1, shmMin - frameHeader, shmMin - 1, shmMin, shmMin + 1, 1 << 20, 50 << 20} {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i * 7)
		}
		out, err := h.CallRaw(ctx, hidx(h, "echo"), src)
		if err != nil || !bytes.Equal(out, src) {
			t.Fatalf("raw echo of %d bytes: %d bytes, %v", n, len(out), err)
		}
		if out == nil {
			t.Fatalf("raw echo of %d bytes: nil", n)
		}
		// Appended to a buffer that has room, and to one that has not.
		dst := append(make([]byte, 0, n+10), "head"...)
		out, err = h.CallRawAppend(ctx, hidx(h, "echo"), dst, src)
		if err != nil || string(out[:4]) != "head" || !bytes.Equal(out[4:], src) {
			t.Fatalf("raw append of %d bytes: %d bytes, %v", n, len(out), err)
		}
		var num [8]byte
		num[0], num[1], num[2], num[3] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
		out, err = h.CallRaw(ctx, hidx(h, "make"), num[:])
		if err != nil || len(out) != n || (n > 0 && out[n-1] != 'y') {
			t.Fatalf("raw result of %d bytes: %d bytes, %v", n, len(out), err)
		}
		// JSON: a string of n-2 bytes is an n-byte argument.
		if n >= 2 {
			s := `"` + strings.Repeat("z", n-2) + `"`
			out, err = h.CallJSON(ctx, hidx(h, "jecho"), []byte(s))
			if err != nil || string(out) != s {
				t.Fatalf("JSON echo of %d bytes: %d bytes, %v", n, len(out), err)
			}
		}
	}
	// Zero-length input and output.
	if out, err := h.CallRaw(ctx, hidx(h, "empty"), nil); err != nil || out == nil || len(out) != 0 {
		t.Fatalf("empty: %v, %v", out, err)
	}
}

func TestReviewRawResultsParity(t *testing.T) {
	dir, d := simplePlugin(t, payloadSource, payloadMethods()...)
	w := loadWorkers(t, dir, d)
	in, err := LoadPythonPlugin(dir, d)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	for _, m := range []string{"strided", "doubles", "as_memoryview", "empty"} {
		for _, input := range [][]byte{nil, []byte("abcdefg")} {
			a, aerr := in.CallRaw(ctx, hidx(in, m), input)
			b, berr := w.CallRaw(ctx, hidx(w, m), input)
			if !bytes.Equal(a, b) || (aerr == nil) != (berr == nil) || aerr != nil && !sameKind(aerr, berr) {
				t.Errorf("%s(%q): in-process %q, %v; worker %q, %v", m, input, a, aerr, b, berr)
			}
		}
	}
}

// sameKind reports whether two errors are of the same kind.
func sameKind(a, b error) bool {
	for _, k := range []error{ErrOutputEncode, ErrInputDecode, ErrWorkerCrashed, ErrClosed, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(a, k) != errors.Is(b, k) {
			return false
		}
	}
	var pa, pb *PluginError
	if errors.As(a, &pa) != errors.As(b, &pb) {
		return false
	}
	return pa == nil || pa.Code == pb.Code
}

// 8. Value conversion parity: in-process and worker give the same bytes
// or errors of the same kind.

const paritySource = `
import dataclasses, decimal, enum, fractions, types, math

class Color(enum.IntEnum):
    RED = 1

class F(float):
    def __repr__(self):
        return "F!"
    def __str__(self):
        return "F!"

class S(str):
    def __str__(self):
        return "not me"

class BrokenStr:
    def __str__(self):
        raise ValueError("no str")

class BrokenRepr:
    def __repr__(self):
        raise ValueError("no repr")

@dataclasses.dataclass
class Point:
    x: int
    y: object = None

class Sized:
    def __repr__(self):
        return "Sized()"
    def __len__(self):
        return 3
    def __iter__(self):
        return iter([1, 2, 3])

class KeyStr:
    def __str__(self):
        return "k"
    def __hash__(self):
        return 1

def nested(n):
    v = []
    for _ in range(n - 1):
        v = [v]
    return v

def nested_dict(n):
    v = {}
    for _ in range(n - 1):
        v = {"a": v}
    return v

def selfref():
    l = [1]
    l.append(l)
    return l

def selfref_dict():
    d = {}
    d["me"] = d
    return d

def gen():
    yield 1

async def coro():
    return 1

def value(i):
    c = coro()
    c.close()
    values = [
        Point(1, Point(2)),
        {3, 1, 2},
        frozenset([1]),
        decimal.Decimal("1.10"),
        decimal.Decimal("NaN"),
        decimal.Decimal("1e400"),
        fractions.Fraction(1, 3),
        Color.RED,
        F(2.5),
        {1: "a", None: "b", (1, 2): "c", 1.5: "d", True: "e"},
        {1: "a", "1": "b"},
        {"1": "a", 1: "b"},
        {True: 1, "True": 2},
        {None: 1, "None": 2},
        S("sub"),
        {S("k"): S("v")},
        nested(999),
        nested(1000),
        nested(1001),
        nested_dict(1000),
        nested_dict(1001),
        selfref(),
        selfref_dict(),
        gen(),
        c,
        BrokenStr(),
        [BrokenStr()],
        "\ud800",
        ["é", "\ud800"],
        "é\udfff\U0001F600",
        float("nan"),
        float("inf"),
        [float("-inf")],
        {KeyStr(): 1, "k": 2},
        {KeyStr(): 1},
        Sized(),
        types.SimpleNamespace(a=1),
        range(3),
        b"\x00\xff",
        bytearray(b"ab"),
        memoryview(b"ab"),
        complex(1, 2),
        2 ** 70,
        -(2 ** 63),
        1e308 * 10 if False else 1e308,
        0.1,
        -0.0,
        [1, (2, [3, {"x": (4,)}])],
        {"": None},
        BrokenRepr(),
        object,
        len,
        Ellipsis,
        NotImplemented,
        {frozenset([1]): 1},
        dataclasses.make_dataclass("Bad", [("x", int)])(1),
        [[]] * 3,
    ]
    if i == -1:
        return len(values)
    return values[i]
`

func TestReviewValueParity(t *testing.T) {
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			dir, d := simplePlugin(t, paritySource, MethodDesc{Name: "value"})
			var opts []Option
			if strict {
				opts = append(opts, WithStrictValues())
			}
			in, err := LoadPythonPlugin(dir, d, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			w := loadWorkers(t, dir, d, opts...)
			n, err := Call[int](ctx, in, 0, -1)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				arg := []byte(fmt.Sprint(i))
				a, aerr := in.CallJSON(ctx, 0, arg)
				b, berr := w.CallJSON(ctx, 0, arg)
				if !bytes.Equal(a, b) || (aerr == nil) != (berr == nil) || aerr != nil && !sameKind(aerr, berr) {
					t.Errorf("value %d:\n in-process %.200q, %.300v\n worker     %.200q, %.300v", i, a, aerr, b, berr)
				}
			}
		})
	}
}

// Input parity: what CallJSON accepts and refuses.
func TestReviewInputParity(t *testing.T) {
	dir, d := simplePlugin(t, "def echo(*a):\n    return list(a)\n", MethodDesc{Name: "echo"})
	in, err := LoadPythonPlugin(dir, d)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	w := loadWorkers(t, dir, d)
	inputs := []string{"", "null", "[]", "1", `"\ud800"`, `"\u0000"`, `[1e400]`, `1e400`, `-0`, `[1,]`, `{"a":1,"a":2}`, `[NaN]`, `nul`, ` [1] `, "[1]\n", `"\xff"`, "\"\xff\"", `123456789012345678901234567890`,
		strings.Repeat("[", 999) + strings.Repeat("]", 999), strings.Repeat("[", 1000) + strings.Repeat("]", 1000), strings.Repeat("[", 1001) + strings.Repeat("]", 1001),
		`[` + strings.Repeat("[", 999) + strings.Repeat("]", 999) + `]`, `"[[[["`, `[1] [2]`, `{"a": [1, {"b": null}]}`,
		`1E400`, `[-1.0e+400]`, `[1e-400]`, "1" + strings.Repeat("0", 400) + ".0", "1" + strings.Repeat("0", 400), `"1e400"`, `{"1e400": 1e308}`, `[1e99, 1.7976931348623157e308, 1.8e308]`}
	for _, s := range inputs {
		a, aerr := in.CallJSON(ctx, 0, []byte(s))
		b, berr := w.CallJSON(ctx, 0, []byte(s))
		if !bytes.Equal(a, b) || (aerr == nil) != (berr == nil) || aerr != nil && !sameKind(aerr, berr) {
			t.Errorf("input %.40q:\n in-process %.100q, %.200v\n worker     %.100q, %.200v", s, a, aerr, b, berr)
		}
	}
}

// 9. Reload under load.

func TestReviewReloadUnderLoad(t *testing.T) {
	if !inGuard(t, 120*time.Second) {
		return
	}
	dir, d := simplePlugin(t, "import time\nVERSION = 0\ndef version():\n    time.sleep(0.001)\n    return VERSION\ndef count(n):\n    for i in range(n):\n        yield VERSION\n",
		MethodDesc{Name: "version"}, MethodDesc{Name: "count", Streaming: true})
	h, err := LoadPythonPlugin(dir, d, WithWorkers(2))
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.py"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls, failed atomic.Int64
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if g%2 == 0 {
					_, err = Call[int](ctx, h, 0)
				} else {
					_, err = collect(t, h.CallStream(ctx, 1, []byte("[3]")))
				}
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					t.Errorf("a call during the reloads: %v", err)
					return
				}
			}
		}()
	}
	for v := 1; v <= 20; v++ {
		src := fmt.Sprintf("__interface_hash__ = 0x1234\nimport time\nVERSION = %d\ndef version():\n    time.sleep(0.001)\n    return VERSION\ndef count(n):\n    for i in range(n):\n        yield VERSION\n", v)
		os.WriteFile(files[0], []byte(src), 0o644)
		if err := h.Reload(); err != nil {
			t.Fatal(err)
		}
		if got, err := Call[int](ctx, h, 0); err != nil || got != v {
			t.Fatalf("after reload %d: %d, %v", v, got, err)
		}
	}
	close(stop)
	within(t, 20*time.Second, "the callers", wg.Wait)
	t.Logf("%d calls, %d failed", calls.Load(), failed.Load())
	within(t, 10*time.Second, "Close", func() { h.Close() })
	waitNoChildren(t)
}

// 10. Handles dropped without Close.

func TestReviewDroppedHandles(t *testing.T) {
	if !inGuard(t, 120*time.Second) {
		return
	}
	dir, d := simplePlugin(t, "def hi():\n    return 1\ndef count(n):\n    yield from range(n)\n", MethodDesc{Name: "hi"}, MethodDesc{Name: "count", Streaming: true})
	for i := range 20 {
		func() {
			h, err := LoadPythonPlugin(dir, d, WithWorkers(1+i%2))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.CallJSON(ctx, 0, nil); err != nil {
				t.Fatal(err)
			}
			// A stream read to its end.
			if _, err := collect(t, h.CallStream(ctx, 1, []byte("[2]"))); err != nil {
				t.Fatal(err)
			}
		}()
		runtime.GC()
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && len(children(t)) > 0; {
		runtime.GC()
		time.Sleep(50 * time.Millisecond)
	}
	waitNoChildren(t)
}

// A handle whose host function calls the same handle (the usual way to
// call back) is dropped: its workers must still go.
func TestReviewDroppedHandleWithCallback(t *testing.T) {
	if os.Getenv("FIDIUS_REVIEW_DESIGN") == "" {
		t.Skip("design limitation, not fixed (set FIDIUS_REVIEW_DESIGN=1 to run): the handle is reachable from its own host function, so never garbage")
	}
	if !inGuard(t, 60*time.Second) {
		return
	}
	dir, d := simplePlugin(t, backSource, MethodDesc{Name: "pid"}, MethodDesc{Name: "rec"}, MethodDesc{Name: "ask"},
		MethodDesc{Name: "ask_and_keep"}, MethodDesc{Name: "nap"})
	func() {
		var h *PluginHandle
		back := &HostInterface{Name: "Back", Version: 1, Hash: 7, Funcs: map[string]HostFunc{
			"again": func(args json.RawMessage) (any, error) {
				var a []int
				json.Unmarshal(args, &a)
				return Call[[]int](ctx, h, hidx(h, "rec"), a[0])
			},
			"ask": func(json.RawMessage) (any, error) { return 1, nil },
		}}
		var err error
		h, err = LoadPythonPlugin(dir, d, WithWorkers(1), WithHostInterface(back))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := Call[[]int](ctx, h, hidx(h, "rec"), 2); err != nil || len(got) != 3 {
			t.Fatal(got, err)
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && len(children(t)) > 0; {
		runtime.GC()
		time.Sleep(50 * time.Millisecond)
	}
	waitNoChildren(t)
}

// 11. A memory limit too small for Python.

func TestReviewTinyMemoryLimit(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	dir, d := simplePlugin(t, "import decimal, fractions, json\ndef hi():\n    return 1\ndef echo(b):\n    return b\n",
		MethodDesc{Name: "hi"}, MethodDesc{Name: "echo", WireRaw: true})
	within(t, 20*time.Second, "the load", func() {
		_, err := LoadPythonPlugin(dir, d, WithWorkers(1), WithWorkerMemoryLimit(1<<20))
		// Where memory runs out varies: the import (an ImportError of
		// type MemoryError; CPython 3.12's compile can lose the
		// MemoryError and raise SystemError instead) or the worker's own
		// code (the memory limit's crash). Either says so.
		var ie *ImportError
		var ce *WorkerCrashError
		outOfMemory := errors.As(err, &ie) && (ie.Type == "MemoryError" || ie.Type == "SystemError")
		// Or the worker's own start-up runs out (3.13 cannot map an
		// extension module): a crash whose stderr says what failed.
		crashed := errors.As(err, &ce) && (ce.ExitCode == exitMemory || ce.Stderr != "")
		if !outOfMemory && !crashed {
			t.Errorf("a 1 MiB limit: %v", err)
		}
	})
	// Memory that runs out in the worker's own code (the shared mapping
	// or the copy of a large argument), not the plugin's: still the
	// memory limit's crash, not an unexplained exit.
	h := loadWorkers(t, dir, d, WithWorkerMemoryLimit(100<<20))
	for _, n := range []int{30 << 20, 50 << 20, 90 << 20} {
		_, err := h.CallRaw(ctx, hidx(h, "echo"), make([]byte, n))
		if err == nil {
			continue
		}
		if ce := wantCrash(t, err); ce.ExitCode != exitMemory {
			t.Errorf("echo of %d MiB under a 100 MiB limit: %v", n>>20, err)
		}
	}
	if v, err := Call[int](ctx, h, hidx(h, "hi")); err != nil || v != 1 {
		t.Fatal(v, err)
	}
	h.Close()
	waitNoChildren(t)
}

// 12. A worker killed from outside while idle.

func TestReviewKilledWhileIdle(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h, _ := hostilePluginFor(t)
	for _, wait := range []time.Duration{0, 100 * time.Millisecond} {
		before := wantPid(t, h, "pid")
		syscall.Kill(before, syscall.SIGKILL)
		time.Sleep(wait)
		pid, err := Call[int](ctx, h, hidx(h, "pid"))
		t.Logf("killed, then a call %v later: %d, %v", wait, pid, err)
		if err != nil {
			wantCrash(t, err)
		} else if pid == before {
			t.Fatalf("a killed worker answered")
		}
		wantWorks(t, h)
	}
}

func hostilePluginFor(t *testing.T) (*PluginHandle, string) { return rvHostilePlugin(t) }

// Extras.

// A load or reload whose import never ends, under a context: the worker
// that is importing must not be left running.
func TestReviewLoadContextHangingImport(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	dir, d := simplePlugin(t, "while True:\n    pass\n", MethodDesc{Name: "hi"})
	cx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := LoadPythonPluginContext(cx, dir, d, WithWorkers(2))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("load: %v", err)
	}
	waitNoChildren(t)
	// Reload.
	dir, d = simplePlugin(t, "def hi():\n    return 1\n", MethodDesc{Name: "hi"})
	h := loadWorkers(t, dir, d)
	files, _ := filepath.Glob(filepath.Join(dir, "*.py"))
	os.WriteFile(files[0], []byte("__interface_hash__ = 0x1234\nwhile True:\n    pass\n"), 0o644)
	cx2, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if err := h.ReloadContext(cx2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reload: %v", err)
	}
	if got, err := Call[int](ctx, h, 0); err != nil || got != 1 {
		t.Fatalf("after the failed reload: %v, %v", got, err)
	}
	h.Close()
	waitNoChildren(t)
}

// A plugin whose SIGUSR1 handler is not the worker's never reads the
// cancel pipe: cancellations must not block the caller once it is full.
func TestReviewCancelPipeFull(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	h, _ := rvHostilePlugin(t)
	if _, err := h.CallJSON(ctx, hidx(h, "ignore"), nil); err != nil {
		t.Fatal(err)
	}
	w := h.wk.pool().free[0]
	within(t, 10*time.Second, "20000 cancellations", func() {
		for n := range 20000 {
			w.cancelCall(uint64(n + 1000))
		}
	})
	wantWorks(t, h)
}

// A raw call appending to a buffer with room: the host function's
// arguments must not live in the caller's buffer.
func TestReviewHostArgsNotInCallersBuffer(t *testing.T) {
	var kept json.RawMessage
	back := &HostInterface{Name: "Back", Version: 1, Hash: 7, Funcs: map[string]HostFunc{
		"keep": func(args json.RawMessage) (any, error) { kept = args; return nil, nil },
	}}
	dir, d := simplePlugin(t, `
import fidius
__fidius_host_imports__ = {"Back": {"version": 1, "hash": 7}}
def raw(b):
    fidius.host("Back").keep("the host's arguments")
    return b"R" * 200
`, MethodDesc{Name: "raw", WireRaw: true})
	h := loadWorkers(t, dir, d, WithHostInterface(back))
	dst := make([]byte, 0, 4096)
	if _, err := h.CallRawAppend(ctx, 0, dst, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if string(kept) != `["the host's arguments"]` {
		t.Fatalf("the host function's arguments changed after it returned: %q", kept)
	}
}

// A stream opened as a Reload retires its pool: the worker must not be
// stopped between the stream's opening and the count of its open streams.
func TestReviewReloadRacesStreamOpening(t *testing.T) {
	if !inGuard(t, 120*time.Second) {
		return
	}
	dir, d := simplePlugin(t, "def one():\n    yield 1\n", MethodDesc{Name: "one", Streaming: true})
	h := loadWorkers(t, dir, d, WithWorkers(2))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls, failed atomic.Int64
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := collect(t, h.CallStream(ctx, 0, nil))
				calls.Add(1)
				if err != nil || len(got) != 1 {
					failed.Add(1)
					t.Errorf("a stream during the reloads: %v, %v", got, err)
					return
				}
			}
		}()
	}
	for range 25 {
		if err := h.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	within(t, 20*time.Second, "the callers", wg.Wait)
	t.Logf("%d streams, %d failed", calls.Load(), failed.Load())
}

// Fed items and host functions' answers decode as in-process: a number
// too large for a float is refused, not an infinity.
func TestReviewFedAndHostValuesParity(t *testing.T) {
	back := &HostInterface{Name: "Back", Version: 1, Hash: 7, Funcs: map[string]HostFunc{
		"big": func(json.RawMessage) (any, error) { return json.RawMessage("[1e400]"), nil },
		"ok": func(json.RawMessage) (any, error) {
			return json.RawMessage(`[1.5e300, "\ud800", 12345678901234567890123]`), nil
		},
	}}
	dir, d := simplePlugin(t, `
import fidius
__fidius_host_imports__ = {"Back": {"version": 1, "hash": 7}}
def total(items):
    try:
        return [repr(x) for x in items]
    except BaseException as e:
        return [type(e).__name__]
def ask(what):
    try:
        return repr(getattr(fidius.host("Back"), what)())
    except BaseException as e:
        return [type(e).__name__]
`, MethodDesc{Name: "total", ClientStreaming: true}, MethodDesc{Name: "ask"})
	var results [2][]string
	for mode, opts := range [][]Option{nil, {WithWorkers(1)}} {
		h, err := LoadPythonPlugin(dir, d, append(opts, WithHostInterface(back))...)
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range []string{"-1e400", "1e-400", "1.5e308", "123456789012345678901234567890", `"\ud800"`} {
			items := func(yield func(json.RawMessage, error) bool) {
				_ = yield(json.RawMessage("1.5"), nil) && yield(json.RawMessage(item), nil)
			}
			out, err := h.CallClientStream(ctx, 0, items, nil)
			results[mode] = append(results[mode], fmt.Sprintf("item %s: %s %v", item, out, err))
		}
		for _, what := range []string{"big", "ok"} {
			out, err := h.CallJSON(ctx, 1, []byte(`"`+what+`"`))
			results[mode] = append(results[mode], fmt.Sprintf("host %s: %s %v", what, out, err))
		}
		h.Close()
	}
	for i := range results[0] {
		if results[0][i] != results[1][i] {
			t.Errorf("in-process: %s\n    worker: %s", results[0][i], results[1][i])
		}
	}
}

// Cancellations at random times of calls that nest through host
// functions (the worker lent and taken back), with streams and fed items,
// from many goroutines on one and two workers.
func TestReviewNestedCancelStress(t *testing.T) {
	if !inGuard(t, 120*time.Second) {
		return
	}
	for _, workers := range []int{1, 2} {
		t.Run(fmt.Sprint(workers), func(t *testing.T) {
			baseG := runtime.NumGoroutine()
			h, _ := backPlugin(t, func(args json.RawMessage) (any, error) {
				time.Sleep(time.Duration(rand.Intn(2000)) * time.Microsecond)
				return "ok", nil
			}, WithWorkers(workers))
			var wg sync.WaitGroup
			var mu sync.Mutex
			counts := map[string]int{}
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewSource(int64(g)))
					for range 40 {
						cx, cancel := context.WithCancel(ctx)
						time.AfterFunc(time.Duration(rng.Intn(30000))*time.Microsecond, cancel)
						var err error
						switch rng.Intn(3) {
						case 0:
							_, err = Call[[]int](cx, h, hidx(h, "rec"), rng.Intn(4))
						case 1:
							_, err = Call[string](cx, h, hidx(h, "ask"), "x")
						case 2:
							_, err = Call[float64](cx, h, hidx(h, "nap"), 0.002)
						}
						cancel()
						kind := "ok"
						switch {
						case err == nil:
						case errors.Is(err, context.Canceled):
							kind = "cancelled"
						default:
							kind = err.Error()
						}
						mu.Lock()
						counts[kind]++
						mu.Unlock()
					}
				}()
			}
			within(t, 60*time.Second, "the calls", wg.Wait)
			t.Logf("%v", counts)
			for k := range counts {
				if k != "ok" && k != "cancelled" {
					t.Errorf("an error other than cancellation: %s", k)
				}
			}
			within(t, 10*time.Second, "calls after the stress", func() {
				if got, err := Call[[]int](ctx, h, hidx(h, "rec"), 3); err != nil || len(got) != 4 {
					t.Errorf("rec after the stress: %v, %v", got, err)
				}
			})
			h.Close()
			waitNoChildren(t)
			settleGoroutines(t, baseG, 2)
		})
	}
}

// A caller whose context ended has its buffers back: the answer that
// comes later is not written into dst's spare capacity, and the input
// is not read after the call returned (go test -race sees Call's pooled
// argument buffer otherwise).
func TestReviewLeftCallersBuffers(t *testing.T) {
	dir, d := simplePlugin(t, `
import signal, time
def deaf(b):
    old = signal.signal(signal.SIGUSR1, lambda *a: None)
    time.sleep(0.2)
    signal.signal(signal.SIGUSR1, old)
    return b"X" * 100
def deaf_json(s):
    old = signal.signal(signal.SIGUSR1, lambda *a: None)
    time.sleep(0.05)
    signal.signal(signal.SIGUSR1, old)
    return s
`, MethodDesc{Name: "deaf", WireRaw: true}, MethodDesc{Name: "deaf_json"})
	h := loadWorkers(t, dir, d)
	dst := make([]byte, 0, 1000)
	cx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	out, err := h.CallRawAppend(cx, 0, dst, []byte("in"))
	if !errors.Is(err, context.DeadlineExceeded) || len(out) != 0 {
		t.Fatalf("%q, %v", out, err)
	}
	time.Sleep(400 * time.Millisecond) // the answer comes, and is dropped
	if full := dst[:cap(dst)]; bytes.Contains(full, []byte("X")) {
		t.Fatalf("the answer to a call whose caller had left was written into its buffer")
	}
	// Many calls whose contexts end as their requests go out.
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				cx, cancel := context.WithTimeout(ctx, time.Duration(i%5)*100*time.Microsecond)
				Call[string](cx, h, 1, strings.Repeat(fmt.Sprint(g), 100+i))
				cancel()
			}
		}()
	}
	wg.Wait()
}

// Design limitations found by the review, not fixed: these tests show
// them and are skipped unless FIDIUS_REVIEW_DESIGN is set.

func designOnly(t *testing.T) {
	t.Helper()
	if os.Getenv("FIDIUS_REVIEW_DESIGN") == "" {
		t.Skip("design limitation, not fixed (set FIDIUS_REVIEW_DESIGN=1 to run)")
	}
}

// A replacement worker imports the package as it is on disk now, not as
// it was at the load or the last Reload: after a crash, workers of one
// handle run different code, without any Reload.
func TestReviewDesignReplacementRunsNewCode(t *testing.T) {
	designOnly(t)
	dir, d := simplePlugin(t, "import os\ndef version():\n    return 1\ndef die():\n    os._exit(1)\n", MethodDesc{Name: "version"}, MethodDesc{Name: "die"})
	h := loadWorkers(t, dir, d, WithWorkers(2))
	files, _ := filepath.Glob(filepath.Join(dir, "*.py"))
	os.WriteFile(files[0], []byte("__interface_hash__ = 0x1234\nimport os\ndef version():\n    return 2\ndef die():\n    os._exit(1)\n"), 0o644)
	h.CallJSON(ctx, 1, nil) // one worker crashes and is replaced
	time.Sleep(500 * time.Millisecond)
	seen := map[int]bool{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				v, _ := Call[int](ctx, h, 0)
				mu.Lock()
				seen[v] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 1 {
		t.Fatalf("one handle, no Reload, versions %v at once", seen)
	}
}

// An unrelated call may run in a worker lent by a call waiting for a
// host function: the lender then waits for it to end, and if that call
// waits (in its own host function) for the lender, neither ends. In
// process, the two run on two threads.
func TestReviewDesignUnrelatedCallInLentWorker(t *testing.T) {
	designOnly(t)
	if !inGuard(t, 30*time.Second) {
		return
	}
	aDone := make(chan struct{})
	var h *PluginHandle
	back := &HostInterface{Name: "Back", Version: 1, Hash: 7, Funcs: map[string]HostFunc{
		"again": func(json.RawMessage) (any, error) { return []int{}, nil },
		"ask": func(args json.RawMessage) (any, error) {
			if string(args) == `["a"]` {
				time.Sleep(100 * time.Millisecond)
				return "a", nil
			}
			<-aDone // b waits for a's result
			return "b", nil
		},
	}}
	dir, d := simplePlugin(t, backSource, MethodDesc{Name: "pid"}, MethodDesc{Name: "rec"}, MethodDesc{Name: "ask"},
		MethodDesc{Name: "ask_and_keep"}, MethodDesc{Name: "nap"})
	h = loadWorkers(t, dir, d, WithHostInterface(back))
	go func() {
		Call[string](ctx, h, hidx(h, "ask"), "a")
		close(aDone)
	}()
	time.Sleep(20 * time.Millisecond)
	within(t, 5*time.Second, "two calls, one waiting for the other", func() {
		Call[string](ctx, h, hidx(h, "ask"), "b")
	})
}

// With a free worker at hand, an unrelated call must not go into a
// worker lent by a call waiting for a host function (there it would make
// the lender wait for it, or deadlock as above).
func TestReviewUnrelatedCallPrefersAFreeWorker(t *testing.T) {
	if !inGuard(t, 30*time.Second) {
		return
	}
	aDone := make(chan struct{})
	back := &HostInterface{Name: "Back", Version: 1, Hash: 7, Funcs: map[string]HostFunc{
		"again": func(json.RawMessage) (any, error) { return []int{}, nil },
		"ask": func(args json.RawMessage) (any, error) {
			if string(args) == `["a"]` {
				time.Sleep(100 * time.Millisecond)
				return "a", nil
			}
			<-aDone
			return "b", nil
		},
	}}
	dir, d := simplePlugin(t, backSource, MethodDesc{Name: "pid"}, MethodDesc{Name: "rec"}, MethodDesc{Name: "ask"},
		MethodDesc{Name: "ask_and_keep"}, MethodDesc{Name: "nap"})
	h := loadWorkers(t, dir, d, WithHostInterface(back), WithWorkers(2))
	go func() {
		Call[string](ctx, h, hidx(h, "ask"), "a")
		close(aDone)
	}()
	time.Sleep(20 * time.Millisecond)
	within(t, 5*time.Second, "two calls, one waiting for the other, on two workers", func() {
		if v, err := Call[string](ctx, h, hidx(h, "ask"), "b"); err != nil || v != "b" {
			t.Errorf("%q, %v", v, err)
		}
	})
}

// A frame's length is a u32: input or a result of 4 GiB or more is
// refused, not cut to its length modulo 4 GiB. (The buffers are never
// touched, so they cost no memory.)
func TestReviewPayloadOver4GiB(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	dir, d := simplePlugin(t, `
def length(b):
    return len(b).to_bytes(8, "little")
def huge(b):
    return bytes(1 << 32)
`, MethodDesc{Name: "length", WireRaw: true}, MethodDesc{Name: "huge", WireRaw: true})
	h := loadWorkers(t, dir, d)
	big := make([]byte, 1<<32+5)
	_, err := h.CallRaw(ctx, 0, big)
	wantErr(t, err, ErrInputDecode, "at most")
	_, err = h.CallRaw(ctx, 1, nil)
	wantErr(t, err, ErrOutputEncode, "at most")
	wantWorks := func() {
		if out, err := h.CallRaw(ctx, 0, []byte("abc")); err != nil || out[0] != 3 {
			t.Fatalf("%v, %v", out, err)
		}
	}
	wantWorks()
}

// Close while a replacement worker is still importing the plugin: the
// replacement must not outlive Close for the length of its import.
func TestReviewCloseDuringReplacement(t *testing.T) {
	if !inGuard(t, 60*time.Second) {
		return
	}
	dir, d := simplePlugin(t, `
import os, time
if os.path.exists("slow"):
    time.sleep(30)
def die():
    os._exit(1)
`, MethodDesc{Name: "die"})
	h := loadWorkers(t, dir, d)
	os.WriteFile(filepath.Join(dir, "slow"), nil, 0o644)
	h.CallJSON(ctx, 0, nil) // crashes; its replacement imports for 30 s
	time.Sleep(200 * time.Millisecond)
	within(t, 5*time.Second, "Close", func() { h.Close() })
	waitNoChildren(t)
}

// A context that ends as its call is being sent: the cancellation may
// reach the worker before the call does. It must still stop the call (not
// be dropped, leaving the call to run until the grace period kills the
// worker).
func TestReviewCancelBeforeTheCallBegins(t *testing.T) {
	if !inGuard(t, 120*time.Second) {
		return
	}
	h := racePlugin(t, 1)
	before := wantPid(t, h, "pid")
	for i := range 40 {
		cx, cancel := context.WithTimeout(ctx, time.Duration(i%8)*20*time.Microsecond)
		h.CallJSON(cx, hidx(h, "spin"), []byte("[2000]"))
		cancel()
	}
	within(t, 10*time.Second, "a call after the cancellations", func() {
		if after := wantPid(t, h, "pid"); after != before {
			t.Errorf("worker %d was replaced by %d: a cancellation that came before its call was dropped, and the call killed", before, after)
		}
	})
}
