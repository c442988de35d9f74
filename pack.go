// This file owns packing: a package directory to a .fid archive laid out
// as fidius's packer lays it out, byte for byte the same each time.

package fidius

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dsnet/compress/bzip2"
)

// packTime is every entry's modification time: a fixed one, so that the
// same directory packs to the same bytes whenever and wherever it is packed.
var packTime = time.Unix(0, 0).UTC()

// PackPackage writes the package in dir as a .fid archive and returns the
// archive's path. The layout is fidius's: one top-level directory
// name-version/ holding every file of the package, package.sig included,
// except those under directories named "target" or ".git" (the files the
// package digest leaves out, less signatures), in a tar stream compressed
// with bzip2 at its best level. Unlike fidius's packer, it writes the same
// bytes for the same files every time: entries sorted by path, a fixed
// modification time, owner 0, mode 0644 (0755 for executables).
//
// out is the archive to write; an existing directory means
// name-version.EXT inside it (EXT is the manifest's extension, "fid" by
// default), and "" the same in the current directory. The archive is
// written whole or not at all. Requirements are not vendored here: run
// pip install --target vendor/ first if the package needs it.
//
// A symbolic link to a file is packed as the file it points to (fidius
// does the same, and archives may not hold links); one to a directory is
// an error, as is a manifest that does not load.
func PackPackage(dir, out string) (string, error) {
	return PackPackageContext(context.Background(), dir, out)
}

// PackPackageContext is PackPackage under ctx: packing stops when ctx ends,
// leaves no archive, and the error matches ctx.Err().
func PackPackageContext(ctx context.Context, dir, out string) (string, error) {
	m, err := LoadManifest(dir)
	if err != nil {
		return "", err
	}
	prefix := m.Package.Name + "-" + m.Package.Version
	// The manifest names the archive and its top directory: a separator
	// (or a NUL) would put the archive outside the directory it is packed
	// into, and make entries no unpacker takes.
	if strings.ContainsAny(prefix+"."+m.Package.FileExtension(), "/\\\x00") {
		return "", fmt.Errorf("%w: packing %s: the package's name, version and extension (%q, %q, %q) name the archive, and may not hold a path separator",
			ErrManifest, dir, m.Package.Name, m.Package.Version, m.Package.FileExtension())
	}
	if out == "" {
		out = "."
	}
	if st, err := os.Stat(out); err == nil && st.IsDir() {
		out = filepath.Join(out, prefix+"."+m.Package.FileExtension())
	}
	outAbs, _ := filepath.Abs(out)
	files, err := packageFiles(dir, true, outAbs)
	if err != nil {
		return "", fmt.Errorf("%w: packing %s: %w", ErrArchive, dir, err)
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), ".pack-*")
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if err := packArchive(ctx, tmp, dir, prefix, files); err != nil {
		tmp.Close()
		if cerr := ctx.Err(); cerr != nil {
			return "", fmt.Errorf("packing %s: %w", dir, cerr)
		}
		return "", fmt.Errorf("%w: packing %s: %w", ErrArchive, dir, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	return out, nil
}

func packArchive(ctx context.Context, w io.Writer, dir, prefix string, files []string) error {
	bz, err := bzip2.NewWriter(w, &bzip2.WriterConfig{Level: bzip2.BestCompression})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(bz)
	for _, rel := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := addFile(ctx, tw, filepath.Join(dir, filepath.FromSlash(rel)), prefix+"/"+rel); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bz.Close()
}

// ustarFits reports whether a plain USTAR header holds an entry: a name of
// at most 100 bytes, all ASCII, and a size below 8 GiB. Others take PAX.
func ustarFits(name string, size int64) bool {
	if len(name) > 100 || size >= 1<<33 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			return false
		}
	}
	return true
}

func addFile(ctx context.Context, tw *tar.Writer, path, name string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	mode := int64(0o644)
	if st.Mode()&0o111 != 0 {
		mode = 0o755
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: st.Size(), Mode: mode, ModTime: packTime, Format: tar.FormatPAX}
	if ustarFits(name, st.Size()) {
		hdr.Format = tar.FormatUSTAR
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, ctxReader{ctx, f})
	if err == nil && n != st.Size() {
		err = errors.New("the file changed size while it was packed")
	}
	return err
}
