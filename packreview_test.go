//go:build cgo

package fidius

import (
	"os"
	"path/filepath"
	"testing"
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
