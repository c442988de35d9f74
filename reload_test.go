package fidius

import (
	"os"
	"path/filepath"
	"strconv"
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
