//go:build cgo

package fidius

import (
	"archive/tar"
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	dsbzip2 "github.com/dsnet/compress/bzip2"
)

// readArchive lists an archive's entries: name -> header, and the names in order.
func readArchive(t *testing.T, path string) (map[string]*tar.Header, []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(bzip2.NewReader(f))
	hdrs := map[string]*tar.Header{}
	var order []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, order
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name] = h
		order = append(order, h.Name)
	}
}

func TestPackPackage(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"package.toml":         "[package]\nname = \"py-packed\"\nversion = \"1.2.0\"\ninterface = \"T\"\ninterface_version = 1\nruntime = \"python\"\n\n[metadata]\n\n[python]\nentry_module = \"packed\"\n",
		"packed.py":            "__interface_hash__ = 1\n",
		"vendor/lib/helper.py": "x = 1\n",
		"target/debug/junk":    "build output",
		".git/HEAD":            "ref: refs/heads/main\n",
		"sub/target/also-junk": "nested target",
		"tools/run.sh":         "#!/bin/sh\n",
		"a-very-long-directory-name-to-need-more-than-one-hundred-bytes/and-a-long-file-name-as-well-for-good-measure.py": "y = 2\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "tools", "run.sh"), 0o755)
	_, priv, _ := ed25519.GenerateKey(nil)
	if err := SignPackage(dir, priv); err != nil {
		t.Fatal(err)
	}

	outDir := t.TempDir()
	archive, err := PackPackage(dir, outDir)
	if err != nil {
		t.Fatal(err)
	}
	if archive != filepath.Join(outDir, "py-packed-1.2.0.fid") {
		t.Errorf("archive written to %s", archive)
	}
	hdrs, order := readArchive(t, archive)
	want := []string{
		"py-packed-1.2.0/a-very-long-directory-name-to-need-more-than-one-hundred-bytes/and-a-long-file-name-as-well-for-good-measure.py",
		"py-packed-1.2.0/package.sig",
		"py-packed-1.2.0/package.toml",
		"py-packed-1.2.0/packed.py",
		"py-packed-1.2.0/tools/run.sh",
		"py-packed-1.2.0/vendor/lib/helper.py",
	}
	if !slices.Equal(order, want) {
		t.Errorf("entries:\n%q\nwant\n%q", order, want)
	}
	for name, h := range hdrs {
		if !h.ModTime.Equal(time.Unix(0, 0)) || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Typeflag != tar.TypeReg {
			t.Errorf("%s: mtime %v, owner %d/%d %q, type %c", name, h.ModTime, h.Uid, h.Gid, h.Uname, h.Typeflag)
		}
	}
	if hdrs["py-packed-1.2.0/tools/run.sh"].Mode != 0o755 || hdrs["py-packed-1.2.0/packed.py"].Mode != 0o644 {
		t.Errorf("modes %o %o", hdrs["py-packed-1.2.0/tools/run.sh"].Mode, hdrs["py-packed-1.2.0/packed.py"].Mode)
	}

	// Reproducible: the same files pack to the same bytes, later too.
	os.Chtimes(filepath.Join(dir, "packed.py"), time.Now(), time.Now().Add(time.Hour))
	again, err := PackPackage(dir, filepath.Join(t.TempDir(), "again.fid"))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(archive)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("packing the same directory twice gave different bytes")
	}

	// Unpacked, the package is the signed one.
	unpacked, err := UnpackPackage(archive, t.TempDir(), UnpackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := PackageDigest(dir)
	d2, _ := PackageDigest(unpacked)
	if d1 != d2 {
		t.Error("the unpacked package's digest differs from the packed directory's")
	}

	// Broken input packs nothing.
	if _, err := PackPackage(t.TempDir(), outDir); !errors.Is(err, ErrManifest) {
		t.Errorf("packing a directory without package.toml: %v", err)
	}
	os.Symlink(t.TempDir(), filepath.Join(dir, "linked-dir"))
	if _, err := PackPackage(dir, filepath.Join(outDir, "x.fid")); !errors.Is(err, ErrArchive) {
		t.Errorf("packing a symlink to a directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outDir, "x.fid")); err == nil {
		t.Error("a failed pack left an archive")
	}
}

func TestUnpackSkipsPaxGlobalHeader(t *testing.T) {
	// git archive writes a pax global header (the commit id) first.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "0123abcd"}})
	body := "[package]\nname = \"g\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\n\n[metadata]\n"
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "g-1/package.toml", Size: int64(len(body)), Mode: 0o644})
	tw.Write([]byte(body))
	tw.Close()
	archive := filepath.Join(t.TempDir(), "g.fid")
	writeBzip2(t, archive, buf.Bytes())
	dir, err := UnpackPackage(archive, t.TempDir(), UnpackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := LoadManifest(dir); err != nil || m.Package.Name != "g" {
		t.Fatalf("%v %v", m, err)
	}
}

func TestWasmManifests(t *testing.T) {
	base := "[package]\nname = \"w\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\nruntime = %q\n\n[metadata]\n"
	for _, c := range []struct {
		runtime, extra, err string
	}{
		{"wasm", "\n[wasm]\ncomponent = \"plugin.wasm\"\ncapabilities = [\"clocks\"]\n", ""},
		{"wasm", "", `runtime = "wasm" requires a [wasm] section with component`},
		{"python", "\n[python]\nentry_module = \"m\"\n\n[wasm]\ncomponent = \"p.wasm\"\n", `[wasm] section is only valid with runtime = "wasm"`},
		{"rust", "\n[wasm]\ncomponent = \"p.wasm\"\n", `[wasm] section is only valid with runtime = "wasm"`},
		{"wasm", "\n[python]\nentry_module = \"m\"\n\n[wasm]\ncomponent = \"p.wasm\"\n", `[python] section is only valid with runtime = "python"`},
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "package.toml"), []byte(fmt.Sprintf(base, c.runtime)+c.extra), 0o644)
		m, err := LoadManifest(dir)
		if c.err == "" {
			if err != nil || m.Wasm == nil || m.Wasm.Component != "plugin.wasm" || m.Package.RuntimeName() != RuntimeWasm {
				t.Errorf("wasm manifest: %+v, %v", m, err)
			}
			continue
		}
		wantErr(t, err, ErrManifest, c.err)
	}
}

func writeBzip2(t *testing.T, path string, data []byte) {
	t.Helper()
	var buf bytes.Buffer
	w, err := dsbzip2.NewWriter(&buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// PackPackageContext: an ended context packs nothing and leaves no archive.
func TestPackPackageContext(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "x.fid")
	if _, err := PackPackageContext(done, "testdata/greeter", out); !errors.Is(err, context.Canceled) {
		t.Fatalf("packing under an ended context: %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("an interrupted pack left an archive")
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Errorf("an interrupted pack left %d files behind", len(entries))
	}
}
