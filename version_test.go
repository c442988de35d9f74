//go:build cgo

package fidius

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const whereSource = `
import sys

def where():
    return {"version": sys.version.split()[0], "executable": sys.executable, "base_prefix": sys.base_prefix}

def imported(name):
    return __import__(name).VALUE
`

func wherePlugin(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, whereSource, MethodDesc{Name: "where"}, MethodDesc{Name: "imported"})
	return mustLoad(t, dir, d)
}

func TestPythonVersionIsTheRunningOne(t *testing.T) {
	v := PythonVersion()
	if !regexp.MustCompile(`^3\.1[0-9]\.\d+`).MatchString(v) {
		t.Fatalf("PythonVersion() = %q", v)
	}
	got, err := Call[map[string]string](ctx, wherePlugin(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got["version"] != v {
		t.Fatalf("sys.version %q, PythonVersion() %q", got["version"], v)
	}
	// sys.executable is this installation's python, or empty; never a
	// python3 that PATH happens to find first.
	exe := got["executable"]
	if exe != "" {
		want := filepath.Join(got["base_prefix"], "bin", "python"+pythonMinor())
		if exe != want && exe != filepath.Join(got["base_prefix"], "bin", "python3") {
			t.Fatalf("sys.executable %q, want %s", exe, want)
		}
	}
}

// fakeVenv makes the layout of python -m venv for version, with a module
// in site-packages and another reached through a .pth file.
func fakeVenv(t *testing.T, version, mod string) string {
	t.Helper()
	dir := t.TempDir()
	site := filepath.Join(dir, "lib", "python"+pythonMinor(), "site-packages")
	extra := filepath.Join(dir, "extra")
	for name, content := range map[string]string{
		"pyvenv.cfg":                   "home = /usr/bin\ninclude-system-site-packages = false\nversion = " + version + "\n",
		"bin/python":                   "#!/bin/sh\n",
		filepath.Join(site, mod+".py"): "VALUE = 'from site-packages'\n",
		filepath.Join(site, "x.pth"):   extra + "\n",
		"extra/" + mod + "_pth.py":     "VALUE = 'through a .pth file'\n",
	} {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, name)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestUseVirtualEnv(t *testing.T) {
	sharedOnly(t, "it loads the plugin first; isolated plugins see environments added before they load (TestIsolatedVirtualEnv)")
	if !inChild(t) { // it changes sys.path and sys.executable for the process
		wantChildPass(t, runChild(t, 60*time.Second))
		return
	}
	h := wherePlugin(t)
	mod := moduleName(t) + "_venv"
	venv := fakeVenv(t, PythonVersion(), mod)
	if err := UseVirtualEnv(venv); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{mod: "from site-packages", mod + "_pth": "through a .pth file"} {
		if got, err := Call[string](ctx, h, 1, name); err != nil || got != want {
			t.Fatalf("import %s: %q, %v", name, got, err)
		}
	}
	got, err := Call[map[string]string](ctx, h, 0)
	if err != nil || got["executable"] != filepath.Join(venv, "bin", "python") {
		t.Fatalf("sys.executable after UseVirtualEnv: %q, %v", got["executable"], err)
	}

	err = UseVirtualEnv(fakeVenv(t, "2.7.18", mod+"_old"))
	wantErr(t, err, ErrVirtualEnv, "is for Python 2.7.18", "this program runs Python "+PythonVersion())
	err = UseVirtualEnv(filepath.Join(t.TempDir(), "missing"))
	if !errors.Is(err, ErrVirtualEnv) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a missing directory: %v", err)
	}
	err = UseVirtualEnv(t.TempDir())
	wantErr(t, err, ErrVirtualEnv, "pyvenv.cfg")
	if !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("no pyvenv.cfg: %v", err)
	}
}
