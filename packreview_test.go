//go:build cgo

package fidius

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writePackTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A package's name, version and extension name the archive: a manifest
// must not steer the archive out of the directory it is packed into.
func TestPackNameStaysInOutputDir(t *testing.T) {
	for _, hdr := range []string{
		"name = \"x\"\nversion = \"1\"\nextension = \"fid/../../escaped\"\n",
		"name = \"../escaped\"\nversion = \"1\"\n",
		"name = \"x\"\nversion = \"1/../../escaped\"\n",
	} {
		dir := writePackTree(t, map[string]string{
			"package.toml": "[package]\n" + hdr + "interface = \"T\"\ninterface_version = 1\nruntime = \"python\"\n\n[metadata]\n\n[python]\nentry_module = \"packed\"\n",
			"packed.py":    "__interface_hash__ = 1\n",
		})
		parent := t.TempDir()
		out := filepath.Join(parent, "dist", "inner")
		os.MkdirAll(out, 0o755)
		archive, err := PackPackage(dir, out)
		if err == nil {
			t.Errorf("%s: packed to %s", hdr, archive)
		} else {
			wantErr(t, err, ErrManifest, "may not hold a path separator")
		}
		left, _ := filepath.Glob(filepath.Join(parent, "*", "*"))
		if len(left) != 1 {
			t.Errorf("%s: files next to the output directory: %v", hdr, left)
		}
	}
}

// A file whose name is not ASCII packs.
func TestPackNonASCIIName(t *testing.T) {
	dir := writePackTree(t, map[string]string{
		"package.toml":        "[package]\nname = \"x\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\nruntime = \"python\"\n\n[metadata]\n\n[python]\nentry_module = \"packed\"\n",
		"packed.py":           "__interface_hash__ = 1\n",
		"data/café/menu.json": "{}\n",
	})
	archive, err := PackPackage(dir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnpackPackage(archive, t.TempDir(), UnpackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(got, "data", "café", "menu.json")); err != nil {
		t.Error(err)
	}
}

// A file of 8 GiB or more needs a PAX header: packing it must get as far
// as reading it (here, until the context ends).
func TestPackHugeFile(t *testing.T) {
	dir := writePackTree(t, map[string]string{
		"package.toml": "[package]\nname = \"x\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\nruntime = \"python\"\n\n[metadata]\n\n[python]\nentry_module = \"packed\"\n",
		"packed.py":    "__interface_hash__ = 1\n",
	})
	f, err := os.Create(filepath.Join(dir, "aaa-weights.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8<<30 + 1); err != nil { // sparse
		t.Skip(err)
	}
	f.Close()
	c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = PackPackageContext(c, dir, t.TempDir())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("packing an 8 GiB file: %v; want it packing until the deadline", err)
	}
}
