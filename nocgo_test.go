//go:build !cgo

package fidius

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Without cgo, the package tools work and what needs Python says so.
func TestWithoutCgo(t *testing.T) {
	m, err := LoadManifest("testdata/greeter")
	if err != nil {
		t.Fatal(err)
	}
	if m.Python == nil || m.Python.EntryModule == "" {
		t.Fatalf("manifest without its [python] section: %+v", m)
	}

	// Sign a copy, verify it, change it, and see the signature fail.
	dir := t.TempDir()
	for _, name := range []string{"package.toml", m.Python.EntryModule + ".py"} {
		b, err := os.ReadFile(filepath.Join("testdata/greeter", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := SignPackage(dir, priv); err != nil {
		t.Fatal(err)
	}
	if err := VerifyPackage(dir, []ed25519.PublicKey{pub}); err != nil {
		t.Fatalf("verifying what was just signed: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "extra.py"), []byte("x = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := VerifyPackage(dir, []ed25519.PublicKey{pub}); !errors.Is(err, ErrSignatureInvalid) {
		t.Fatalf("verifying a changed package: %v", err)
	}

	host := &Host{SearchPaths: []string{"testdata"}}
	found, err := host.Find(m.Package.Name)
	if err != nil || found.Manifest.Package.Name != m.Package.Name {
		t.Fatalf("Find(%q): %+v, %v", m.Package.Name, found, err)
	}

	desc := &InterfaceDescriptor{InterfaceName: "T", Methods: []MethodDesc{{Name: "greet"}}}
	for what, err := range map[string]error{
		"LoadPythonPlugin": func() error { _, err := LoadPythonPlugin("testdata/greeter", desc); return err }(),
		"LoadPythonPluginContext": func() error {
			_, err := LoadPythonPluginContext(context.Background(), "testdata/greeter", desc)
			return err
		}(),
		"InspectPythonPackage": func() error { _, err := InspectPythonPackage("testdata/greeter"); return err }(),
		"Host.Load":            func() error { _, err := host.Load(m.Package.Name, desc); return err }(),
		"UseVirtualEnv":        UseVirtualEnv(dir),
	} {
		if !errors.Is(err, ErrCgoRequired) {
			t.Errorf("%s: %v, want ErrCgoRequired", what, err)
		}
	}
	if PythonVersion() != "" {
		t.Errorf("PythonVersion() = %q without cgo", PythonVersion())
	}
}
