//go:build cgo

package fidius

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dsnet/compress/bzip2"
)

type tarEntry struct {
	name, body, link string
	kind             byte
	size             int64 // declared size when body is empty and size > 0
}

// writeArchive builds a .fid archive (tar in bzip2) from entries, hostile
// ones included, and returns its path.
func writeArchive(t *testing.T, entries []tarEntry) string {
	t.Helper()
	var buf bytes.Buffer
	bz, err := bzip2.NewWriter(&buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(bz)
	complete := true
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: e.kind, Linkname: e.link}
		if e.kind == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if e.kind == tar.TypeDir || e.kind == tar.TypeSymlink || e.kind == tar.TypeLink {
			hdr.Size = 0
		}
		if e.size > 0 {
			hdr.Size = e.size // a header that promises more than follows
			complete = false
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	if complete {
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := bz.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pkg.fid")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func packageEntries(t *testing.T, top string) []tarEntry {
	mod := moduleName(t)
	return []tarEntry{
		{name: top + "/", kind: tar.TypeDir},
		{name: top + "/package.toml", body: pythonManifest(mod)},
		{name: top + "/" + mod + ".py", body: "__interface_hash__ = 1\ndef greet(n): return 'Hello from the archive, ' + n\n"},
		{name: top + "/vendor/helper.txt", body: "vendored\n"},
	}
}

func TestUnpackPackage(t *testing.T) {
	archive := writeArchive(t, packageEntries(t, "py-test-0.1.0"))
	dest := t.TempDir()
	dir, err := UnpackPackage(archive, dest, UnpackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dir != filepath.Join(dest, "py-test-0.1.0") {
		t.Fatalf("package directory %q", dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "vendor", "helper.txt")); err != nil || string(b) != "vendored\n" {
		t.Fatalf("vendor file: %q, %v", b, err)
	}
	h := mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}}})
	if got, err := Call[string](ctx, h, 0, "Go"); err != nil || got != "Hello from the archive, Go" {
		t.Fatalf("%q, %v", got, err)
	}
	// Unpacking again replaces the directory; no staging is left behind.
	if _, err := UnpackPackage(archive, dest, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dest); len(entries) != 1 {
		t.Fatalf("dest holds %d entries", len(entries))
	}
}

func TestUnpackRejectsHostileArchives(t *testing.T) {
	base := func() []tarEntry { return packageEntries(t, "pkg") }
	cases := []struct {
		name    string
		entries []tarEntry
		opts    UnpackOptions
		kind    error
		names   string
	}{
		{"dotdot", append(base(), tarEntry{name: "pkg/../../escape.py", body: "x"}), UnpackOptions{}, ErrArchivePathTraversal, "pkg/../../escape.py"},
		{"dotdot_only", append(base(), tarEntry{name: "..", kind: tar.TypeDir}), UnpackOptions{}, ErrArchivePathTraversal, `".."`},
		{"absolute", append(base(), tarEntry{name: "/etc/evil", body: "x"}), UnpackOptions{}, ErrArchiveAbsolutePath, "/etc/evil"},
		{"symlink", append(base(), tarEntry{name: "pkg/link", kind: tar.TypeSymlink, link: "/etc/passwd"}), UnpackOptions{}, ErrArchiveSymlink, "pkg/link"},
		{"hardlink", append(base(), tarEntry{name: "pkg/hard", kind: tar.TypeLink, link: "pkg/package.toml"}), UnpackOptions{}, ErrArchiveHardlink, "pkg/hard"},
		{"size", append(base(), tarEntry{name: "pkg/big.bin", body: strings.Repeat("ab", 600)}), UnpackOptions{MaxSize: 1000, MaxRatio: 1000}, ErrArchiveTooLarge, "limit 1000"},
		{"default_size", append(base(), tarEntry{name: "pkg/huge.bin", size: 600 << 20}), UnpackOptions{}, ErrArchiveTooLarge, "limit 524288000"},
		{"ratio", append(base(), tarEntry{name: "pkg/zeros.bin", body: strings.Repeat("\x00", 1<<20)}), UnpackOptions{}, ErrArchiveRatio, "10 times"},
		{"entries", append(base(), tarEntry{name: "pkg/a"}, tarEntry{name: "pkg/b"}), UnpackOptions{MaxEntries: 5}, ErrArchiveTooManyEntries, "more than 5 entries"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			archive := writeArchive(t, c.entries)
			dest := t.TempDir()
			_, err := UnpackPackage(archive, dest, c.opts)
			wantErr(t, err, c.kind, c.names, archive)
			wantErr(t, err, ErrArchive)
			if entries, _ := os.ReadDir(dest); len(entries) != 0 {
				t.Fatalf("a refused archive left %d entries in dest", len(entries))
			}
		})
	}
}

func TestUnpackDefaultsAndBrokenArchives(t *testing.T) {
	if o := (UnpackOptions{}).withDefaults(); o.MaxSize != 500<<20 || o.MaxRatio != 10 || o.MaxEntries != 10000 {
		t.Fatalf("defaults %+v", o)
	}
	many := []tarEntry{{name: "pkg/package.toml", body: pythonManifest("x")}}
	for i := 0; i < 10000; i++ {
		many = append(many, tarEntry{name: "pkg/f/" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + strconv.Itoa(i)})
	}
	_, err := UnpackPackage(writeArchive(t, many), t.TempDir(), UnpackOptions{MaxRatio: 1 << 20})
	wantErr(t, err, ErrArchiveTooManyEntries, "more than 10000 entries")

	notBzip := filepath.Join(t.TempDir(), "plain.fid")
	os.WriteFile(notBzip, []byte("just text"), 0o644)
	_, err = UnpackPackage(notBzip, t.TempDir(), UnpackOptions{})
	wantErr(t, err, ErrArchive, "plain.fid")

	noManifest := writeArchive(t, []tarEntry{{name: "pkg/readme.txt", body: "hi"}})
	_, err = UnpackPackage(noManifest, t.TempDir(), UnpackOptions{})
	wantErr(t, err, ErrArchive, "package.toml")

	_, err = UnpackPackage(filepath.Join(t.TempDir(), "missing.fid"), t.TempDir(), UnpackOptions{})
	wantErr(t, err, ErrArchive, "missing.fid")
}

func TestArchiveErrorsAreDistinct(t *testing.T) {
	kinds := []error{ErrArchivePathTraversal, ErrArchiveAbsolutePath, ErrArchiveSymlink, ErrArchiveHardlink,
		ErrArchiveTooLarge, ErrArchiveRatio, ErrArchiveTooManyEntries}
	for i, a := range kinds {
		for j, b := range kinds {
			if i != j && errors.Is(a, b) {
				t.Fatalf("%v matches %v", a, b)
			}
		}
	}
}

func TestUnpackPackageContext(t *testing.T) {
	// 64 MiB of zeros: a small archive that takes a while to unpack.
	entries := packageEntries(t, "py-big-0.1.0")
	entries = append(entries, tarEntry{name: "py-big-0.1.0/zeros.bin", body: strings.Repeat("\x00", 64<<20)})
	archive := writeArchive(t, entries)
	opts := UnpackOptions{MaxSize: 1 << 30, MaxRatio: 1 << 20}

	done, cancel := context.WithCancel(ctx)
	cancel()
	dest := t.TempDir()
	if _, err := UnpackPackageContext(done, archive, dest, opts); !errors.Is(err, context.Canceled) {
		t.Fatalf("unpacking under a cancelled context: %v", err)
	}

	short, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := UnpackPackageContext(short, archive, dest, opts)
	wantErr(t, err, context.DeadlineExceeded, "unpacking "+archive)
	t.Logf("stopped %v after the deadline", time.Since(start)-5*time.Millisecond)
	if entries, _ := os.ReadDir(dest); len(entries) != 0 {
		t.Errorf("an interrupted unpack left %d entries in dest", len(entries))
	}

	start = time.Now()
	if _, err := UnpackPackageContext(ctx, archive, dest, opts); err != nil {
		t.Fatal(err)
	}
	t.Logf("unpacking it whole took %v", time.Since(start))
}
