//go:build cgo

package fidius

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Load time.

func TestSameEntryModuleInTwoPackages(t *testing.T) {
	sharedOnly(t, "isolated plugins have a sys.modules each (TestIsolatedSameEntryModule)")
	mod := moduleName(t)
	first := writePackage(t, mod, map[string]string{mod + ".py": "__interface_hash__ = 1\ndef who(): return 'first'\n"})
	second := writePackage(t, mod, map[string]string{mod + ".py": "__interface_hash__ = 1\ndef who(): return 'second'\n"})
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "who"}}}
	h := mustLoad(t, first, d)
	_, err := LoadPythonPlugin(second, d)
	wantErr(t, err, ErrModuleConflict, mod, filepath.Join(first, mod+".py"), second)
	// The first package is untouched.
	if got, err := Call[string](ctx, h, 0); err != nil || got != "first" {
		t.Fatalf("first package after the conflict: %q, %v", got, err)
	}
	// A module from outside any package is refused the same way.
	dir := writePackage(t, "json", map[string]string{})
	_, err = LoadPythonPlugin(dir, d)
	wantErr(t, err, ErrModuleConflict, `"json"`, "/json/__init__.py")
}

func TestEntryModuleNamesAreChecked(t *testing.T) {
	for _, entry := range []string{"../evil", "a..b", "", "os; x", ".hidden", "trailing.", "1abc", "a/b", "a b", "é.ok2"} {
		toml := strings.Replace(pythonManifest("x"), `entry_module = "x"`, fmt.Sprintf("entry_module = %q", entry), 1)
		dir := writePackage(t, "", map[string]string{"package.toml": toml})
		_, err := LoadPythonPlugin(dir, testDescriptor())
		if entry == "é.ok2" {
			// Python identifiers may be any letters: this is a module name,
			// just not one that exists.
			wantErr(t, err, ErrImportFailed, "ModuleNotFoundError")
			continue
		}
		wantErr(t, err, ErrManifest, fmt.Sprintf("%q", entry), "not a dotted Python module name")
	}
}

func TestRelativeDirThenChdir(t *testing.T) {
	mod := moduleName(t)
	parent := t.TempDir()
	pkg := filepath.Join(parent, "pkg")
	os.MkdirAll(pkg, 0o755)
	os.WriteFile(filepath.Join(pkg, "package.toml"), []byte(pythonManifest(mod)), 0o644)
	// The helper module is imported lazily, at call time, after the chdir.
	os.WriteFile(filepath.Join(pkg, mod+".py"), []byte("__interface_hash__ = 1\ndef late():\n    import "+mod+"_late\n    return "+mod+"_late.VALUE\n"), 0o644)
	os.WriteFile(filepath.Join(pkg, mod+"_late.py"), []byte("VALUE = 'found'\n"), 0o644)
	t.Chdir(parent)
	h := mustLoad(t, "pkg", &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "late"}}})
	t.Chdir(t.TempDir())
	if got, err := Call[string](ctx, h, 0); err != nil || got != "found" {
		t.Fatalf("after chdir: %q, %v", got, err)
	}
	if err := h.Reload(); err != nil {
		t.Fatalf("reload after chdir: %v", err)
	}
}

func TestHostileManifests(t *testing.T) {
	t.Run("directory", func(t *testing.T) {
		dir := t.TempDir()
		os.Mkdir(filepath.Join(dir, "package.toml"), 0o755)
		_, err := LoadPythonPlugin(dir, testDescriptor())
		wantErr(t, err, ErrManifest, "package.toml", "directory")
	})
	t.Run("unreadable", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root reads files whatever their mode")
		}
		dir := writePackage(t, "", map[string]string{"package.toml": pythonManifest("x")})
		os.Chmod(filepath.Join(dir, "package.toml"), 0)
		_, err := LoadPythonPlugin(dir, testDescriptor())
		wantErr(t, err, ErrManifest, "permission denied")
	})
	t.Run("10MiB_garbage", func(t *testing.T) {
		garbage := make([]byte, 10<<20)
		rand.New(rand.NewSource(1)).Read(garbage)
		dir := writePackage(t, "", map[string]string{"package.toml": string(garbage)})
		_, err := LoadPythonPlugin(dir, testDescriptor())
		wantErr(t, err, ErrManifest, "package.toml:1:")
	})
	t.Run("duplicate_keys", func(t *testing.T) {
		toml := strings.Replace(pythonManifest("x"), `version = "0.1.0"`, "version = \"0.1.0\"\nversion = \"0.2.0\"", 1)
		dir := writePackage(t, "", map[string]string{"package.toml": toml})
		_, err := LoadPythonPlugin(dir, testDescriptor())
		wantErr(t, err, ErrManifest, "package.toml:4:", "version", "already been defined")
	})
}

// Call time.

const hostileSource = `
__interface_hash__ = 0x1234
import os, sys, threading, time

def recurse(n=0):
    return recurse(n + 1)

class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("str failed")

def bad_str():
    raise BadStr()

def cycle():
    a = [1]
    a.append(a)
    return a

def dict_cycle():
    d = {}
    d["self"] = d
    return d

def big(data):
    return b"\xab" * (100 << 20)

def inf():
    return float("inf")

def echo(x):
    return x

ticks = 0
stop = False

def start_thread():
    def run():
        global ticks
        while not stop:
            ticks += 1
            time.sleep(0.0005)
    threading.Thread(target=run, daemon=True).start()
    return "started"

def thread_ticks():
    return ticks

def stop_thread():
    global stop
    stop = True

def chdir(path):
    os.chdir(path)
    return os.getcwd()

def noisy():
    print("plugin writes to stdout")
    sys.stderr.write("plugin writes to stderr\n")
    sys.stdout.flush()
    return "said"

def close_streams():
    sys.stdout.close()
    sys.stderr.close()
    print("after close")
`

func hostilePlugin(t *testing.T) *PluginHandle {
	var methods []MethodDesc
	for _, name := range []string{"recurse", "bad_str", "cycle", "dict_cycle", "big", "inf", "echo",
		"start_thread", "thread_ticks", "stop_thread", "chdir", "noisy", "close_streams"} {
		methods = append(methods, MethodDesc{Name: name, WireRaw: name == "big"})
	}
	dir, d := simplePlugin(t, hostileSource, methods...)
	return mustLoad(t, dir, d)
}

func hidx(h *PluginHandle, name string) int { i, _ := h.Descriptor().MethodIndex(name); return i }

func TestHostileCalls(t *testing.T) {
	h := hostilePlugin(t)
	alive := func() {
		t.Helper()
		if got, err := Call[string](ctx, h, hidx(h, "echo"), "ok"); err != nil || got != "ok" {
			t.Fatalf("host not serving calls: %q, %v", got, err)
		}
	}
	t.Run("endless_recursion", func(t *testing.T) {
		_, err := h.CallJSON(ctx, hidx(h, "recurse"), nil)
		var perr *PluginError
		if !errors.As(err, &perr) || perr.Code != "RecursionError" || !strings.Contains(perr.Message, "maximum recursion depth") {
			t.Fatalf("got %v", err)
		}
		alive()
	})
	t.Run("str_raises", func(t *testing.T) {
		_, err := h.CallJSON(ctx, hidx(h, "bad_str"), nil)
		var perr *PluginError
		if !errors.As(err, &perr) || perr.Code != "BadStr" || perr.Message != "<unprintable BadStr object>" {
			t.Fatalf("got %v", err)
		}
		alive()
	})
	t.Run("self_referencing_containers", func(t *testing.T) {
		for m, what := range map[string]string{"cycle": "list", "dict_cycle": "dict"} {
			_, err := h.CallJSON(ctx, hidx(h, m), nil)
			wantErr(t, err, ErrOutputEncode, "ValueError: the "+what+" contains itself, which JSON cannot represent")
		}
		alive()
	})
	t.Run("100MiB_raw_result", func(t *testing.T) {
		out, err := h.CallRaw(ctx, hidx(h, "big"), nil)
		if err != nil || len(out) != 100<<20 || out[0] != 0xab || out[len(out)-1] != 0xab {
			t.Fatalf("len %d, %v", len(out), err)
		}
		alive()
	})
	t.Run("infinity", func(t *testing.T) {
		_, err := h.CallJSON(ctx, hidx(h, "inf"), nil)
		wantErr(t, err, ErrOutputEncode, "inf")
	})
	t.Run("thread_outlives_call", func(t *testing.T) {
		sharedOnly(t, "an isolated interpreter has no daemon threads (TestIsolatedNoDaemonThreads)")
		if got, err := Call[string](ctx, h, hidx(h, "start_thread")); err != nil || got != "started" {
			t.Fatalf("%q, %v", got, err)
		}
		defer h.CallJSON(ctx, hidx(h, "stop_thread"), nil)
		// The thread gets the GIL between calls at least every switch
		// interval (5 ms), however busy the host keeps it.
		first, _ := Call[int](ctx, h, hidx(h, "thread_ticks"))
		for deadline := time.Now().Add(5 * time.Second); ; {
			alive()
			last, err := Call[int](ctx, h, hidx(h, "thread_ticks"))
			if err != nil {
				t.Fatal(err)
			}
			if last >= first+5 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the plugin's thread made %d steps in 5s of host calls", last-first)
			}
		}
	})
	t.Run("chdir", func(t *testing.T) {
		wd, _ := os.Getwd()
		t.Cleanup(func() { os.Chdir(wd) })
		elsewhere := t.TempDir()
		got, err := Call[string](ctx, h, hidx(h, "chdir"), elsewhere)
		if err != nil || got != elsewhere {
			t.Fatalf("%q, %v", got, err)
		}
		// The whole process moved (it is one process); loading by an
		// absolute path and calling still work. A worker is a process of
		// its own: the host stays where it was.
		if now, _ := os.Getwd(); workerMode && now != wd {
			t.Fatalf("a worker's chdir moved the host to %q", now)
		} else if !workerMode && now != elsewhere {
			t.Fatalf("Go sees cwd %q", now)
		}
		abs, _ := filepath.Abs(filepath.Join(wd, "testdata/greeter"))
		if _, err := LoadManifest(abs); err != nil {
			t.Fatal(err)
		}
		alive()
	})
	t.Run("stdout_stderr", func(t *testing.T) {
		if got, err := Call[string](ctx, h, hidx(h, "noisy")); err != nil || got != "said" {
			t.Fatalf("%q, %v", got, err)
		}
		alive()
	})
}

func TestClosedStdStreams(t *testing.T) {
	sharedOnly(t, "each isolated interpreter has its own sys.stdout, which the saving plugin cannot restore")
	// A plugin that closes sys.stdout and sys.stderr gets errors for its
	// own writes; the host and other plugins are unaffected.
	h := hostilePlugin(t)
	saved := saveStdStreams(t)
	_, err := h.CallJSON(ctx, hidx(h, "close_streams"), nil)
	saved()
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "ValueError" || !strings.Contains(perr.Message, "closed file") {
		t.Fatalf("got %v", err)
	}
	if _, err := h.CallJSON(ctx, hidx(h, "noisy"), nil); err != nil {
		t.Fatalf("after restoring the streams: %v", err)
	}
}

// saveStdStreams keeps sys.stdout and sys.stderr so that a plugin that
// closes them cannot silence the rest of the test binary.
func saveStdStreams(t *testing.T) func() {
	dir, d := simplePlugin(t, `
import sys
saved = None
def save():
    global saved
    saved = (sys.stdout, sys.stderr)
    sys.stdout = open(sys.stdout.fileno(), "w", closefd=False)
    sys.stderr = open(sys.stderr.fileno(), "w", closefd=False)
def restore():
    sys.stdout, sys.stderr = saved
`, MethodDesc{Name: "save"}, MethodDesc{Name: "restore"})
	h := mustLoad(t, dir, d)
	if _, err := h.CallJSON(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := h.CallJSON(ctx, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func TestVandalizedInterpreterState(t *testing.T) {
	// A plugin deletes modules other plugins and the library rely on and
	// empties sys.path. Error reporting, value conversion and loading a new
	// plugin keep working; the state is put back afterwards for the other
	// tests.
	vandal, d := simplePlugin(t, `
import sys
saved_path, saved_modules, saved_meta = None, None, None
def vandalize():
    global saved_path, saved_modules, saved_meta
    saved_path = list(sys.path)
    saved_meta = list(sys.meta_path)
    # Keep only the standard finders: the library's SDK hook goes.
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != "_fidius_host"]
    names = [n for n in sys.modules if n.split(".")[0] in ("fidius", "traceback", "dataclasses", "json", "linecache")]
    saved_modules = {n: sys.modules.pop(n) for n in names}
    sys.path[:] = []
def replace_path():
    sys.path = "not a list"
def restore():
    sys.path = saved_path
    sys.meta_path[:] = saved_meta
    sys.modules.update(saved_modules)
`, MethodDesc{Name: "vandalize"}, MethodDesc{Name: "replace_path"}, MethodDesc{Name: "restore"})
	v := mustLoad(t, vandal, d)
	g := greeter(t)
	if _, err := v.CallJSON(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.CallJSON(ctx, 2, nil) })

	_, err := g.CallJSON(ctx, idx(t, g, "key_error"), nil)
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "KeyError" || !strings.Contains(string(perr.Details), "in key_error") {
		t.Fatalf("error reporting: %v (%s)", err, perr.Details)
	}
	if out, err := g.CallJSON(ctx, idx(t, g, "value"), []byte(`"nested_dataclass"`)); err != nil || !bytes.Contains(out, []byte(`"start"`)) {
		t.Fatalf("dataclass conversion: %s, %v", out, err)
	}
	dir, d2 := simplePlugin(t, "import fidius\n@fidius.method\ndef hi(): return fidius.__spec__.origin\n", MethodDesc{Name: "hi"})
	h := mustLoad(t, dir, d2)
	if got, err := Call[string](ctx, h, 0); err != nil || got != "<fidius-go>/fidius.py" {
		t.Fatalf("new plugin after the vandal: %q, %v", got, err)
	}
	// sys.path replaced by something that is not a list: the next load
	// starts a new one.
	if _, err := v.CallJSON(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	dir3, d3 := simplePlugin(t, "def hi(): return 'still loading'\n", MethodDesc{Name: "hi"})
	h3 := mustLoad(t, dir3, d3)
	if got, err := Call[string](ctx, h3, 0); err != nil || got != "still loading" {
		t.Fatalf("load after sys.path was replaced: %q, %v", got, err)
	}
}

// Input.

func TestHostileInput(t *testing.T) {
	h := hostilePlugin(t)
	echo := hidx(h, "echo")
	_, err := h.CallJSON(ctx, echo, []byte(`{"a": [1, 2,, 3]}`))
	wantErr(t, err, ErrInputDecode, "offset 12")
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	_, err = h.CallJSON(ctx, echo, []byte(deep))
	wantErr(t, err, ErrInputDecode, "deeper than 1000")
	big := `"` + strings.Repeat("x", 50<<20) + `"`
	out, err := h.CallJSON(ctx, echo, []byte(big))
	if err != nil || len(out) != len(big) || out[1] != 'x' {
		t.Fatalf("50 MiB string: len %d, %v", len(out), err)
	}
}

// Concurrency and leaks.

func TestMixedLoadOnThreeHandles(t *testing.T) {
	g := greeter(t)
	h := hostilePlugin(t)
	dir, d := simplePlugin(t, "def add(a, b): return a + b\ndef boom(): raise ValueError('boom')\ndef raw(b): return b\n", MethodDesc{Name: "add"}, MethodDesc{Name: "boom"}, MethodDesc{Name: "raw", WireRaw: true})
	a := mustLoad(t, dir, d)
	blocks := func() int {
		n, err := Call[int](ctx, g, idx(t, g, "allocated_blocks"))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	calls := 20000
	if testing.Short() {
		calls = 2000
	}
	run := func(n int) {
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < n; i++ {
					if err := mixedCall(g, h, a, w, i); err != nil {
						t.Errorf("goroutine %d call %d: %v", w, i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	run(calls / 10)
	before := blocks()
	run(calls)
	after := blocks()
	if after-before > 500 {
		t.Fatalf("allocated blocks grew from %d to %d over %d calls", before, after, 8*calls)
	}
}

// mixedCall makes call i of goroutine w, cycling through outcomes, and
// checks the exact result.
func mixedCall(g, h, a *PluginHandle, w, i int) error {
	want := func(ok bool, got any, err error) error {
		if !ok {
			return fmt.Errorf("got %v, %v", got, err)
		}
		return nil
	}
	switch i % 6 {
	case 0:
		name := fmt.Sprintf("w%d-%d", w, i)
		s, err := Call[string](ctx, g, 0, name)
		return want(err == nil && s == "Hello, "+name+"!", s, err)
	case 1:
		n, err := Call[int](ctx, a, 0, w, i)
		return want(err == nil && n == w+i, n, err)
	case 2:
		_, err := a.CallJSON(ctx, 1, nil)
		var perr *PluginError
		return want(errors.As(err, &perr) && perr.Code == "ValueError" && perr.Message == "boom", nil, err)
	case 3:
		_, err := a.CallJSON(ctx, 2, nil)
		return want(errors.Is(err, ErrWireModeMismatch), nil, err)
	case 4:
		_, err := h.CallJSON(ctx, h.MethodCount()+i, nil)
		return want(errors.Is(err, ErrInvalidMethodIndex), nil, err)
	default:
		in := []byte(fmt.Sprintf("raw %d %d", w, i))
		out, err := g.CallRaw(context.Background(), 2, in)
		return want(err == nil && string(out) == reverseString(string(in)), string(out), err)
	}
}
