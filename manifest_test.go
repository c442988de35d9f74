//go:build cgo

package fidius

import (
	"errors"
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
