//go:build cgo

package fidius

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadUnderContext runs in a child process: a load the context fails
// to stop would spin for ever and hold the import turn of the whole test
// binary.
func TestLoadUnderContext(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 2*time.Minute))
		return
	}
	// within fails the test unless call returns ctx's deadline error in
	// well under a second after the deadline.
	within := func(t *testing.T, d time.Duration, call func(context.Context) error) error {
		t.Helper()
		dctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		start := time.Now()
		err := guarded(t, func() error { return call(dctx) })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("under a %v deadline: %v, want context.DeadlineExceeded", d, err)
		}
		if took := time.Since(start); took > d+time.Second {
			t.Errorf("returned %v after a %v deadline", took-d, d)
		}
		return err
	}

	t.Run("top-level loop, then the fixed package loads afresh", func(t *testing.T) {
		mod := moduleName(t)
		dir := writePackage(t, mod, map[string]string{
			mod + ".py":        "import " + mod + "_helper\n__interface_hash__ = 1\nwhile True:\n    pass\n",
			mod + "_helper.py": "VALUE = 1\n",
		})
		d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "value"}}}
		err := within(t, 300*time.Millisecond, func(c context.Context) error {
			_, err := LoadPythonPluginContext(c, dir, d)
			return err
		})
		wantErr(t, err, context.DeadlineExceeded, "loading package "+dir)

		// The helper was imported before the loop: it must be gone from
		// sys.modules, or the fixed package would see VALUE = 1.
		writeFile(t, filepath.Join(dir, mod+".py"), "import "+mod+"_helper\n__interface_hash__ = 1\ndef value():\n    return "+mod+"_helper.VALUE\n")
		writeFile(t, filepath.Join(dir, mod+"_helper.py"), "VALUE = 2\n")
		h, err := LoadPythonPluginContext(ctx, dir, d)
		if err != nil {
			t.Fatalf("loading the fixed package: %v", err)
		}
		defer h.Close()
		if got := callNamed[int](t, h, "value"); got != 2 {
			t.Errorf("value() = %d after the fix, want 2 (a stale helper module survived)", got)
		}
	})

	t.Run("__fidius_configure__ that loops", func(t *testing.T) {
		dir, d := simplePlugin(t, "def __fidius_configure__(cfg):\n    while True:\n        pass\n", MethodDesc{Name: "value"})
		within(t, 300*time.Millisecond, func(c context.Context) error {
			_, err := LoadPythonPluginConfiguredContext(c, dir, d, map[string]int{"n": 1})
			return err
		})
	})

	t.Run("inspect", func(t *testing.T) {
		dir, _ := simplePlugin(t, "while True:\n    pass\n")
		err := within(t, 300*time.Millisecond, func(c context.Context) error {
			_, err := InspectPythonPackageContext(c, dir)
			return err
		})
		wantErr(t, err, context.DeadlineExceeded, "inspecting package "+dir)
	})

	t.Run("reload keeps the old code", func(t *testing.T) {
		dir, d := simplePlugin(t, "def value():\n    return 1\n", MethodDesc{Name: "value"})
		h := mustLoad(t, dir, d)
		src := filepath.Join(dir, moduleName(t)+".py")
		writeFile(t, src, "__interface_hash__ = 0x1234\nwhile True:\n    pass\n")
		err := within(t, 300*time.Millisecond, h.ReloadContext)
		wantErr(t, err, context.DeadlineExceeded, "reloading package "+dir)
		if got := callNamed[int](t, h, "value"); got != 1 {
			t.Errorf("value() = %d after an interrupted reload, want the old code's 1", got)
		}
		writeFile(t, src, "__interface_hash__ = 0x1234\ndef value():\n    return 3\n")
		if err := h.ReloadContext(ctx); err != nil {
			t.Fatal(err)
		}
		if got := callNamed[int](t, h, "value"); got != 3 {
			t.Errorf("value() = %d after a good reload, want 3", got)
		}
	})

	t.Run("a load sleeping in C returns at its deadline; the next load waits its turn", func(t *testing.T) {
		sleepy, d := simplePlugin(t, "import time\ntime.sleep(1.5)\ndef value():\n    return 1\n", MethodDesc{Name: "value"})
		within(t, 100*time.Millisecond, func(c context.Context) error {
			_, err := LoadPythonPluginContext(c, sleepy, d)
			return err
		})
		// The sleeping import still has the turn: a load with a short
		// deadline gives up waiting; one without waits and succeeds.
		good, gd := simplePlugin(t, "import sys\ndef value():\n    return 7\ndef loaded(name):\n    return name in sys.modules\n",
			MethodDesc{Name: "value"}, MethodDesc{Name: "loaded"})
		within(t, 100*time.Millisecond, func(c context.Context) error {
			_, err := LoadPythonPluginContext(c, good, gd)
			return err
		})
		h := mustLoad(t, good, gd)
		if got := callNamed[int](t, h, "value"); got != 7 {
			t.Errorf("value() = %d, want 7", got)
		}
		// The sleeper finished after its caller left, before the good load
		// had its turn: its module was removed again.
		if callNamed[bool](t, h, "loaded", moduleName(t)) {
			t.Errorf("module %s of the abandoned load is still in sys.modules", moduleName(t))
		}
	})

	t.Run("an ended context imports nothing", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "imported")
		dir, d := simplePlugin(t, "open("+pyQuote(marker)+", 'w').close()\n", MethodDesc{Name: "value"})
		done, cancel := context.WithCancel(ctx)
		cancel()
		_, err := LoadPythonPluginContext(done, dir, d)
		wantErr(t, err, context.Canceled)
		if _, err := os.Stat(marker); err == nil {
			t.Error("the entry module ran under a cancelled context")
		}
	})
}

// A ReloadContext whose ctx ends while it waits for the GIL (another call
// holds it inside a long C function) runs nothing; it must not touch the
// handle's modules either.
func TestReloadAbandonedBeforeItStarts(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 2*time.Minute))
		return
	}
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{
		mod + ".py": "import sys, " + mod + "_helper\n__interface_hash__ = 1\n" +
			"def hog(n):\n    return sum(range(n))\n" +
			"def loaded(name):\n    return name in sys.modules\n",
		mod + "_helper.py": "VALUE = 1\n",
	})
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "hog"}, {Name: "loaded"}}}
	h := mustLoad(t, dir, d)

	hogged := make(chan error, 1)
	go func() { _, err := h.CallJSON(ctx, 0, []byte("[200000000]")); hogged <- err }()
	time.Sleep(200 * time.Millisecond) // the hog holds the GIL in sum()
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err := guarded(t, func() error { return h.ReloadContext(dctx) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReloadContext: %v, want DeadlineExceeded", err)
	}
	if err := <-hogged; err != nil {
		t.Fatal(err)
	}
	// Wait for the abandoned reload to finish: the next load takes the turn after it.
	other := writePackage(t, mod+"_other", map[string]string{mod + "_other.py": "__interface_hash__ = 1\n"})
	mustLoad(t, other, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1})
	for _, m := range []string{mod, mod + "_helper"} {
		if !callNamed[bool](t, h, "loaded", m) {
			t.Errorf("module %s is gone from sys.modules after a reload that never started", m)
		}
	}
}

// pyQuote spells s as a Python string literal.
func pyQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// Loads and inspections that give up waiting for the import turn (or for
// a thread) free the slot they made.
func TestLoadWaitersFreeTheirSlots(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 2*time.Minute))
		return
	}
	sleepy, sd := simplePlugin(t, "import time\ntime.sleep(600)\n", MethodDesc{Name: "value"})
	dir, d := simplePlugin(t, "def value():\n    return 1\n", MethodDesc{Name: "value"})
	go LoadPythonPluginContext(ctx, sleepy, sd) // holds the turn, sleeping in C
	time.Sleep(200 * time.Millisecond)
	before := liveSlots.Load()
	for i := 0; i < 200; i++ {
		c, cancel := context.WithTimeout(ctx, time.Millisecond)
		_, err := LoadPythonPluginContext(c, dir, d)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("load %d: %v", i, err)
		}
		cancel()
		c, cancel = context.WithTimeout(ctx, time.Millisecond)
		_, err = InspectPythonPackageContext(c, dir)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("inspect %d: %v", i, err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); liveSlots.Load() != before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots of loads that gave up are never freed", liveSlots.Load()-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
