//go:build cgo

package fidius

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestUnencodableTextInLoadErrors loads packages whose error messages need
// strings with no UTF-8 form (lone surrogates). The messages keep them as
// backslash escapes, and no exception outlives the failed load: the next
// call on the same thread works.
func TestUnencodableTextInLoadErrors(t *testing.T) {
	runtime.LockOSThread() // the load and the calls after it share a thread
	defer runtime.UnlockOSThread()
	g := greeter(t)
	alive := func(after string) {
		t.Helper()
		if s, err := Call[string](ctx, g, idx(t, g, "greet"), "again"); err != nil || s != "Hello, again!" {
			t.Fatalf("the next call on this thread after %s: %q, %v", after, s, err)
		}
	}
	// A class whose __name__ (read through its metaclass) is any object.
	const oddName = "class Meta(type):\n    name = 'odd\\udcff'\n    @property\n    def __name__(cls): return cls.name\n" +
		"class Odd(metaclass=Meta): pass\n"
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}}}
	cases := []struct {
		name, src string
		kind      error
		fragment  string
	}{
		{"foreign_file", `__file__ = '/elsewhere/\udcff.py'`, ErrModuleConflict, `is /elsewhere/\udcff.py, loaded from outside the package`},
		{"hash_type_name", oddName + "__interface_hash__ = Odd()", ErrImportFailed, `it is a odd\udcff`},
		{"hash_type_name_not_str", oddName + "Odd.name = 42\n__interface_hash__ = Odd()", ErrImportFailed, `it is a 42`},
		{"hash_repr", "class Big(int):\n    def __repr__(self): return '\\udcff'\n__interface_hash__ = Big(2**64)", ErrImportFailed, `not an unsigned 64-bit integer: \udcff`},
		{"method_type_name", oddName + "greet = Odd()", ErrMethodNotRegistered, `is not callable (it is a odd\udcff)`},
	}
	for _, c := range cases {
		mod := moduleName(t) + "_" + c.name
		dir := writePackage(t, mod, map[string]string{mod + ".py": "__interface_hash__ = 1\n" + c.src + "\n"})
		_, err := LoadPythonPlugin(dir, d)
		wantErr(t, err, c.kind, c.fragment)
		alive(c.name)
	}

	mod := moduleName(t) + "_inspect"
	dir := writePackage(t, mod, map[string]string{mod + ".py": "import fidius\n__interface_hash__ = 1\n" +
		"def f(): pass\nf.__name__ = 'odd\\udcff'\nfidius.method(f)\n"})
	r, err := InspectPythonPackage(dir)
	if err != nil || len(r.Methods) != 1 || r.Methods[0] != `odd\udcff` {
		t.Fatalf("InspectPythonPackage: %+v, %v", r, err)
	}
	alive("inspecting")
}

func TestUnencodableTextInCallErrors(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	dir, d := simplePlugin(t, `
class Bad:
    def __str__(self):
        raise ValueError('no str for \udcff')

def bad():
    return [Bad()]

def ok():
    return 'ok'
`, MethodDesc{Name: "bad"}, MethodDesc{Name: "ok"})
	h := mustLoad(t, dir, d)
	_, err := h.CallJSON(ctx, 0, nil)
	wantErr(t, err, ErrOutputEncode, `return value cannot be encoded as JSON: ValueError: no str for \udcff`)
	if s, err := Call[string](ctx, h, 1); err != nil || s != "ok" {
		t.Fatalf("the next call on this thread: %q, %v", s, err)
	}
}

// TestPackageDirectoryNotUTF8 loads a package from a directory whose name
// is not valid UTF-8: Python names such paths with surrogate escapes.
func TestPackageDirectoryNotUTF8(t *testing.T) {
	writeBytecode(t)
	mod := moduleName(t)
	dir := filepath.Join(t.TempDir(), "pkg\xff\xfe")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("this file system refuses the name: %v", err)
	}
	writeFile(t, filepath.Join(dir, "package.toml"), pythonManifest(mod))
	writeFile(t, filepath.Join(dir, mod+".py"), "import os, sys\n__interface_hash__ = 1\n"+
		"def where(): return [os.fsencode(__file__).hex(), os.fsencode(sys.path[1]).hex()]\n")
	h := mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "where"}}})
	want := [2]string{hex.EncodeToString([]byte(filepath.Join(dir, mod+".py"))), hex.EncodeToString([]byte(dir))}
	if got, err := Call[[2]string](ctx, h, 0); err != nil || got != want {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	writeFile(t, filepath.Join(dir, mod+".py"), "__interface_hash__ = 1\ndef where(): return ['reloaded', '']\n")
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, err := Call[[2]string](ctx, h, 0); err != nil || got[0] != "reloaded" {
		t.Fatalf("after reload: %q, %v", got, err)
	}
	// Loading it again finds its sys.path entries already there.
	before := len(sysPath(t))
	mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "where"}}})
	if after := len(sysPath(t)); after != before {
		t.Fatalf("sys.path grew from %d to %d entries on a second load", before, after)
	}
}

func TestMethodNameWithNUL(t *testing.T) {
	// Python's C API reads attribute names up to the first NUL: "greet\x00x"
	// would resolve to greet. Such names are refused before anything is
	// imported (importing this module fails).
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{mod + ".py": "raise RuntimeError('imported')\n"})
	d := &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}, {Name: "greet\x00x"}}}
	_, err := LoadPythonPlugin(dir, d)
	wantErr(t, err, ErrMethodNotRegistered, `method 1 ("greet\x00x") of interface "T": a method name cannot contain a NUL byte`)
	_, err = LoadPythonPluginConfigured(dir, d, 1)
	wantErr(t, err, ErrMethodNotRegistered, "NUL")
}
