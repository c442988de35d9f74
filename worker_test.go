//go:build cgo

// Tests of what worker mode (WithWorkers) gives that in-process plugins
// cannot: crashes, os._exit, memory limits and C code past a deadline
// cost one call, not the host; any Python; calls on several cores. The
// conformance tests run against workers with FIDIUS_TEST_WORKERS=1.

package fidius

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func loadWorkers(t testing.TB, dir string, d *InterfaceDescriptor, opts ...Option) *PluginHandle {
	t.Helper()
	h, err := LoadPythonPlugin(dir, d, append([]Option{WithWorkers(1)}, opts...)...)
	if err != nil {
		t.Fatalf("LoadPythonPlugin with workers: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

const crashSource = `
import ctypes, os, signal, time

def pid():
    return os.getpid()

def segfault():
    ctypes.string_at(0)

def exit_now(code):
    os._exit(code)

def kill_self():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)

def hog(mib):
    blocks = []
    for _ in range(mib):
        blocks.append(bytearray(1 << 20))
    return len(blocks)

def stubborn(seconds):
    # Blocks the cancellation signal, as C code that never returns to
    # Python would ignore it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    time.sleep(seconds)

def nap(seconds):
    global cleaned
    try:
        time.sleep(seconds)
    finally:
        cleaned = "done"

cleaned = None

def read_cleaned():
    return cleaned
`

func crashPlugin(t *testing.T, opts ...Option) *PluginHandle {
	t.Helper()
	var methods []MethodDesc
	for _, name := range []string{"pid", "segfault", "exit_now", "kill_self", "hog", "stubborn", "nap", "read_cleaned"} {
		methods = append(methods, MethodDesc{Name: name})
	}
	dir, d := simplePlugin(t, crashSource, methods...)
	return loadWorkers(t, dir, d, opts...)
}

func workerPid(t *testing.T, h *PluginHandle) int {
	t.Helper()
	pid, err := Call[int](ctx, h, hidx(h, "pid"))
	if err != nil {
		t.Fatalf("pid: %v", err)
	}
	return pid
}

func wantCrash(t *testing.T, err error) *WorkerCrashError {
	t.Helper()
	var ce *WorkerCrashError
	if !errors.Is(err, ErrWorkerCrashed) || !errors.As(err, &ce) {
		t.Fatalf("error %v is not a *WorkerCrashError", err)
	}
	return ce
}

func TestWorkerCrashes(t *testing.T) {
	h := crashPlugin(t, WithWorkerMemoryLimit(512<<20))
	for _, c := range []struct {
		name, method, args string
		check              func(*WorkerCrashError) bool
		want               string
	}{
		{"segfault", "segfault", "", func(e *WorkerCrashError) bool { return e.Signal == syscall.SIGSEGV && e.ExitCode == -1 }, "killed by signal 11"},
		{"os._exit", "exit_now", "[7]", func(e *WorkerCrashError) bool { return e.Signal == 0 && e.ExitCode == 7 }, "exited with status 7"},
		{"a signal it sends itself", "kill_self", "", func(e *WorkerCrashError) bool { return e.Signal == syscall.SIGTERM }, "killed by signal 15"},
		{"memory limit", "hog", "[2048]", func(e *WorkerCrashError) bool { return e.ExitCode == exitMemory }, "ran out of memory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := workerPid(t, h)
			_, err := h.CallJSON(ctx, hidx(h, c.method), []byte(c.args))
			ce := wantCrash(t, err)
			if !c.check(ce) || ce.Pid != before || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%s: %+v (%v), worker was %d", c.name, ce, err, before)
			}
			// The next call runs in a new worker.
			if after := workerPid(t, h); after == before {
				t.Fatalf("the crashed worker %d still answers", before)
			}
			wantGone(t, before)
		})
	}
	// Within the limit, allocation works.
	if n, err := Call[int](ctx, h, hidx(h, "hog"), 64); err != nil || n != 64 {
		t.Fatalf("64 MiB under a 512 MiB limit: %d, %v", n, err)
	}
}

// wantGone fails t unless process pid has ended and been reaped.
func wantGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
	}
	state, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	t.Fatalf("process %d is still there: %s", pid, state)
}

// children lists this process's child processes and their states.
func children(t *testing.T) map[int]string {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	kids := map[int]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			kids[pid] = fields[0]
		}
	}
	return kids
}

func TestWorkerCrashDoesNotDisturbOtherCalls(t *testing.T) {
	h := crashPlugin(t, WithWorkers(2))
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	stop := make(chan struct{})
	// Calls on the other worker go on while one crashes over and over.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := Call[int](ctx, h, hidx(h, "pid")); err != nil {
				errs <- err
				return
			}
		}
	}()
	for i := 0; i < 5; i++ {
		_, err := h.CallJSON(ctx, hidx(h, "segfault"), nil)
		wantCrash(t, err)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a call beside the crashes failed: %v", err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	waitNoChildren(t)
}

// waitNoChildren fails t unless this process's children (its workers)
// have all ended and been reaped: none left running, no zombie.
func waitNoChildren(t *testing.T) {
	t.Helper()
	var kids map[int]string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if kids = children(t); len(kids) == 0 {
			return
		}
	}
	t.Fatalf("child processes left (pid: state): %v", kids)
}

func TestWorkerDeadlineInC(t *testing.T) {
	h := crashPlugin(t)
	before := workerPid(t, h)
	c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.CallJSON(c, hidx(h, "stubborn"), []byte("[60]"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the call returned after %v", took)
	}
	// It ignored the cancellation: killed after the grace period, and
	// replaced.
	wantGone(t, before)
	if after := workerPid(t, h); after == before {
		t.Fatalf("worker %d still answers", before)
	}
}

func TestWorkerCancelledCallRunsItsFinally(t *testing.T) {
	h := crashPlugin(t)
	before := workerPid(t, h)
	c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err := h.CallJSON(c, hidx(h, "nap"), []byte("[60]"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	// time.sleep is interrupted, the finally block runs, and the worker
	// stays: the next call reads what the cancelled one left.
	if got, err := Call[string](ctx, h, hidx(h, "read_cleaned")); err != nil || got != "done" {
		t.Fatalf("after the cancelled call: %q, %v", got, err)
	}
	if after := workerPid(t, h); after != before {
		t.Fatalf("the worker was replaced (%d, then %d): a cancellation Python can take should not kill it", before, after)
	}
}

func TestWorkerCloseLeavesNothingRunning(t *testing.T) {
	waitNoChildren(t) // earlier tests' workers
	h := crashPlugin(t, WithWorkers(3))
	var pids []int
	for range 3 {
		pids = append(pids, workerPid(t, h))
	}
	if len(children(t)) != 3 {
		t.Fatalf("children: %v, want 3 workers", children(t))
	}
	h.Close()
	// The free workers have exited and been reaped by the time Close
	// returns.
	if kids := children(t); len(kids) != 0 {
		t.Fatalf("after Close: %v", kids)
	}
	if _, err := h.CallJSON(ctx, 0, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
	_ = pids
}

func TestWorkerCloseDuringCall(t *testing.T) {
	h := crashPlugin(t)
	done := make(chan error, 1)
	go func() { _, err := h.CallJSON(ctx, hidx(h, "nap"), []byte("[0.3]")); done <- err }()
	time.Sleep(100 * time.Millisecond)
	h.Close()
	if err := <-done; err != nil {
		t.Fatalf("a call running at Close: %v", err)
	}
	waitNoChildren(t)
}

func TestWorkerHandleDroppedWithoutClose(t *testing.T) {
	waitNoChildren(t)
	func() {
		dir, d := simplePlugin(t, "def hi(): return 1\n", MethodDesc{Name: "hi"})
		h, err := LoadPythonPlugin(dir, d, WithWorkers(2))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.CallJSON(ctx, 0, nil); err != nil {
			t.Fatal(err)
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && len(children(t)) > 0; {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	waitNoChildren(t)
}

func TestWorkerOutputGoesToTheLogger(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	dir, d := simplePlugin(t, `
import sys
def noisy(n):
    for i in range(n):
        print("line", i)
        print("warning", i, file=sys.stderr)
    sys.stdout.flush()
    return "quiet result"
`, MethodDesc{Name: "noisy"})
	h := loadWorkers(t, dir, d, WithLogger(zap.New(core)))
	got, err := Call[string](ctx, h, 0, 3)
	if err != nil || got != "quiet result" {
		t.Fatalf("%q, %v", got, err)
	}
	want := map[string]string{"line 0": "stdout", "line 2": "stdout", "warning 0": "stderr", "warning 2": "stderr"}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		seen := 0
		for _, e := range logs.All() {
			if stream, ok := want[e.Message]; ok && e.ContextMap()["stream"] == stream {
				seen++
			}
		}
		if seen == len(want) {
			return
		}
	}
	t.Fatalf("logged: %v", logs.All())
}

func TestWorkersRunCallsInParallel(t *testing.T) {
	// Each call waits, up to 10 s, until both calls have started: only
	// two calls running at once both see the other.
	dir, d := simplePlugin(t, `
import os, time
def meet(where):
    open(os.path.join(where, str(os.getpid())), "w").close()
    deadline = time.time() + 10
    while time.time() < deadline:
        if len(os.listdir(where)) == 2:
            return True
        time.sleep(0.001)
    return False
`, MethodDesc{Name: "meet"})
	h := loadWorkers(t, dir, d, WithWorkers(2))
	where := t.TempDir()
	var wg sync.WaitGroup
	met := make([]bool, 2)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			met[g], _ = Call[bool](ctx, h, 0, where)
		}()
	}
	wg.Wait()
	if !met[0] || !met[1] {
		t.Fatalf("two calls on two workers did not run at once: %v", met)
	}
}

func TestWorkerInterpreter(t *testing.T) {
	// A virtual environment of its own, with a module installed in it
	// that the host's Python does not have.
	venv := filepath.Join(t.TempDir(), "venv")
	py, err := linkedPython()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(py, "-m", "venv", "--without-pip", venv).CombinedOutput(); err != nil {
		t.Fatalf("making a venv: %v\n%s", err, out)
	}
	site, err := filepath.Glob(filepath.Join(venv, "lib", "python3*", "site-packages"))
	if err != nil || len(site) != 1 {
		t.Fatalf("site-packages: %v, %v", site, err)
	}
	os.WriteFile(filepath.Join(site[0], "only_in_venv.py"), []byte("VALUE = 'from the venv'\n"), 0o644)
	dir, d := simplePlugin(t, `
import sys, only_in_venv
def where():
    return [sys.prefix, only_in_venv.VALUE]
`, MethodDesc{Name: "where"})
	h := loadWorkers(t, dir, d, WithInterpreter(filepath.Join(venv, "bin", "python")))
	got, err := Call[[]string](ctx, h, 0)
	if err != nil || len(got) != 2 || got[0] != venv || got[1] != "from the venv" {
		t.Fatalf("%q, %v", got, err)
	}
	// Without it, the module is not there: the host's Python.
	_, err = LoadPythonPlugin(dir, d, WithWorkers(1))
	var ie *ImportError
	if !errors.As(err, &ie) || ie.Type != "ModuleNotFoundError" {
		t.Fatalf("without the venv: %v", err)
	}
}

func TestWorkerOtherPythons(t *testing.T) {
	// Every CPython pyenv has here, whatever this program links: the
	// worker program runs on 3.8 and later, and says so on older ones.
	root, err := exec.Command("pyenv", "root").Output()
	if err != nil {
		t.Skip("pyenv is not installed: no other Pythons to run")
	}
	pythons, _ := filepath.Glob(filepath.Join(strings.TrimSpace(string(root)), "versions", "*", "bin", "python"))
	sort.Strings(pythons)
	if len(pythons) == 0 {
		t.Skip("pyenv has no Pythons installed")
	}
	dir, d := simplePlugin(t, `
import sys
def version():
    return "%d.%d" % sys.version_info[:2]
def double(xs):
    for x in xs:
        yield 2 * x
`, MethodDesc{Name: "version"}, MethodDesc{Name: "double", Streaming: true})
	for _, py := range pythons {
		ver := filepath.Base(filepath.Dir(filepath.Dir(py)))
		t.Run(ver, func(t *testing.T) {
			h, err := LoadPythonPlugin(dir, d, WithWorkers(1), WithInterpreter(py))
			parts := strings.Split(ver, ".")
			major, _ := strconv.Atoi(parts[0])
			minor, _ := strconv.Atoi(parts[1])
			if major < 3 || major == 3 && minor < 8 {
				// Python 2 refuses -I before the check can run.
				ce := wantCrash(t, err)
				if major == 3 && !strings.Contains(ce.Stderr, "worker processes need CPython 3.8 or later, not "+ver) {
					t.Fatalf("on %s: %v", ver, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if got, err := Call[string](ctx, h, 0); err != nil || got != parts[0]+"."+parts[1] {
				t.Fatalf("version: %q, %v", got, err)
			}
			got, err := collect(t, h.CallStream(ctx, 1, []byte("[[1, 2]]")))
			if err != nil || strings.Join(got, ",") != "2,4" {
				t.Fatalf("stream: %v, %v", got, err)
			}
		})
	}
}

func TestWorkerStartErrors(t *testing.T) {
	dir, d := simplePlugin(t, "def hi(): return 1\n", MethodDesc{Name: "hi"})
	_, err := LoadPythonPlugin(dir, d, WithWorkers(1), WithInterpreter("/nonexistent/python"))
	wantErr(t, err, ErrWorkerCrashed, "/nonexistent/python")
	// Load errors are the in-process loader's, with their kinds.
	_, err = LoadPythonPlugin(dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 0x9999, Methods: d.Methods}, WithWorkers(2))
	var hm *HashMismatchError
	if !errors.As(err, &hm) || hm.Got != 0x1234 || hm.Expected != 0x9999 {
		t.Fatalf("hash mismatch: %v", err)
	}
	waitNoChildren(t)
}

func TestWorkerRollingReload(t *testing.T) {
	dir, d := simplePlugin(t, "def version(): return 1\n", MethodDesc{Name: "version"})
	h := loadWorkers(t, dir, d, WithWorkers(2))
	old := h.workerPids()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[int]int{}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				v, err := Call[int](ctx, h, 0)
				if err != nil {
					t.Errorf("a call during the reload: %v", err)
					return
				}
				mu.Lock()
				seen[v]++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	mod := moduleName(t)
	os.WriteFile(filepath.Join(dir, mod+".py"), []byte("__interface_hash__ = 0x1234\ndef version(): return 2\n"), 0o644)
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if v, err := Call[int](ctx, h, 0); err != nil || v != 2 {
		t.Fatalf("after the reload: %d, %v", v, err)
	}
	if seen[1] == 0 || seen[2] == 0 {
		t.Fatalf("versions seen: %v", seen)
	}
	for _, pid := range old {
		wantGone(t, pid)
	}
	// A reload that fails keeps the workers serving the old code.
	os.WriteFile(filepath.Join(dir, mod+".py"), []byte("__interface_hash__ = 0x1234\nraise RuntimeError('broken')\n"), 0o644)
	var ie *ImportError
	if err := h.Reload(); !errors.As(err, &ie) || ie.Message != "broken" {
		t.Fatalf("a broken reload: %v", err)
	}
	if v, err := Call[int](ctx, h, 0); err != nil || v != 2 {
		t.Fatalf("after a failed reload: %d, %v", v, err)
	}
}

func TestWorkerHostFunctionCallsBack(t *testing.T) {
	// A host function that calls the plugin back, with one worker: the
	// nested call runs in the worker while the outer one waits for it.
	dir, d := simplePlugin(t, `
import fidius
__fidius_host_imports__ = {"Back": {"version": 1, "hash": 7}}
def outer(n):
    return fidius.host("Back").again(n)
def inner(n):
    return n * 10
`, MethodDesc{Name: "outer"}, MethodDesc{Name: "inner"})
	var h *PluginHandle
	back := &HostInterface{Name: "Back", Version: 1, Hash: 7, Funcs: map[string]HostFunc{
		"again": func(args json.RawMessage) (any, error) {
			var a []int
			json.Unmarshal(args, &a)
			return Call[int](ctx, h, 1, a[0]+1)
		},
	}}
	h = loadWorkers(t, dir, d, WithHostInterface(back))
	if got, err := Call[int](ctx, h, 0, 4); err != nil || got != 50 {
		t.Fatalf("%d, %v", got, err)
	}
}

func TestWorkerStreamAndCallsBetweenItsSteps(t *testing.T) {
	// A stream's worker serves other calls between its steps.
	dir, d := simplePlugin(t, `
state = []
def count(n):
    for i in range(n):
        state.append(i)
        yield i
def seen():
    return len(state)
`, MethodDesc{Name: "count", Streaming: true}, MethodDesc{Name: "seen"})
	h := loadWorkers(t, dir, d)
	var got []int
	for item, err := range h.CallStream(ctx, 0, []byte("[3]")) {
		if err != nil {
			t.Fatal(err)
		}
		n, err := Call[int](ctx, h, 1)
		if err != nil {
			t.Fatal(err)
		}
		var i int
		json.Unmarshal(item, &i)
		got = append(got, i*10+n)
	}
	if fmt.Sprint(got) != "[1 12 23]" {
		t.Fatalf("%v", got)
	}
}

func TestWorkerDiesWithItsHost(t *testing.T) {
	// The host process ends without Close while its worker is stuck in
	// code that ignores the cancellation signal and never reads its
	// socket: the worker ends too (its parent-death signal).
	pidFile := filepath.Join(t.TempDir(), "pid")
	if !inChild(t) {
		r := runChild(t, 30*time.Second, "FIDIUS_TEST_PIDFILE="+pidFile)
		if r.TimedOut || r.ExitCode != 3 {
			t.Fatalf("the child host: exit %d, timed out %v:\n%s", r.ExitCode, r.TimedOut, r.Output)
		}
		b, err := os.ReadFile(pidFile)
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid == 0 {
			t.Fatalf("no worker pid: %q, %v", b, err)
		}
		wantGone(t, pid)
		return
	}
	h := crashPlugin(t)
	os.WriteFile(os.Getenv("FIDIUS_TEST_PIDFILE"), []byte(strconv.Itoa(workerPid(t, h))), 0o644)
	go h.CallJSON(ctx, hidx(h, "stubborn"), []byte("[600]"))
	time.Sleep(200 * time.Millisecond)
	os.Exit(3) // no Close, no cleanup
}
