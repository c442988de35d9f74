//go:build cgo

package fidius

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReload(t *testing.T) {
	writeBytecode(t)
	mod := moduleName(t)
	helper := mod + "_helper"
	dir := writePackage(t, mod, map[string]string{
		mod + ".py":    "__interface_hash__ = 1\nimport " + helper + "\ndef greet(n): return " + helper + ".WORD + ', ' + n\n",
		helper + ".py": "WORD = 'Hello'\n",
	})
	h := mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}}})
	greet := func() string {
		t.Helper()
		s, err := Call[string](ctx, h, 0, "Ann")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if got := greet(); got != "Hello, Ann" {
		t.Fatalf("before: %q", got)
	}
	// Same size, same second: the bytecode cache must not hide the edit.
	writeFile(t, filepath.Join(dir, helper+".py"), "WORD = 'Howdy'\n")
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := greet(); got != "Howdy, Ann" {
		t.Fatalf("after editing a helper module: %q", got)
	}

	// A broken edit keeps the old code serving.
	writeFile(t, filepath.Join(dir, mod+".py"), "__interface_hash__ = 1\ndef greet(n) return n\n")
	err := h.Reload()
	wantErr(t, err, ErrImportFailed, "SyntaxError", mod)
	if got := greet(); got != "Howdy, Ann" {
		t.Fatalf("after a failed reload: %q", got)
	}
	// So does an edit that breaks the interface.
	writeFile(t, filepath.Join(dir, mod+".py"), "__interface_hash__ = 2\ndef greet(n): return n\n")
	wantErr(t, h.Reload(), ErrInterfaceHashMismatch)
	if got := greet(); got != "Howdy, Ann" {
		t.Fatalf("after a hash mismatch: %q", got)
	}
	// And a good edit after that goes through.
	writeFile(t, filepath.Join(dir, mod+".py"), "__interface_hash__ = 1\ndef greet(n): return 'Hi, ' + n\n")
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := greet(); got != "Hi, Ann" {
		t.Fatalf("after the fix: %q", got)
	}
	h.Close()
	wantErr(t, h.Reload(), ErrClosed)
}

func TestReloadConfigured(t *testing.T) {
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{
		mod + ".py": "__interface_hash__ = 1\nclass G:\n    def __init__(self, c): self.c = c\n    def greet(self): return 'v1 ' + self.c\ndef __fidius_configure__(c): return G(c)\n",
	})
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}}}
	h, err := LoadPythonPluginConfigured(dir, d, "blue")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	writeFile(t, filepath.Join(dir, mod+".py"), "__interface_hash__ = 1\nclass G:\n    def __init__(self, c): self.c = c\n    def greet(self): return 'v2 ' + self.c\ndef __fidius_configure__(c): return G(c)\n")
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, err := Call[string](ctx, h, 0); err != nil || got != "v2 blue" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestReloadUnderLoad(t *testing.T) {
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{mod + ".py": "__interface_hash__ = 1\nVERSION = 0\ndef version(): return VERSION\n"})
	h := mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "version"}}})
	var stop atomic.Bool
	var wg sync.WaitGroup
	var calls atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := -1
			for !stop.Load() {
				v, err := Call[int](ctx, h, 0)
				if err != nil {
					t.Errorf("call failed during reloads: %v", err)
					return
				}
				if v < last {
					t.Errorf("version went back from %d to %d", last, v)
					return
				}
				last = v
				calls.Add(1)
			}
		}()
	}
	for v := 1; v <= 20; v++ {
		writeFile(t, filepath.Join(dir, mod+".py"), "__interface_hash__ = 1\ndef version(): return "+strconv.Itoa(v)+"\n")
		if err := h.Reload(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if v, err := Call[int](ctx, h, 0); err != nil || v != 20 {
		t.Fatalf("final version %d, %v", v, err)
	}
	if calls.Load() < 100 {
		t.Fatalf("only %d calls ran during the reloads", calls.Load())
	}
}

// sdkPluginSource is a plugin written with the SDK's @method, as plugin
// authors write them. extra names one more registered method (or none).
func sdkPluginSource(hash int, word, extra string) string {
	src := fmt.Sprintf(`from fidius import method
import fidius

__interface_hash__ = %d

@method
def greet(name):
    return "%s, " + name

@method
def registered():
    return fidius.list_methods(__name__)
`, hash, word)
	if extra != "" {
		src += fmt.Sprintf("\n@method\ndef %s():\n    return None\n", extra)
	}
	return src
}

func TestReloadSDKMethodPlugin(t *testing.T) {
	writeBytecode(t)
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{mod + ".py": sdkPluginSource(1, "Hello", "old_only")})
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}, {Name: "registered"}}}
	h := mustLoad(t, dir, d)
	other := mustLoad(t, dir, d) // a second handle of the same package
	call := func(h *PluginHandle) (string, []string) {
		t.Helper()
		s, err := Call[string](ctx, h, 0, "Ann")
		if err != nil {
			t.Fatal(err)
		}
		names, err := Call[[]string](ctx, h, 1)
		if err != nil {
			t.Fatal(err)
		}
		return s, names
	}

	// Nothing changed: the module registers the same names again.
	if err := h.Reload(); err != nil {
		t.Fatalf("reload of an unchanged @method plugin: %v", err)
	}
	if s, names := call(h); s != "Hello, Ann" || strings.Join(names, ",") != "greet,old_only,registered" {
		t.Fatalf("after an unchanged reload: %q, %q", s, names)
	}

	// An edit that drops a method: its old registration goes with the old module.
	writeFile(t, filepath.Join(dir, mod+".py"), sdkPluginSource(1, "Howdy", ""))
	if err := h.Reload(); err != nil {
		t.Fatalf("reload of an edited @method plugin: %v", err)
	}
	if s, names := call(h); s != "Howdy, Ann" || strings.Join(names, ",") != "greet,registered" {
		t.Fatalf("after an edit: %q, %q", s, names)
	}
	// The other handle keeps the code it loaded until it reloads itself.
	if s, err := Call[string](ctx, other, 0, "Ann"); err != nil || s != "Hello, Ann" {
		t.Fatalf("second handle after the first reloaded: %q, %v", s, err)
	}
	if err := other.Reload(); err != nil {
		t.Fatalf("second handle's reload: %v", err)
	}
	if s, err := Call[string](ctx, other, 0, "Ann"); err != nil || s != "Howdy, Ann" {
		t.Fatalf("second handle after its own reload: %q, %v", s, err)
	}

	// A changed interface hash is reported as such, not as a registration error.
	writeFile(t, filepath.Join(dir, mod+".py"), sdkPluginSource(2, "Hi", ""))
	err := h.Reload()
	var mismatch *HashMismatchError
	if !errors.As(err, &mismatch) || mismatch.Got != 2 || mismatch.Expected != 1 {
		t.Fatalf("reload with a changed hash: %v", err)
	}
	if s, _ := call(h); s != "Howdy, Ann" {
		t.Fatalf("after a failed reload: %q", s)
	}

	// Registering a name twice in one execution of a module is still an error.
	writeFile(t, filepath.Join(dir, mod+".py"), sdkPluginSource(1, "Hi", "greet"))
	err = h.Reload()
	wantErr(t, err, ErrImportFailed, "ValueError", "fidius: method 'greet' is already registered in module '"+mod+"'")
}

func TestSDKRegistryImportlibReload(t *testing.T) {
	// importlib.reload runs a module again in the same module object; its
	// registrations are replaced as for a host's reload.
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{
		mod + ".py": "import importlib, fidius\nimport " + mod + "_sub as sub\n__interface_hash__ = 1\n" +
			"def again():\n    importlib.reload(sub)\n    return [fidius.list_methods(sub.__name__), fidius.get_method('sub_only', sub.__name__) is sub.sub_only]\n",
		mod + "_sub.py": "from fidius import method\n@method\ndef sub_only(): pass\n",
	})
	h := mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "again"}}})
	for i := 0; i < 2; i++ {
		out, err := h.CallJSON(ctx, 0, nil)
		if err != nil || string(out) != `[["sub_only"],true]` {
			t.Fatalf("importlib.reload %d: %s, %v", i, out, err)
		}
	}
}

// sdkCopy returns the embedded SDK's files under prefix, for a package
// that vendors the SDK.
func sdkCopy(t *testing.T, prefix string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := fs.WalkDir(sdkFiles, "python/fidius", func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		src, err := sdkFiles.ReadFile(p)
		files[prefix+filepath.Base(p)] = string(src)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestReloadWithVendoredSDK(t *testing.T) {
	// The first package loaded in a fresh process vendors the SDK, so its
	// copy becomes the process's fidius and serves the second package too.
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	vendoring := moduleName(t)
	files := sdkCopy(t, "vendor/fidius/")
	source := func(word string) string {
		return sdkPluginSource(1, word, "") + "\nimport os\n@method\ndef sdk():\n    return os.path.dirname(os.path.dirname(fidius.__file__))\n"
	}
	files[vendoring+".py"] = source("Hello")
	first := writePackage(t, vendoring, files)
	plain := vendoring + "_plain"
	second := writePackage(t, plain, map[string]string{plain + ".py": sdkPluginSource(1, "Hello", "")})
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}, {Name: "registered"}}}
	a := mustLoad(t, first, d)
	b := mustLoad(t, second, d)
	probe := mustLoad(t, first, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "sdk"}}})
	if where, err := Call[string](ctx, probe, 0); err != nil || where != filepath.Join(first, "vendor") {
		t.Fatalf("fidius comes from %q (%v), not the vendored copy", where, err)
	}
	for round, word := range []string{"Hello", "Howdy", "Hi"} {
		writeFile(t, filepath.Join(first, vendoring+".py"), source(word))
		writeFile(t, filepath.Join(second, plain+".py"), sdkPluginSource(1, word, ""))
		for _, c := range []struct {
			h     *PluginHandle
			names string
		}{{b, "greet,registered"}, {a, "greet,registered,sdk"}} {
			if err := c.h.Reload(); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if s, err := Call[string](ctx, c.h, 0, "Ann"); err != nil || s != word+", Ann" {
				t.Fatalf("round %d: %q, %v", round, s, err)
			}
			if names, err := Call[[]string](ctx, c.h, 1); err != nil || strings.Join(names, ",") != c.names {
				t.Fatalf("round %d: registered %q, %v", round, names, err)
			}
		}
	}
}

func TestConcurrentReloadsOfOnePackage(t *testing.T) {
	// Three configured handles of one package reload at once after each
	// edit. The module's top level sleeps, so imports overlap unless
	// loads are serialised.
	mod := moduleName(t)
	source := func(v int) string {
		return fmt.Sprintf("import time\ntime.sleep(0.005)\n__interface_hash__ = 1\nV = %d\n"+
			"class G:\n    def __init__(self, c): self.c = c\n    def version(self): return [V, self.c]\n"+
			"def __fidius_configure__(c): return G(c)\n", v)
	}
	dir := writePackage(t, mod, map[string]string{mod + ".py": source(0)})
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "version"}}}
	var handles []*PluginHandle
	for i := 0; i < 3; i++ {
		h, err := LoadPythonPluginConfigured(dir, d, i)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		handles = append(handles, h)
	}
	for round := 1; round <= 15; round++ {
		writeFile(t, filepath.Join(dir, mod+".py"), source(round))
		errs := make([]error, len(handles))
		var wg sync.WaitGroup
		for i, h := range handles {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = h.Reload()
			}()
		}
		wg.Wait()
		for i, h := range handles {
			if errs[i] != nil {
				t.Fatalf("round %d, handle %d: %v", round, i, errs[i])
			}
			if got, err := Call[[2]int](ctx, h, 0); err != nil || got != [2]int{round, i} {
				t.Fatalf("round %d, handle %d serves %v (%v), want [%d %d]", round, i, got, err, round, i)
			}
		}
	}
}

func TestLazyImportsDuringReloads(t *testing.T) {
	// Calls import a package module lazily while the host reloads the
	// package over and over: no call may fail because of a reload.
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{
		mod + ".py": "import importlib\n__interface_hash__ = 1\n" +
			"def word():\n    return importlib.import_module(__name__ + '_helper').WORD\n",
		mod + "_helper.py": "import time\ntime.sleep(0.002)\nWORD = 'ok'\n",
	})
	h := mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "word"}}})
	var stop atomic.Bool
	var calls, failures atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				s, err := Call[string](ctx, h, 0)
				calls.Add(1)
				if err != nil || s != "ok" {
					if failures.Add(1) <= 3 {
						t.Errorf("call during reloads: %q, %v", s, err)
					}
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		if err := h.Reload(); err != nil {
			t.Errorf("reload %d: %v", i, err)
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed during 200 reloads", n, calls.Load())
	}
	t.Logf("%d calls during 200 reloads", calls.Load())
}
