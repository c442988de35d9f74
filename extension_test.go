//go:build cgo

package fidius

import (
	"strings"
	"testing"
)

const extensionSource = `
def load(name):
    import importlib
    try:
        mod = importlib.import_module(name)
    except ImportError as e:
        return "missing: " + str(e)
    return "loaded from " + str(getattr(mod, "__file__", "the executable"))

def numpy_sum():
    import numpy
    return int(numpy.arange(5).sum())
`

func TestExtensionModulesLoad(t *testing.T) {
	sharedOnly(t, "an isolated interpreter refuses _ctypes and _decimal on 3.12 (TestIsolatedRefusesExtensionModules)")
	// Extension modules are shared objects that find the C API in the
	// process: in a static build the executable must export it.
	dir, d := simplePlugin(t, extensionSource, MethodDesc{Name: "load"}, MethodDesc{Name: "numpy_sum"})
	h := mustLoad(t, dir, d)
	for _, name := range []string{"_ctypes", "_decimal", "_sqlite3", "_ssl"} {
		got, err := Call[string](ctx, h, 0, name)
		if err != nil || !strings.HasPrefix(got, "loaded from ") {
			t.Errorf("import %s: %q, %v", name, got, err)
		}
	}
	got, err := Call[string](ctx, h, 0, "numpy")
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(got, "missing: ") {
		t.Skipf("numpy is not installed for Python %s (Debian: apt-get install python3-numpy): %s", PythonVersion(), got)
	}
	if n, err := Call[int](ctx, h, 1); err != nil || n != 10 {
		t.Fatalf("numpy.arange(5).sum(): %d, %v", n, err)
	}
}
