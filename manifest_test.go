//go:build cgo

package fidius

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadManifest(t *testing.T) {
	m, err := LoadManifest("testdata/greeter")
	if err != nil {
		t.Fatal(err)
	}
	want := PackageHeader{Name: "py-test-greeter", Version: "0.1.0", Interface: "TestGreeter", InterfaceVersion: 1, Runtime: "python"}
	if m.Package != want {
		t.Fatalf("header %+v", m.Package)
	}
	if m.Package.FileExtension() != "fid" || m.Python.EntryModule != "fidius_testdata_greeter" || m.Python.RequirementsFile() != "requirements.txt" {
		t.Fatalf("defaults: %q %+v", m.Package.FileExtension(), m.Python)
	}
}

func TestManifestOptionalFields(t *testing.T) {
	dir := writePackage(t, "", map[string]string{"package.toml": `
[package]
name = "x"
version = "1"
interface = "T"
interface_version = 4294967295
extension = "cloacina"

[metadata]
`})
	m, err := LoadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Package.FileExtension() != "cloacina" || m.Package.RuntimeName() != "rust" || m.Package.InterfaceVersion != 4294967295 || m.Python != nil {
		t.Fatalf("got %+v", m)
	}
}

func TestDecodeMetadata(t *testing.T) {
	m, err := LoadManifest("testdata/greeter")
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Category string `toml:"category"`
		Priority int    `toml:"priority"`
	}
	if err := m.DecodeMetadata(&meta); err != nil {
		t.Fatal(err)
	}
	if meta.Category != "test" || meta.Priority != 3 {
		t.Fatalf("got %+v", meta)
	}
	var wrong struct {
		Category int `toml:"category"`
	}
	err = m.DecodeMetadata(&wrong)
	if !errors.Is(err, ErrManifest) {
		t.Fatalf("mismatch: got %v", err)
	}
	wantErr(t, err, ErrManifest, "[metadata]", "package.toml")
}

func TestManifestErrorBeforeFirstByte(t *testing.T) {
	// Found by FuzzManifest: the parser reports offset -1.
	_, err := parseManifest("package.toml", []byte("\x1c"))
	wantErr(t, err, ErrManifest, "package.toml:1:1:")
}

// A path with nothing there is a manifest error and, so that a caller can
// tell a mistyped path from a broken package, also fs.ErrNotExist; the
// message says which of the two is missing.
func TestManifestNotExist(t *testing.T) {
	missingDir := filepath.Join(t.TempDir(), "no-such-package")
	emptyDir := t.TempDir()
	for _, c := range []struct{ dir, says string }{
		{missingDir, "package directory " + missingDir + " does not exist"},
		{emptyDir, "no package.toml in " + emptyDir},
	} {
		_, err := LoadManifest(c.dir)
		if !errors.Is(err, ErrManifest) || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("LoadManifest(%s) = %v; want ErrManifest and fs.ErrNotExist, saying %q", c.dir, err, c.says)
		}
		var perr *fs.PathError
		if !errors.As(err, &perr) || perr.Path != filepath.Join(c.dir, "package.toml") {
			t.Errorf("LoadManifest(%s): no *fs.PathError for package.toml in %v", c.dir, err)
		}
	}
	// A package.toml that exists but cannot be read is not "not there".
	dirToml := t.TempDir()
	if err := os.Mkdir(filepath.Join(dirToml, "package.toml"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := LoadManifest(dirToml)
	if !errors.Is(err, ErrManifest) || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("package.toml is a directory: %v", err)
	}
}

func TestLoadPythonPluginNotExist(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gone")
	_, err := LoadPythonPlugin(dir, &InterfaceDescriptor{InterfaceName: "X"})
	if !errors.Is(err, ErrManifest) || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("got %v; want ErrManifest and fs.ErrNotExist naming %s", err, dir)
	}
	_, err = InspectPythonPackage(dir)
	if !errors.Is(err, ErrManifest) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("InspectPythonPackage: %v", err)
	}
}

// [metadata] is required, as in fidius, even when the host's schema is
// empty; an empty table is enough (TestManifestOptionalFields).
func TestManifestRequiresMetadata(t *testing.T) {
	dir := writePackage(t, "", map[string]string{"package.toml": `
[package]
name = "x"
version = "1"
interface = "T"
interface_version = 1
`})
	_, err := LoadManifest(dir)
	if !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), filepath.Join(dir, "package.toml")+": missing [metadata] table") {
		t.Fatalf("got %v", err)
	}
}
