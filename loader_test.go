//go:build cgo

package fidius

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// testHash is the __interface_hash__ of testdata/greeter.
const testHash = 0x6669646975732d67

var testRaw = map[string]bool{"echo_raw": true, "reverse": true, "raw_str": true, "raw_bytearray": true, "raw_memoryview": true}

func testDescriptor() *InterfaceDescriptor {
	d := &InterfaceDescriptor{InterfaceName: "TestGreeter", InterfaceHash: testHash}
	for _, name := range []string{"greet", "move", "reverse", "fail", "key_error", "exit", "echo", "types",
		"count", "raw_str", "raw_bytearray", "raw_memoryview", "noop", "sink", "value", "sys_path", "echo_raw", "allocated_blocks"} {
		d.Methods = append(d.Methods, MethodDesc{Name: name, WireRaw: testRaw[name]})
	}
	return d
}

var (
	greeterOnce   sync.Once
	greeterHandle *PluginHandle
	greeterErr    error
)

// greeter returns the handle of testdata/greeter, loaded once per test binary.
func greeter(t testing.TB) *PluginHandle {
	t.Helper()
	greeterOnce.Do(func() { greeterHandle, greeterErr = LoadPythonPlugin("testdata/greeter", testDescriptor()) })
	if greeterErr != nil {
		t.Fatalf("loading testdata/greeter: %v", greeterErr)
	}
	return greeterHandle
}

func idx(t testing.TB, h *PluginHandle, name string) int {
	t.Helper()
	i, ok := h.Descriptor().MethodIndex(name)
	if !ok {
		t.Fatalf("no method %q", name)
	}
	return i
}

var (
	moduleNamesMu sync.Mutex
	moduleNames   = map[testing.TB]string{}
)

// moduleName gives each test its own entry module name: one interpreter
// (and one sys.modules) serves the whole test binary, also across
// -count runs of the same test.
func moduleName(t testing.TB) string {
	moduleNamesMu.Lock()
	defer moduleNamesMu.Unlock()
	if name, ok := moduleNames[t]; ok {
		return name
	}
	var b strings.Builder
	b.WriteString("t_")
	for _, r := range strings.ToLower(t.Name()) {
		if r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	fmt.Fprintf(&b, "_%d", len(moduleNames))
	moduleNames[t] = b.String()
	return b.String()
}

func pythonManifest(entry string) string {
	return fmt.Sprintf(`[package]
name = "test"
version = "0.1.0"
interface = "Test"
interface_version = 1
runtime = "python"

[metadata]

[python]
entry_module = %q
`, entry)
}

// writePackage writes files (relative path -> content) into a new directory;
// a package.toml for entry module entry is added unless files has one.
func writePackage(t testing.TB, entry string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if _, ok := files["package.toml"]; !ok {
		files["package.toml"] = pythonManifest(entry)
	}
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var pluginCounts = map[testing.TB]int{}

// simplePlugin writes a package whose entry module is body, and the
// descriptor naming methods with the hash the module declares. The first
// package of a test has the module moduleName(t); later ones a suffix, as
// packages sharing a module name conflict.
func simplePlugin(t testing.TB, body string, methods ...MethodDesc) (string, *InterfaceDescriptor) {
	t.Helper()
	mod := moduleName(t)
	moduleNamesMu.Lock()
	if n := pluginCounts[t]; n > 0 {
		mod = fmt.Sprintf("%s_%d", mod, n)
	}
	pluginCounts[t]++
	moduleNamesMu.Unlock()
	src := "__interface_hash__ = 0x1234\n" + body
	dir := writePackage(t, mod, map[string]string{mod + ".py": src})
	return dir, &InterfaceDescriptor{InterfaceName: "Test", InterfaceHash: 0x1234, Methods: methods}
}

// modeOptions are the options mustLoad loads with: none; with
// FIDIUS_TEST_ISOLATION=N in the environment WithIsolation(N); with
// FIDIUS_TEST_WORKERS=N WithWorkers(N). So the tests written against the
// shared interpreter check isolated plugins and worker processes too (CI
// runs the conformance tests every way).
var modeOptions = func() []Option {
	if n, err := strconv.Atoi(os.Getenv("FIDIUS_TEST_ISOLATION")); err == nil && n > 0 {
		return []Option{WithIsolation(n)}
	}
	if n, err := strconv.Atoi(os.Getenv("FIDIUS_TEST_WORKERS")); err == nil && n > 0 {
		workerMode = true
		return []Option{WithWorkers(n)}
	}
	return nil
}()

// workerMode is whether the suite runs with FIDIUS_TEST_WORKERS.
var workerMode bool

// inProcessOnly skips a test of what only a plugin in this process does
// (the GIL, threads, the embedded interpreter's state) when the suite runs
// with FIDIUS_TEST_WORKERS; why says what differs.
func inProcessOnly(t testing.TB, why string) {
	t.Helper()
	if workerMode {
		t.Skip("in-process only: " + why)
	}
}

// sharedOnly skips a test of what only the shared interpreter does (one
// sys.modules, one sys.path, streams one plugin can restore for another)
// when the suite runs with FIDIUS_TEST_ISOLATION; why says what differs.
func sharedOnly(t testing.TB, why string) {
	t.Helper()
	if modeOptions != nil {
		t.Skip("shared interpreter only: " + why)
	}
}
func mustLoad(t testing.TB, dir string, d *InterfaceDescriptor) *PluginHandle {
	t.Helper()
	h, err := LoadPythonPlugin(dir, d, modeOptions...)
	if err != nil {
		t.Fatalf("LoadPythonPlugin: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func wantErr(t testing.TB, err error, kind error, fragments ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v does not match %v", err, kind)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}

var ctx = context.Background()

// 1.
func TestTypedCallString(t *testing.T) {
	h := greeter(t)
	out, err := h.CallJSON(ctx, idx(t, h, "greet"), []byte(`["World"]`))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `"Hello, World!"` {
		t.Fatalf("got %s", out)
	}
	// A non-array value is the single argument.
	out, err = h.CallJSON(ctx, idx(t, h, "greet"), []byte(`"Go"`))
	if err != nil || string(out) != `"Hello, Go!"` {
		t.Fatalf("got %s, %v", out, err)
	}
	s, err := Call[string](ctx, h, idx(t, h, "greet"), "World")
	if err != nil || s != "Hello, World!" {
		t.Fatalf("Call[string] = %q, %v", s, err)
	}
}

// 2.
func TestTypedCallStruct(t *testing.T) {
	type point struct {
		X     int    `json:"x"`
		Y     int    `json:"y"`
		Label string `json:"label"`
	}
	h := greeter(t)
	got, err := Call[point](ctx, h, idx(t, h, "move"), point{X: 1, Y: 2, Label: "origin"}, 10, -5)
	if err != nil {
		t.Fatal(err)
	}
	if want := (point{X: 11, Y: -3, Label: "ORIGIN"}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	// A result that does not fit Out is an output error.
	_, err = Call[int](ctx, h, idx(t, h, "greet"), "x")
	wantErr(t, err, ErrOutputEncode, "greet", "int")
	// Arguments that do not marshal never reach Python.
	_, err = Call[string](ctx, h, idx(t, h, "greet"), make(chan int))
	wantErr(t, err, ErrInputDecode, "chan")
}

// 3.
func TestRawCallLargePayload(t *testing.T) {
	h := greeter(t)
	in := make([]byte, 2<<20)
	for i := range in {
		in[i] = byte(i * 7)
	}
	out, err := h.CallRaw(ctx, idx(t, h, "reverse"), in)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) || out[0] != in[len(in)-1] || out[len(out)-1] != in[0] {
		t.Fatalf("len %d first %d last %d", len(out), out[0], out[len(out)-1])
	}
	// Small results take the other copy path.
	out, err = h.CallRaw(ctx, idx(t, h, "reverse"), []byte("abc"))
	if err != nil || string(out) != "cba" {
		t.Fatalf("got %q, %v", out, err)
	}
	out, err = h.CallRaw(ctx, idx(t, h, "reverse"), nil)
	if err != nil || len(out) != 0 {
		t.Fatalf("empty: got %q, %v", out, err)
	}
}

func TestRawResultTypes(t *testing.T) {
	h := greeter(t)
	out, err := h.CallRaw(ctx, idx(t, h, "raw_bytearray"), []byte("hi"))
	if err != nil || string(out) != "hi!" {
		t.Fatalf("bytearray: %q, %v", out, err)
	}
	out, err = h.CallRaw(ctx, idx(t, h, "raw_memoryview"), []byte("xyz"))
	if err != nil || string(out) != "yz" {
		t.Fatalf("memoryview: %q, %v", out, err)
	}
	_, err = h.CallRaw(ctx, idx(t, h, "raw_str"), []byte("x"))
	wantErr(t, err, ErrOutputEncode, "raw_str", "str")
}

// 4.
func TestPluginErrorFields(t *testing.T) {
	h := greeter(t)
	_, err := h.CallJSON(ctx, idx(t, h, "fail"), nil)
	var perr *PluginError
	if !errors.As(err, &perr) {
		t.Fatalf("got %v, want *PluginError", err)
	}
	if perr.Code != "BAD_INPUT" || perr.Message != "deliberate failure" || string(perr.Details) != `{"got":42}` {
		t.Fatalf("got %+v (details %s)", perr, perr.Details)
	}
}

// 5.
func TestPlainExceptionBecomesPluginError(t *testing.T) {
	h := greeter(t)
	_, err := h.CallJSON(ctx, idx(t, h, "key_error"), nil)
	var perr *PluginError
	if !errors.As(err, &perr) {
		t.Fatalf("got %v, want *PluginError", err)
	}
	if perr.Code != "KeyError" || perr.Message != "'missing'" {
		t.Fatalf("got code %q message %q", perr.Code, perr.Message)
	}
	var d struct{ Traceback string }
	if err := json.Unmarshal(perr.Details, &d); err != nil {
		t.Fatalf("details %s: %v", perr.Details, err)
	}
	if !strings.Contains(d.Traceback, "fidius_testdata_greeter.py") || !strings.Contains(d.Traceback, "in key_error") {
		t.Fatalf("traceback does not show the frame: %q", d.Traceback)
	}
}

// 6.
func TestInterfaceHashChecks(t *testing.T) {
	t.Run("mismatch", func(t *testing.T) {
		d := testDescriptor()
		d.InterfaceHash = 0xfeed
		_, err := LoadPythonPlugin("testdata/greeter", d)
		wantErr(t, err, ErrInterfaceHashMismatch, "TestGreeter", "0x6669646975732d67", "0x000000000000feed")
		var hm *HashMismatchError
		if !errors.As(err, &hm) || hm.Got != testHash || hm.Expected != 0xfeed || hm.Interface != "TestGreeter" {
			t.Fatalf("errors.As: %+v", hm)
		}
	})
	cases := []struct {
		name, decl string
		kind       error
		fragment   string
	}{
		{"missing", "", ErrMissingAttr, "__interface_hash__"},
		{"string", `__interface_hash__ = "0x1234"`, ErrImportFailed, "it is a str"},
		{"bool", `__interface_hash__ = True`, ErrImportFailed, "it is a bool"},
		{"negative", `__interface_hash__ = -1`, ErrImportFailed, "-1"},
		{"too_large", `__interface_hash__ = 2**64`, ErrImportFailed, "18446744073709551616"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mod := moduleName(t)
			dir := writePackage(t, mod, map[string]string{mod + ".py": c.decl + "\ndef greet(n): return n\n"})
			_, err := LoadPythonPlugin(dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}}})
			wantErr(t, err, c.kind, c.fragment, mod)
		})
	}
	t.Run("max_uint64", func(t *testing.T) {
		mod := moduleName(t)
		dir := writePackage(t, mod, map[string]string{mod + ".py": "__interface_hash__ = 2**64 - 1\n"})
		mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1<<64 - 1})
	})
}

// 7.
func TestMethodResolution(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		dir, d := simplePlugin(t, "def greet(n): return n\n", MethodDesc{Name: "greet"}, MethodDesc{Name: "wave"})
		_, err := LoadPythonPlugin(dir, d)
		wantErr(t, err, ErrMethodNotRegistered, `"wave"`, `"Test"`, moduleName(t), "not defined")
	})
	t.Run("not_callable", func(t *testing.T) {
		dir, d := simplePlugin(t, "greet = 'hello'\n", MethodDesc{Name: "greet"})
		_, err := LoadPythonPlugin(dir, d)
		wantErr(t, err, ErrMethodNotRegistered, `"greet"`, "not callable", "str")
	})
}

// 8.
func TestManifestErrorsAtLoad(t *testing.T) {
	header := "[package]\nname = \"x\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\n"
	cases := []struct {
		name, toml string
		kind       error
		fragments  []string
	}{
		{"runtime_absent", header + "[metadata]\n", ErrNotPythonRuntime, []string{`"rust"`}},
		{"runtime_rust", header + "runtime = \"rust\"\n[metadata]\n", ErrNotPythonRuntime, []string{`"rust"`}},
		{"runtime_go", header + "runtime = \"go\"\n[metadata]\n", ErrManifest, []string{`"go"`, `"rust"`, `"python"`}},
		{"python_missing", header + "runtime = \"python\"\n[metadata]\n", ErrMissingPythonSection, []string{"[python]"}},
		{"python_with_rust", header + "[metadata]\n[python]\nentry_module = \"m\"\n", ErrManifest, []string{"[python]"}},
		{"malformed", header + "runtime = \"python\n[metadata]\n", ErrManifest, []string{"package.toml:6:"}},
		{"wrong_type", header + "runtime = 3\n[metadata]\n", ErrManifest, []string{"package.toml:6:"}},
		{"metadata_missing", header + "runtime = \"python\"\n[python]\nentry_module = \"m\"\n", ErrManifest, []string{"[metadata]"}},
		{"name_missing", "[package]\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\n[metadata]\n", ErrManifest, []string{"package.name"}},
		{"entry_missing", header + "runtime = \"python\"\n[metadata]\n[python]\n", ErrManifest, []string{"entry_module"}},
		{"entry_invalid", header + "runtime = \"python\"\n[metadata]\n[python]\nentry_module = \"../evil\"\n", ErrManifest, []string{"../evil"}},
		{"interface_version_negative", header[:len(header)-2] + "-1\n[metadata]\n", ErrManifest, []string{"package.toml:5:"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writePackage(t, "", map[string]string{"package.toml": c.toml})
			_, err := LoadPythonPlugin(dir, testDescriptor())
			wantErr(t, err, c.kind, c.fragments...)
			if c.kind == ErrNotPythonRuntime {
				wantErr(t, err, ErrNotPythonRuntime, dir)
			}
		})
	}
	t.Run("no_manifest", func(t *testing.T) {
		dir := t.TempDir()
		_, err := LoadPythonPlugin(dir, testDescriptor())
		wantErr(t, err, ErrManifest, dir, "package.toml")
	})
}

// 9.
func TestImportFailures(t *testing.T) {
	cases := []struct {
		name, src, typ, fragment string
	}{
		{"syntax_error", "def broken(:\n", "SyntaxError", ""},
		{"raises", "raise RuntimeError('no config found')\n", "RuntimeError", "no config found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mod := moduleName(t)
			dir := writePackage(t, mod, map[string]string{mod + ".py": c.src})
			_, err := LoadPythonPlugin(dir, testDescriptor())
			wantErr(t, err, ErrImportFailed, mod, c.typ, c.fragment)
			var ie *ImportError
			if !errors.As(err, &ie) || ie.Module != mod || ie.Type != c.typ {
				t.Fatalf("ImportError = %+v", ie)
			}
			if !strings.Contains(ie.Traceback, mod+".py") {
				t.Errorf("traceback does not show the module: %q", ie.Traceback)
			}
		})
	}
	t.Run("no_such_module", func(t *testing.T) {
		mod := moduleName(t)
		dir := writePackage(t, mod, map[string]string{})
		_, err := LoadPythonPlugin(dir, testDescriptor())
		wantErr(t, err, ErrImportFailed, "ModuleNotFoundError", mod)
	})
}

func sysPath(t *testing.T) []string {
	h := greeter(t)
	out, err := h.CallJSON(ctx, idx(t, h, "sys_path"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var p []string
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// 10.
func TestSysPath(t *testing.T) {
	sharedOnly(t, "it reads sys.path through another plugin")
	mod := moduleName(t)
	shadow := mod + "_shadow"
	dir := writePackage(t, mod, map[string]string{
		mod + ".py":                fmt.Sprintf("__interface_hash__ = 1\nimport %s\ndef where(): return %s.WHERE\n", shadow, shadow),
		shadow + ".py":             "WHERE = 'package dir'\n",
		"vendor/" + shadow + ".py": "WHERE = 'vendor'\n",
	})
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "where"}}}
	h1 := mustLoad(t, dir, d)
	if p := sysPath(t); len(p) < 2 || p[0] != filepath.Join(dir, "vendor") || p[1] != dir {
		t.Fatalf("sys.path starts %q", p[:2])
	}
	mustLoad(t, dir, d)
	// A relative path names the same directory: still no duplicate.
	wd, _ := os.Getwd()
	if rel, err := filepath.Rel(wd, dir); err == nil {
		mustLoad(t, rel, d)
	}
	count := map[string]int{}
	for _, p := range sysPath(t) {
		count[p]++
	}
	if count[dir] != 1 || count[filepath.Join(dir, "vendor")] != 1 {
		t.Fatalf("after three loads: dir %d times, vendor %d times", count[dir], count[filepath.Join(dir, "vendor")])
	}
	got, err := Call[string](ctx, h1, 0)
	if err != nil || got != "vendor" {
		t.Fatalf("shadowed module came from %q (%v), want vendor", got, err)
	}
}

// 11.
func TestWireModeAndIndexChecks(t *testing.T) {
	h := greeter(t)
	_, err := h.CallRaw(ctx, idx(t, h, "greet"), []byte("x"))
	wantErr(t, err, ErrWireModeMismatch, `"greet"`, "typed")
	_, err = h.CallJSON(ctx, idx(t, h, "reverse"), []byte(`"x"`))
	wantErr(t, err, ErrWireModeMismatch, `"reverse"`, "raw")
	n := h.MethodCount()
	for _, i := range []int{-1, n} {
		_, err = h.CallJSON(ctx, i, nil)
		wantErr(t, err, ErrInvalidMethodIndex, fmt.Sprintf("%d", i), fmt.Sprintf("has %d methods", n))
		_, err = h.CallRaw(ctx, i, nil)
		wantErr(t, err, ErrInvalidMethodIndex)
	}
}

func TestStreamingMethodRejectsUnaryCall(t *testing.T) {
	dir, d := simplePlugin(t, "def ticks(): yield 1\n", MethodDesc{Name: "ticks", Streaming: true})
	h := mustLoad(t, dir, d)
	_, err := h.CallJSON(ctx, 0, nil)
	wantErr(t, err, ErrWireModeMismatch, `"ticks"`, "stream")
}

// 12.
func TestSystemExitIsContained(t *testing.T) {
	h := greeter(t)
	for i := 0; i < 3; i++ {
		_, err := h.CallJSON(ctx, idx(t, h, "exit"), nil)
		var perr *PluginError
		if !errors.As(err, &perr) || perr.Code != "SystemExit" || perr.Message != "3" {
			t.Fatalf("got %v", err)
		}
		if s, err := Call[string](ctx, h, idx(t, h, "greet"), "still here"); err != nil || s != "Hello, still here!" {
			t.Fatalf("after SystemExit: %q, %v", s, err)
		}
	}
}

func TestKeyboardInterruptIsContained(t *testing.T) {
	dir, d := simplePlugin(t, "def stop(): raise KeyboardInterrupt('ctrl-c')\n", MethodDesc{Name: "stop"})
	h := mustLoad(t, dir, d)
	_, err := h.CallJSON(ctx, 0, nil)
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "KeyboardInterrupt" || perr.Message != "ctrl-c" {
		t.Fatalf("got %v", err)
	}
}

// 13.
func TestConcurrentCalls(t *testing.T) {
	h := greeter(t)
	greet := idx(t, h, "greet")
	reverse := idx(t, h, "reverse")
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				name := fmt.Sprintf("g%d-%d", g, i)
				if g%4 == 3 {
					out, err := h.CallRaw(ctx, reverse, []byte(name))
					if err != nil || string(out) != reverseString(name) {
						errs <- fmt.Errorf("reverse(%q) = %q, %v", name, out, err)
						return
					}
					continue
				}
				s, err := Call[string](ctx, h, greet, name)
				if err != nil || s != "Hello, "+name+"!" {
					errs <- fmt.Errorf("greet(%q) = %q, %v", name, s, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func reverseString(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

// 14.
func TestClose(t *testing.T) {
	dir, d := simplePlugin(t, "def ping(): return 'pong'\ndef raw(b): return b\n", MethodDesc{Name: "ping"}, MethodDesc{Name: "raw", WireRaw: true})
	h := mustLoad(t, dir, d)
	if s, err := Call[string](ctx, h, 0); err != nil || s != "pong" {
		t.Fatalf("before Close: %q, %v", s, err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := h.CallJSON(ctx, 0, nil)
	wantErr(t, err, ErrClosed)
	_, err = h.CallRaw(ctx, 1, []byte("x"))
	wantErr(t, err, ErrClosed)
}

func TestCloseWhileCalling(t *testing.T) {
	dir, d := simplePlugin(t, "def ping(): return 'pong'\n", MethodDesc{Name: "ping"})
	h := mustLoad(t, dir, d)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				s, err := Call[string](ctx, h, 0)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil || s != "pong" {
					t.Errorf("got %q, %v", s, err)
					return
				}
			}
		}()
	}
	h.Close()
	wg.Wait()
	if _, err := h.CallJSON(ctx, 0, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestCancelledContextRunsNothing(t *testing.T) {
	h := greeter(t)
	count := idx(t, h, "count")
	before, err := Call[int](ctx, h, count)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := h.CallJSON(cctx, count, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if _, err := h.CallRaw(cctx, idx(t, h, "reverse"), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("raw: got %v, want context.Canceled", err)
	}
	after, err := Call[int](ctx, h, count)
	if err != nil || after != before+1 {
		t.Fatalf("count went from %d to %d: the cancelled call ran", before, after)
	}
}

func TestInvalidJSONNeverReachesPython(t *testing.T) {
	h := greeter(t)
	count := idx(t, h, "count")
	before, _ := Call[int](ctx, h, count)
	for _, in := range []string{`[1,]`, `{`, `nul`, `"unterminated`, `[1] [2]`, `01`, `NaN`, "\"\xff\"", " "} {
		_, err := h.CallJSON(ctx, count, []byte(in))
		wantErr(t, err, ErrInputDecode, `"count"`, "offset")
	}
	after, _ := Call[int](ctx, h, count)
	if after != before+1 {
		t.Fatalf("count went from %d to %d: invalid input reached the plugin", before, after)
	}
}

// 15.
func TestEmbeddedSDK(t *testing.T) {
	dir, d := simplePlugin(t, `
import fidius

@fidius.method
def origin():
    return fidius.__spec__.origin

@fidius.method
def registered():
    return fidius.list_methods(__name__)
`, MethodDesc{Name: "origin"}, MethodDesc{Name: "registered"})
	h := mustLoad(t, dir, d)
	origin, err := Call[string](ctx, h, 0)
	if err != nil || origin != "<fidius-go>/fidius.py" {
		t.Fatalf("fidius came from %q (%v), want the embedded copy", origin, err)
	}
	names, err := Call[[]string](ctx, h, 1)
	if err != nil || strings.Join(names, ",") != "origin,registered" {
		t.Fatalf("list_methods = %q, %v", names, err)
	}
}

func TestVendoredSDKCopyPluginError(t *testing.T) {
	mod := moduleName(t)
	files := map[string]string{
		mod + "/__init__.py": `
__interface_hash__ = 7
import fidius as shared
from ._vendor import fidius

def same_class():
    return fidius.PluginError is shared.PluginError

@fidius.method
def fail():
    raise fidius.PluginError("VENDORED", "raised through a vendored copy", details={"n": [1, 2]})
`,
	}
	err := fs.WalkDir(sdkFiles, "python/fidius", func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		src, _ := sdkFiles.ReadFile(p)
		files[mod+"/_vendor/fidius/"+filepath.Base(p)] = string(src)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	files[mod+"/_vendor/__init__.py"] = ""
	dir := writePackage(t, mod, files)
	h := mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 7, Methods: []MethodDesc{{Name: "same_class"}, {Name: "fail"}}})
	if same, err := Call[bool](ctx, h, 0); err != nil || same {
		t.Fatalf("vendored PluginError is the shared class (%v): the test proves nothing", err)
	}
	_, err = h.CallJSON(ctx, 1, nil)
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "VENDORED" || perr.Message != "raised through a vendored copy" || string(perr.Details) != `{"n":[1,2]}` {
		t.Fatalf("got %v", err)
	}
}

func TestPluginErrorSubclassAndOddFields(t *testing.T) {
	dir, d := simplePlugin(t, `
from fidius import PluginError

class NotFound(PluginError):
    def __init__(self, what):
        super().__init__("NOT_FOUND", f"{what} not found")

class Weird(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")

def sub(): raise NotFound("user 7")
def nodetails(): raise PluginError(404, "numeric code")
def weird(): raise Weird()
def nan_details(): raise PluginError("X", "y", details=float("nan"))
`, MethodDesc{Name: "sub"}, MethodDesc{Name: "nodetails"}, MethodDesc{Name: "weird"}, MethodDesc{Name: "nan_details"})
	h := mustLoad(t, dir, d)
	check := func(i int, code, msg, details string) {
		t.Helper()
		_, err := h.CallJSON(ctx, i, nil)
		var perr *PluginError
		if !errors.As(err, &perr) || perr.Code != code || perr.Message != msg || string(perr.Details) != details {
			t.Fatalf("got %#v, want %s %q %s", perr, code, msg, details)
		}
	}
	check(0, "NOT_FOUND", "user 7 not found", "")
	check(1, "404", "numeric code", "")
	check(3, "X", "y", "")
	// An exception whose __str__ raises still arrives, with its traceback.
	_, err := h.CallJSON(ctx, 2, nil)
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "Weird" || perr.Message != "<unprintable Weird object>" ||
		!strings.Contains(string(perr.Details), "in weird") {
		t.Fatalf("got %#v", perr)
	}
}

func TestLogging(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{mod + ".py": "__interface_hash__ = 1\n"})
	h, err := LoadPythonPlugin(dir, &InterfaceDescriptor{InterfaceName: "Quiet", InterfaceHash: 1}, WithLogger(zap.New(core)))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var debug []string
	var info []map[string]any
	for _, e := range logs.All() {
		switch e.Level {
		case zapcore.DebugLevel:
			debug = append(debug, e.ContextMap()["path"].(string))
		case zapcore.InfoLevel:
			info = append(info, e.ContextMap())
		}
	}
	if len(debug) != 2 || debug[0] != dir || debug[1] != filepath.Join(dir, "vendor") {
		t.Errorf("debug lines for sys.path: %q", debug)
	}
	if len(info) != 1 || info[0]["package"] != dir || info[0]["interface"] != "Quiet" || info[0]["entry_module"] != mod {
		t.Errorf("info lines: %v", info)
	}
}

func TestSDKRegistry(t *testing.T) {
	// The registry is shared by every plugin in the test binary: the
	// checks run on a saved copy and put it back.
	dir, d := simplePlugin(t, `
import fidius
from fidius import _registry

def check():
    saved = dict(_registry._REGISTRY)
    out = {}
    try:
        fidius.reset_registry()
        def a(): pass
        a.__module__ = "mod_one"
        def b(): pass
        b.__module__ = "mod_one"
        def a2(): pass
        a2.__module__ = "mod_two"
        a2.__name__ = "a"
        out["returned_unchanged"] = fidius.method(a) is a
        fidius.method(b)
        fidius.method(a2)
        try:
            fidius.method(a)
            out["duplicate"] = "no error"
        except ValueError as e:
            out["duplicate"] = str(e)
        out["list_all"] = fidius.list_methods()
        out["list_one"] = fidius.list_methods("mod_two")
        out["get_scoped"] = fidius.get_method("a", module="mod_two") is a2
        out["get_unique"] = fidius.get_method("b") is b
        for name in ("a", "zzz"):
            try:
                fidius.get_method(name)
                out["get_" + name] = "no error"
            except KeyError as e:
                out["get_" + name] = "KeyError"
        fidius.reset_registry()
        out["after_reset"] = fidius.list_methods()
        err = fidius.PluginError("C", "m")
        out["error"] = [err.code, err.message, err.details, str(err), isinstance(err, Exception)]
    finally:
        _registry._REGISTRY.clear()
        _registry._REGISTRY.update(saved)
    return out
`, MethodDesc{Name: "check"})
	h := mustLoad(t, dir, d)
	out, err := h.CallJSON(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"returned_unchanged":true,"duplicate":"fidius: method 'a' is already registered in module 'mod_one'",` +
		`"list_all":["a","b"],"list_one":["a"],"get_scoped":true,"get_unique":true,"get_a":"KeyError","get_zzz":"KeyError",` +
		`"after_reset":[],"error":["C","m",null,"m",true]}`
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
}

// writeBytecode makes Python write bytecode caches for the rest of the
// test, whatever PYTHONDONTWRITEBYTECODE says, as it does on most machines.
func writeBytecode(t *testing.T) {
	t.Helper()
	mod := moduleName(t) + "_bytecode"
	dir := writePackage(t, mod, map[string]string{mod + ".py": `
import sys
__interface_hash__ = 1
def set(on):
    old = sys.dont_write_bytecode
    sys.dont_write_bytecode = not on
    return not old
`})
	// In the shared interpreter: isolated ones made afterwards follow it.
	h, err := LoadPythonPlugin(dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "set"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	was, err := Call[bool](ctx, h, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Call[bool](ctx, h, 0, was) })
}

func TestInspectPythonPackage(t *testing.T) {
	r, err := InspectPythonPackage("examples/greeter/plugin")
	if err != nil {
		t.Fatal(err)
	}
	if r.InterfaceHash != 0xe59581c4ab5583dd || strings.Join(r.Methods, ",") != "fail,greet,reverse" || r.Manifest.Package.Name != "py-greeter" {
		t.Fatalf("report %+v", r)
	}
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{mod + ".py": "def f(): pass\n"})
	_, err = InspectPythonPackage(dir)
	wantErr(t, err, ErrMissingAttr, "__interface_hash__")
	gamma := writePackage(t, "", map[string]string{"package.toml": manifestFor("gamma", "Other", "", "")})
	_, err = InspectPythonPackage(gamma)
	wantErr(t, err, ErrNotPythonRuntime)
}
