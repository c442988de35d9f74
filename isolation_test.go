//go:build cgo

package fidius

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// needIsolation skips a test of isolated plugins on a CPython without
// them (before 3.12); TestIsolationNeedsCPython312 covers those.
func needIsolation(t testing.TB) {
	t.Helper()
	if err := isolationAvailable(); err != nil {
		t.Skip(err)
	}
}

// loadIsolated loads dir WithIsolation(n), closed at the end of the test.
func loadIsolated(t testing.TB, dir string, d *InterfaceDescriptor, n int, opts ...Option) *PluginHandle {
	t.Helper()
	h, err := LoadPythonPlugin(dir, d, append(opts, WithIsolation(n))...)
	if err != nil {
		t.Fatalf("LoadPythonPlugin WithIsolation(%d): %v", n, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// waitInstances waits until n isolated interpreters are alive.
func waitInstances(t testing.TB, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for liveInstances.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d isolated interpreters alive, want %d", liveInstances.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIsolationNeedsCPython312(t *testing.T) {
	if isolationAvailable() == nil {
		t.Skip("CPython " + PythonVersion() + " has isolated interpreters: the other isolation tests run")
	}
	dir, d := simplePlugin(t, "def f():\n    return 1\n", MethodDesc{Name: "f"})
	_, err := LoadPythonPlugin(dir, d, WithIsolation(1))
	wantErr(t, err, ErrNotIsolatable, "3.12", PythonVersion())
}

func TestIsolatedSameEntryModule(t *testing.T) {
	needIsolation(t)
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "who"}}}
	var hs []*PluginHandle
	for _, name := range []string{"first", "second"} {
		dir := writePackage(t, "twin", map[string]string{
			"twin.py":        "__interface_hash__ = 1\nimport twin_helper\ndef who():\n    return twin_helper.NAME\n",
			"twin_helper.py": "NAME = " + pyQuote(name) + "\n",
		})
		hs = append(hs, loadIsolated(t, dir, d, 1))
	}
	for i, want := range []string{"first", "second", "first", "second"} {
		if got := callNamed[string](t, hs[i%2], "who"); got != want {
			t.Errorf("call %d: who() = %q, want %q", i, got, want)
		}
	}
}

func TestIsolatedVendoredVersions(t *testing.T) {
	needIsolation(t)
	var hs []*PluginHandle
	for _, v := range []string{"1.0", "2.0"} {
		dir, d := simplePlugin(t, "import vlib\ndef version():\n    return [vlib.VERSION, vlib.__file__]\n", MethodDesc{Name: "version"})
		if err := os.MkdirAll(filepath.Join(dir, "vendor"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "vendor", "vlib.py"), []byte("VERSION = "+pyQuote(v)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		hs = append(hs, loadIsolated(t, dir, d, 1))
	}
	for i, want := range []string{"1.0", "2.0"} {
		got := callNamed[[]string](t, hs[i], "version")
		if got[0] != want || !strings.HasPrefix(got[1], hs[i].Dir()) {
			t.Errorf("plugin %d uses vlib %s from %s, want %s from its own vendor/", i, got[0], got[1], want)
		}
	}
}

const vandalSource = `
import builtins, sys

def vandalize():
    sys.path[:] = []
    sys.modules["json"] = None
    builtins.len = lambda x: 42
    builtins.vandalized = True

def check():
    import json
    return [len([1, 2]), json.dumps([1]), len(sys.path) > 0, hasattr(builtins, "vandalized")]
`

func TestIsolatedTamperingStaysInside(t *testing.T) {
	needIsolation(t)
	methods := []MethodDesc{{Name: "vandalize"}, {Name: "check"}}
	dir, d := simplePlugin(t, vandalSource, methods...)
	vandal := loadIsolated(t, dir, d, 1)
	dir, d = simplePlugin(t, vandalSource, methods...)
	other := loadIsolated(t, dir, d, 1)
	dir, d = simplePlugin(t, vandalSource, methods...)
	shared := mustLoadShared(t, dir, d)
	callNamed[any](t, vandal, "vandalize")
	want := `[2,"[1]",true,false]`
	for name, h := range map[string]*PluginHandle{"isolated": other, "shared": shared} {
		out, err := h.CallJSON(ctx, 1, nil)
		if err != nil || string(out) != want {
			t.Errorf("%s plugin after another's vandalism: %s, %v; want %s", name, out, err, want)
		}
	}
	// The vandal broke only itself.
	if _, err := vandal.CallJSON(ctx, 1, nil); err == nil {
		t.Error("the vandalized plugin still imports json")
	}
}

// mustLoadShared loads in the shared interpreter whatever the suite's mode.
func mustLoadShared(t testing.TB, dir string, d *InterfaceDescriptor) *PluginHandle {
	t.Helper()
	h, err := LoadPythonPlugin(dir, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestIsolatedCancellationLeavesOthersRunning(t *testing.T) {
	needIsolation(t)
	if !inChild(t) { // a while True that failed to stop would spin on
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	src := "def spin():\n    n = 0\n    while True:\n        n += 1\n\ndef ping(x):\n    return x + 1\n"
	methods := []MethodDesc{{Name: "spin"}, {Name: "ping"}}
	dir, d := simplePlugin(t, src, methods...)
	spinner := loadIsolated(t, dir, d, 1)
	dir, d = simplePlugin(t, src, methods...)
	other := loadIsolated(t, dir, d, 1)

	c, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	spun := make(chan error, 1)
	go func() {
		_, err := spinner.CallJSON(c, 0, nil)
		spun <- err
	}()
	pings := 0
	for c.Err() == nil {
		if got, err := Call[int](ctx, other, 1, pings); err != nil || got != pings+1 {
			t.Fatalf("ping(%d) while the other plugin spins: %d, %v", pings, got, err)
		}
		pings++
	}
	select {
	case err := <-spun:
		wantErr(t, err, context.DeadlineExceeded, "spin")
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled while True did not stop")
	}
	if pings < 10 {
		t.Errorf("only %d pings while the other plugin spun", pings)
	}
	if got, err := Call[int](ctx, spinner, 1, 1); err != nil || got != 2 {
		t.Errorf("the cancelled plugin afterwards: %d, %v", got, err)
	}
}

const poolSource = `
import time, uuid
TOKEN = uuid.uuid4().hex

def echo(x):
    return {"x": x, "sq": x * x}

def rev(b):
    return bytes(reversed(b))

def count(n):
    for i in range(n):
        yield i

def slow():
    time.sleep(0.3)
    return TOKEN
`

func poolPlugin(t testing.TB, n int) *PluginHandle {
	dir, d := simplePlugin(t, poolSource, MethodDesc{Name: "echo"}, MethodDesc{Name: "rev", WireRaw: true},
		MethodDesc{Name: "count", Streaming: true}, MethodDesc{Name: "slow"})
	return loadIsolated(t, dir, d, n)
}

func TestIsolatedPoolSpreadsCalls(t *testing.T) {
	needIsolation(t)
	h := poolPlugin(t, 2)
	tokens := make(chan string, 2)
	for range 2 {
		go func() {
			tok, err := Call[string](ctx, h, 3)
			if err != nil {
				t.Error(err)
			}
			tokens <- tok
		}()
	}
	a, b := <-tokens, <-tokens
	if a == b || a == "" || b == "" {
		t.Errorf("two calls at once ran in instances %q and %q, want two different ones", a, b)
	}
}

func TestIsolatedConfiguredPool(t *testing.T) {
	needIsolation(t)
	dir, d := simplePlugin(t, `
import time, uuid
class P:
    def __init__(self, cfg):
        self.cfg = cfg
        self.token = uuid.uuid4().hex
    def get(self):
        time.sleep(0.2)
        return [self.cfg["greeting"], self.token]
def __fidius_configure__(cfg):
    return P(cfg)
`, MethodDesc{Name: "get"})
	h, err := LoadPythonPluginConfigured(dir, d, map[string]string{"greeting": "hi"}, WithIsolation(2))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	got := make(chan []string, 2)
	for range 2 {
		go func() {
			v, err := Call[[]string](ctx, h, 0)
			if err != nil {
				t.Error(err)
			}
			got <- v
		}()
	}
	a, b := <-got, <-got
	if len(a) != 2 || len(b) != 2 || a[0] != "hi" || b[0] != "hi" || a[1] == b[1] {
		t.Errorf("configured instances answered %q and %q, want the greeting from two different instances", a, b)
	}
}

func TestIsolatedConcurrency(t *testing.T) {
	needIsolation(t)
	hs := []*PluginHandle{poolPlugin(t, 2), poolPlugin(t, 2), poolPlugin(t, 1)}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				h := hs[(g+i)%len(hs)]
				c := ctx
				if i%3 == 0 {
					var cancel context.CancelFunc
					c, cancel = context.WithTimeout(ctx, time.Minute)
					defer cancel()
				}
				x := g*1000 + i
				var r struct{ X, Sq int }
				out, err := h.CallJSON(c, 0, []byte(fmt.Sprint(x)))
				if err == nil {
					err = json.Unmarshal(out, &r)
				}
				if err != nil || r.X != x || r.Sq != x*x {
					t.Errorf("echo(%d) = %s, %v", x, out, err)
					return
				}
				in := []byte(fmt.Sprintf("g%d-i%d", g, i))
				raw, err := h.CallRaw(c, 1, in)
				if err != nil || string(raw) != reverseString(string(in)) {
					t.Errorf("rev(%s) = %q, %v", in, raw, err)
					return
				}
				n := 0
				for item, err := range h.CallStream(c, 2, []byte(fmt.Sprint(i%5))) {
					if err != nil || string(item) != fmt.Sprint(n) {
						t.Errorf("count(%d) item %d = %s, %v", i%5, n, item, err)
						return
					}
					n++
				}
				if n != i%5 {
					t.Errorf("count(%d) gave %d items", i%5, n)
				}
			}
		}()
	}
	wg.Wait()
}

func TestIsolatedReloadAndCloseUnderLoad(t *testing.T) {
	needIsolation(t)
	writeBytecode(t)
	base := liveInstances.Load()
	dir, d := simplePlugin(t, "VERSION = 0\ndef version():\n    return VERSION\n", MethodDesc{Name: "version"})
	h, err := LoadPythonPlugin(dir, d, WithIsolation(2))
	if err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(dir, h.Manifest().Python.EntryModule+".py")
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		newest   int // the newest version a reload has put in place
		stop     = make(chan struct{})
		closedAt = make(chan struct{})
	)
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
				mu.Lock()
				floor := newest
				mu.Unlock()
				v, err := Call[int](ctx, h, 0)
				if errors.Is(err, ErrClosed) {
					select {
					case <-closedAt:
						return
					default:
						t.Errorf("ErrClosed before Close")
						return
					}
				}
				if err != nil || v < floor {
					t.Errorf("version() = %d, %v; a reload to %d had finished before the call", v, err, floor)
					return
				}
			}
		}()
	}
	for v := 1; v <= 10; v++ {
		writeFile(t, entry, fmt.Sprintf("__interface_hash__ = 0x1234\nVERSION = %d\ndef version():\n    return VERSION\n", v))
		if err := h.Reload(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		newest = v
		mu.Unlock()
	}
	close(closedAt)
	h.Close()
	close(stop)
	wg.Wait()
	if _, err := h.CallJSON(ctx, 0, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("a call after Close: %v", err)
	}
	waitInstances(t, base)
}

func TestIsolatedReloadsDoNotGrow(t *testing.T) {
	needIsolation(t)
	if !inChild(t) {
		r := runChild(t, 3*time.Minute)
		wantChildPass(t, r)
		t.Log(strings.TrimSpace(lastLine(r.Output, "rss")))
		return
	}
	dir, d := simplePlugin(t, "import json, decimal\nX = [i for i in range(10000)]\ndef f():\n    return len(X)\n", MethodDesc{Name: "f"})
	h := loadIsolated(t, dir, d, 1)
	reload := func(n int) {
		for range n {
			if err := h.Reload(); err != nil {
				t.Fatal(err)
			}
			if got := callNamed[int](t, h, "f"); got != 10000 {
				t.Fatalf("f() = %d", got)
			}
		}
		waitInstances(t, 1)
	}
	// The first reloads grow the heap to where the garbage collector
	// keeps it; from there on it must stay.
	reload(200)
	before := rssBytes(t)
	reload(400)
	after := rssBytes(t)
	fmt.Printf("rss %d MiB after 200 reloads, %d MiB after 400 more\n", before>>20, after>>20)
	// 32 MiB is 80 KiB a reload: far less than a leaked interpreter
	// (about 5 MiB) or the plugin's module (its list alone is 360 KiB),
	// far more than the collector's swings and the race detector's own.
	if after-before > 32<<20 {
		t.Errorf("RSS grew by %d MiB over 400 reloads of an isolated plugin", (after-before)>>20)
	}
}

// lastLine returns the last line of out that starts with prefix.
func lastLine(out, prefix string) string {
	var found string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			found = l
		}
	}
	return found
}

// rssBytes reads the process's resident set size from /proc.
func rssBytes(t testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	var size, rss int64
	if _, err := fmt.Sscan(string(b), &size, &rss); err != nil {
		t.Fatal(err)
	}
	return rss * int64(os.Getpagesize())
}

func TestIsolatedRefusesExtensionModules(t *testing.T) {
	needIsolation(t)
	mods := []string{"readline"} // refused by 3.12 and 3.13
	if pythonMinor() == "3.12" {
		mods = append(mods, "pyexpat", "_ctypes")
	}
	for _, mod := range mods {
		dir, d := simplePlugin(t, "import "+mod+"\ndef f():\n    return 1\n", MethodDesc{Name: "f"})
		_, err := LoadPythonPlugin(dir, d, WithIsolation(1))
		wantErr(t, err, ErrNotIsolatable, "extension module "+mod+" cannot be loaded in an isolated interpreter", "without WithIsolation")
		var ie *ImportError
		if !errors.As(err, &ie) || !errors.Is(err, ErrImportFailed) {
			t.Errorf("%s: the ImportError is not in the chain: %v", mod, err)
		}
	}
	// The standard library's pure-Python fallbacks work where 3.12 refuses
	// the C modules.
	dir, d := simplePlugin(t, `
import datetime, decimal
def f():
    return [str(decimal.Decimal("0.1") + decimal.Decimal("0.2")), datetime.date(2026, 11, 25).isoformat()]
`, MethodDesc{Name: "f"})
	h := loadIsolated(t, dir, d, 1)
	if got := callNamed[[]string](t, h, "f"); len(got) != 2 || got[0] != "0.3" || got[1] != "2026-11-25" {
		t.Errorf("decimal and datetime in an isolated interpreter: %q", got)
	}
}

// TestIsolationGuards reproduces, in child processes, the CPython defects
// the library guards against, and shows the host survives them: a
// refused interpreter (3.12 gave up the main GIL and did not take it
// back); _decimal and _datetime imported by the main interpreter after an
// isolated one tried them (3.12); two isolated interpreters that imported
// _datetime ending (3.13). Without the guard the process ends ("double
// free", "free(): invalid pointer"), which the last case shows.
func TestIsolationGuards(t *testing.T) {
	needIsolation(t)
	for _, c := range []struct {
		name    string
		env     []string
		survive bool
	}{
		{"refused interpreter", nil, true},
		{"C modules after an isolated import", nil, true},
		{"C modules after an isolated import, unguarded", []string{"FIDIUS_TEST_UNGUARDED=1"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !inChild(t) {
				r := runChild(t, time.Minute, c.env...)
				if c.survive {
					wantChildPass(t, r)
				} else if r.ExitCode == 0 || r.TimedOut {
					t.Fatalf("unguarded, the process survived (exit %d); the guard may no longer be needed:\n%s", r.ExitCode, r.Output)
				}
				return
			}
			if os.Getenv("FIDIUS_TEST_UNGUARDED") != "" {
				refusedModules = func() []string { return nil }
			}
			probe, pd := simplePlugin(t, "import threading\ndef f():\n    t = threading.Thread(target=lambda: None)\n    t.start()\n    t.join()\n    return 'main ok'\n", MethodDesc{Name: "f"})
			shared := mustLoadShared(t, probe, pd)
			if c.name == "refused interpreter" {
				_, err := startInterp(true)
				wantErr(t, err, ErrNotIsolatable, "CPython refused to make an isolated interpreter")
			} else {
				dir, d := simplePlugin(t, "import datetime, decimal\ndef f():\n    return str(decimal.Decimal(1) / 8)\n", MethodDesc{Name: "f"})
				h, err := LoadPythonPlugin(dir, d, WithIsolation(2))
				if err != nil {
					t.Fatal(err)
				}
				if got := callNamed[string](t, h, "f"); got != "0.125" {
					t.Fatalf("isolated decimal: %q", got)
				}
				h.Close() // two interpreters that imported datetime end
				waitInstances(t, 0)
				dir, d = simplePlugin(t, "import _datetime, _decimal\ndef f():\n    return str(_decimal.Decimal(1) / 8) + ' ' + str(_datetime.date(2026, 1, 2))\n", MethodDesc{Name: "f"})
				if got := callNamed[string](t, mustLoadShared(t, dir, d), "f"); got != "0.125 2026-01-02" {
					t.Fatalf("shared C modules: %q", got)
				}
			}
			if got := callNamed[string](t, shared, "f"); got != "main ok" {
				t.Fatalf("the main interpreter afterwards: %q", got)
			}
		})
	}
}

func TestIsolatedNoDaemonThreads(t *testing.T) {
	needIsolation(t)
	dir, d := simplePlugin(t, `
import threading
def daemon():
    threading.Thread(target=lambda: None, daemon=True).start()
def joined():
    out = []
    t = threading.Thread(target=lambda: out.append(1))
    t.start()
    t.join()
    return out
`, MethodDesc{Name: "daemon"}, MethodDesc{Name: "joined"})
	h := loadIsolated(t, dir, d, 1)
	_, err := h.CallJSON(ctx, 0, nil)
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "RuntimeError" || !strings.Contains(perr.Message, "daemon threads are disabled") {
		t.Errorf("a daemon thread in an isolated plugin: %v", err)
	}
	if got := callNamed[[]int](t, h, "joined"); len(got) != 1 || got[0] != 1 {
		t.Errorf("a joined thread: %v", got)
	}
}

func TestIsolatedVirtualEnv(t *testing.T) {
	needIsolation(t)
	if !inChild(t) { // it changes sys.path for the process
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	mod := moduleName(t) + "_venv"
	if err := UseVirtualEnv(fakeVenv(t, PythonVersion(), mod)); err != nil {
		t.Fatal(err)
	}
	dir, d := simplePlugin(t, "import "+mod+", "+mod+"_pth\ndef f():\n    return ["+mod+".VALUE, "+mod+"_pth.VALUE]\n", MethodDesc{Name: "f"})
	h := loadIsolated(t, dir, d, 1)
	if got := callNamed[[]string](t, h, "f"); len(got) != 2 || got[0] != "from site-packages" || got[1] != "through a .pth file" {
		t.Errorf("an isolated plugin loaded after UseVirtualEnv: %q", got)
	}
}

// A host function called by an isolated plugin calls another isolated
// plugin, on the same thread: the thread moves between three
// interpreters' thread states and back.
func TestIsolatedNestedAcrossInterpreters(t *testing.T) {
	needIsolation(t)
	dir, d := simplePlugin(t, "def double(x):\n    return 2 * x\n", MethodDesc{Name: "double"})
	inner := loadIsolated(t, dir, d, 1)
	back := func(args json.RawMessage) (any, error) {
		var xs []int
		if err := json.Unmarshal(args, &xs); err != nil {
			return nil, err
		}
		return Call[int](ctx, inner, 0, xs[0])
	}
	hi := &HostInterface{Name: "Back", Version: 1, Hash: 0x42, Funcs: map[string]HostFunc{"again": back}}
	dir, d = simplePlugin(t, `
import fidius
__fidius_host_imports__ = {"Back": {"version": 1, "hash": 0x42}}
def quad(x):
    return fidius.host("Back").again(fidius.host("Back").again(x))
`, MethodDesc{Name: "quad"})
	outer := loadIsolated(t, dir, d, 1, WithHostInterface(hi))
	c, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for i := range 50 {
		if got, err := Call[int](c, outer, 0, i); err != nil || got != 4*i {
			t.Fatalf("quad(%d) = %d, %v", i, got, err)
		}
	}
}

func TestIsolatedHostLoad(t *testing.T) {
	needIsolation(t)
	host, _ := threePackages(t)
	for _, name := range []string{"alpha", "beta"} {
		h, err := host.Load(name, greeterDesc, WithIsolation(1))
		if err != nil {
			t.Fatalf("Host.Load(%s) WithIsolation: %v", name, err)
		}
		got, err := Call[string](ctx, h, 0, "Ann")
		h.Close()
		if err != nil || got != name+" greets Ann" {
			t.Errorf("%s: greet = %q, %v", name, got, err)
		}
	}
}

// Close does not wait for threads an isolated plugin started: its
// interpreter ends in the background once they are over.
func TestIsolatedCloseDoesNotWaitForPluginThreads(t *testing.T) {
	needIsolation(t)
	base := liveInstances.Load()
	dir, d := simplePlugin(t, `
import threading, time
def start(seconds):
    threading.Thread(target=time.sleep, args=(seconds,)).start()
`, MethodDesc{Name: "start"})
	h, err := LoadPythonPlugin(dir, d, WithIsolation(1))
	if err != nil {
		t.Fatal(err)
	}
	callNamed[any](t, h, "start", 1.0)
	start := time.Now()
	h.Close()
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("Close took %v: it waited for the plugin's thread", took)
	}
	if liveInstances.Load() != base+1 {
		t.Errorf("%d interpreters alive while the plugin's thread runs, want %d", liveInstances.Load(), base+1)
	}
	waitInstances(t, base)
}

// An isolated handle dropped without Close ends its interpreters once
// the garbage collector finds it.
func TestIsolatedHandleDroppedWithoutClose(t *testing.T) {
	needIsolation(t)
	base := liveInstances.Load()
	dir, d := simplePlugin(t, "def f():\n    return 1\n", MethodDesc{Name: "f"})
	func() {
		h, err := LoadPythonPlugin(dir, d, WithIsolation(2))
		if err != nil {
			t.Fatal(err)
		}
		if got := callNamed[int](t, h, "f"); got != 1 {
			t.Fatalf("f() = %d", got)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for liveInstances.Load() != base && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if n := liveInstances.Load(); n != base {
		t.Errorf("%d isolated interpreters alive after the handle was dropped, want %d", n, base)
	}
}

// Extension modules call back into Python through PyGILState_Ensure
// (sqlite3's user functions, ctypes' callbacks): inside an isolated call
// that must find the call's own thread state.
func TestIsolatedExtensionCallbacks(t *testing.T) {
	needIsolation(t)
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	dir, d := simplePlugin(t, `
import sqlite3
def twice(x):
    con = sqlite3.connect(":memory:")
    con.create_function("twice", 1, lambda v: v * 2)
    try:
        return con.execute("select twice(?)", (x,)).fetchone()[0]
    finally:
        con.close()
`, MethodDesc{Name: "twice"})
	h := loadIsolated(t, dir, d, 2)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			for i := range 50 {
				x := g*100 + i
				if got, err := Call[int](c, h, 0, x); err != nil || got != 2*x {
					t.Errorf("twice(%d) through sqlite3 = %d, %v", x, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if pythonMinor() == "3.12" {
		return // _ctypes is refused there
	}
	dir, d = simplePlugin(t, `
import ctypes, ctypes.util
libc = ctypes.CDLL(ctypes.util.find_library("c"))
CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
def sort(xs):
    arr = (ctypes.c_int * len(xs))(*xs)
    libc.qsort(arr, len(xs), ctypes.sizeof(ctypes.c_int), CMP(lambda a, b: a[0] - b[0]))
    return list(arr)
`, MethodDesc{Name: "sort"})
	h = loadIsolated(t, dir, d, 1)
	for range 20 {
		if got, err := Call[[]int](ctx, h, 0, []int{5, 3, 9, 1, 7}); err != nil || fmt.Sprint(got) != "[1 3 5 7 9]" {
			t.Fatalf("sort through ctypes' qsort = %v, %v", got, err)
		}
	}
}

// Threads a plugin started and that still run when it is closed: one
// started with _thread (which ending an interpreter does not wait for by
// itself), one an atexit function would start (atexit functions are
// dropped), and one that never ends, while the thread limit is 1: Close
// returns at once, other plugins' calls go on, and the interpreters end
// once their threads do.
func TestIsolatedCloseWithRunningThreads(t *testing.T) {
	needIsolation(t)
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	SetThreadLimit(1)
	base := liveInstances.Load()
	dir, d := simplePlugin(t, `
import _thread, atexit, threading, time
def raw():
    _thread.start_new_thread(time.sleep, (0.5,))
def at_exit():
    atexit.register(lambda: threading.Thread(target=time.sleep, args=(0.5,)).start())
def forever():
    threading.Thread(target=lambda: [time.sleep(0.05) for _ in iter(int, 1)]).start()
`, MethodDesc{Name: "raw"}, MethodDesc{Name: "at_exit"}, MethodDesc{Name: "forever"})
	other, od := simplePlugin(t, "def ping():\n    return 1\n", MethodDesc{Name: "ping"})
	shared := mustLoadShared(t, other, od)
	for i, m := range []string{"raw", "at_exit", "forever"} {
		h, err := LoadPythonPlugin(dir, d, WithIsolation(1))
		if err != nil {
			t.Fatal(err)
		}
		callNamed[any](t, h, m)
		start := time.Now()
		h.Close()
		if took := time.Since(start); took > 300*time.Millisecond {
			t.Errorf("%s: Close took %v", m, took)
		}
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		if _, err := shared.CallJSON(c, 0, nil); err != nil {
			t.Errorf("%s: another plugin's call while the closed one's thread runs: %v", m, err)
		}
		cancel()
		if m != "forever" {
			waitInstances(t, base)
		} else if n := liveInstances.Load(); n != base+1 {
			t.Errorf("%d interpreters alive, want %d: the one whose thread never ends stays", n, base+1)
		}
		_ = i
	}
}

// A call in one isolated plugin whose GIL a long C function holds (a
// backtracking regular expression) does not hold up the cancellation of
// a call in another.
func TestIsolatedCancellationNotHeldUpByAnotherInterpreter(t *testing.T) {
	needIsolation(t)
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	dir, d := simplePlugin(t, "import re\ndef grind():\n    re.match(r'(x+x+)+y', 'x' * 28)\n", MethodDesc{Name: "grind"})
	a := loadIsolated(t, dir, d, 1)
	dir, d = simplePlugin(t, `
import time
STOPPED = [0.0]
def spin():
    try:
        while True:
            pass
    finally:
        STOPPED[0] = time.time()
def stopped():
    return STOPPED[0]
`, MethodDesc{Name: "spin"}, MethodDesc{Name: "stopped"})
	b := loadIsolated(t, dir, d, 1)
	ca, cancelA := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelA()
	go a.CallJSON(ca, 0, nil)
	time.Sleep(50 * time.Millisecond)
	cb, cancelB := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelB()
	if _, err := b.CallJSON(cb, 0, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("spin: %v", err)
	}
	ended := time.Now()
	for callNamed[float64](t, b, "stopped") == 0 {
		if time.Since(ended) > 2*time.Second {
			t.Fatal("the cancelled while True still runs 2 s after its context ended: its cancellation waits for another interpreter's GIL")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A reload that fails in the second of three instances leaves all three
// on the old code; the next reload switches all three.
func TestIsolatedReloadFailingHalfway(t *testing.T) {
	needIsolation(t)
	dir, d := simplePlugin(t, `
import os
_here = os.path.dirname(__file__)
with open(os.path.join(_here, "imports"), "a+") as f:
    f.write("x")
    f.seek(0)
    n = len(f.read())
if n == 5:
    raise RuntimeError("the fifth import fails")
with open(os.path.join(_here, "version")) as f:
    VERSION = f.read()
def version():
    return VERSION
`, MethodDesc{Name: "version"})
	writeFile(t, filepath.Join(dir, "version"), "1")
	h := loadIsolated(t, dir, d, 3) // imports 1 to 3
	versions := func() map[string]bool {
		seen := map[string]bool{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 6 { // calls at once land on every instance
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 20 {
					v := callNamed[string](t, h, "version")
					mu.Lock()
					seen[v] = true
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return seen
	}
	writeFile(t, filepath.Join(dir, "version"), "2")
	wantErr(t, h.Reload(), ErrImportFailed, "the fifth import fails") // imports 4 and 5
	if got := versions(); len(got) != 1 || !got["1"] {
		t.Errorf("after a reload failing in instance 2: versions %v, want only 1", got)
	}
	if err := h.Reload(); err != nil { // imports 6 to 8
		t.Fatal(err)
	}
	if got := versions(); len(got) != 1 || !got["2"] {
		t.Errorf("after a good reload: versions %v, want only 2", got)
	}
}

// An isolated plugin's atexit functions do not run when its interpreter
// ends, as in the shared interpreter.
func TestIsolatedAtexitDoesNotRun(t *testing.T) {
	needIsolation(t)
	base := liveInstances.Load()
	marker := filepath.Join(t.TempDir(), "ran")
	dir, d := simplePlugin(t, "import atexit\natexit.register(lambda: open("+pyQuote(marker)+", 'w').close())\ndef f():\n    return 1\n", MethodDesc{Name: "f"})
	h, err := LoadPythonPlugin(dir, d, WithIsolation(1))
	if err != nil {
		t.Fatal(err)
	}
	callNamed[int](t, h, "f")
	h.Close()
	waitInstances(t, base)
	if _, err := os.Stat(marker); err == nil {
		t.Error("the plugin's atexit function ran when its interpreter ended")
	}
}
