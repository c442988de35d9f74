// This file owns .fid archives: a tar stream compressed with bzip2 holding
// one package directory, unpacked with limits that make untrusted archives
// safe to open.

package fidius

import (
	"archive/tar"
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// UnpackOptions limits what UnpackPackage accepts. A zero field takes the
// default, the same as fidius's.
type UnpackOptions struct {
	// MaxSize caps the total uncompressed size of the entries (default
	// 500 MiB).
	MaxSize int64
	// MaxRatio caps the total uncompressed size at this multiple of the
	// archive's size (default 10).
	MaxRatio int64
	// MaxEntries caps the number of entries (default 10,000).
	MaxEntries int
}

func (o UnpackOptions) withDefaults() UnpackOptions {
	if o.MaxSize <= 0 {
		o.MaxSize = 500 << 20
	}
	if o.MaxRatio <= 0 {
		o.MaxRatio = 10
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 10000
	}
	return o
}

// UnpackPackage unpacks the .fid archive at archive into dest and returns
// the package directory it held (the top-level directory with a
// package.toml, typically name-version).
//
// Every entry is checked before it is written: entries with a ".."
// component or an absolute path, symbolic and hard links, and archives
// past the size, ratio or entry limits are refused, each with its own
// error kind naming the entry or the limit. Extraction is staged in a
// directory inside dest, so a refused archive leaves nothing behind; an
// existing package directory of the same name is replaced.
func UnpackPackage(archive, dest string, opts UnpackOptions) (string, error) {
	return UnpackPackageContext(context.Background(), archive, dest, opts)
}

// UnpackPackageContext is UnpackPackage under ctx: a large archive stops
// unpacking when ctx ends, leaves nothing behind, and the error matches
// ctx.Err().
func UnpackPackageContext(ctx context.Context, archive, dest string, opts UnpackOptions) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	opts = opts.withDefaults()
	f, err := os.Open(archive)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	staging, err := os.MkdirTemp(dest, ".unpack-")
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	defer os.RemoveAll(staging)

	if err := extract(ctx, tar.NewReader(bzip2.NewReader(f)), staging, st.Size(), opts); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return "", fmt.Errorf("unpacking %s: %w", archive, cerr)
		}
		return "", fmt.Errorf("%s: %w", archive, err)
	}
	top, err := packageRoot(staging)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrArchive, archive, err)
	}
	final := filepath.Join(dest, filepath.Base(top))
	if err := os.RemoveAll(final); err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	if err := os.Rename(top, final); err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	return final, nil
}

// ctxReader fails its reads once ctx has ended, so that a long copy stops
// when its context does.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

// Read reads from the underlying reader, or fails with ctx's error.
func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// reject wraps a rejection kind so that it also matches ErrArchive.
func reject(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %w: %s", ErrArchive, kind, fmt.Sprintf(format, args...))
}

func extract(ctx context.Context, tr *tar.Reader, dir string, compressed int64, o UnpackOptions) error {
	var total int64
	ratioCap := compressed * o.MaxRatio
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: reading entry %d: %v", ErrArchive, n, err)
		}
		if n > o.MaxEntries {
			return reject(ErrArchiveTooManyEntries, "more than %d entries", o.MaxEntries)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // metadata for the whole archive, as git archive writes: nothing to extract
		}
		name := hdr.Name
		switch hdr.Typeflag {
		case tar.TypeSymlink:
			return reject(ErrArchiveSymlink, "%q -> %q", name, hdr.Linkname)
		case tar.TypeLink:
			return reject(ErrArchiveHardlink, "%q -> %q", name, hdr.Linkname)
		}
		if strings.HasPrefix(name, "/") || filepath.IsAbs(name) || filepath.VolumeName(name) != "" {
			return reject(ErrArchiveAbsolutePath, "%q", name)
		}
		for _, part := range strings.Split(strings.ReplaceAll(name, `\`, "/"), "/") {
			if part == ".." {
				return reject(ErrArchivePathTraversal, "%q", name)
			}
		}
		total += max(hdr.Size, 0)
		if total > o.MaxSize {
			return reject(ErrArchiveTooLarge, "entries reach %d bytes at %q, limit %d", total, name, o.MaxSize)
		}
		if total > ratioCap {
			return reject(ErrArchiveRatio, "entries reach %d bytes at %q, more than %d times the archive's %d bytes",
				total, name, o.MaxRatio, compressed)
		}
		target := filepath.Join(dir, filepath.FromSlash(path.Clean(name)))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return fmt.Errorf("%w: %w", ErrArchive, err)
			}
		case tar.TypeReg:
			if err := writeEntry(ctxReader{ctx, tr}, target, hdr); err != nil {
				return fmt.Errorf("%w: entry %q: %w", ErrArchive, name, err)
			}
		default:
			// Devices, fifos and the like have no place in a package;
			// pax and GNU metadata entries never reach here.
			return fmt.Errorf("%w: entry %q has unsupported type %q", ErrArchive, name, hdr.Typeflag)
		}
	}
}

func writeEntry(r io.Reader, target string, hdr *tar.Header) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	mode := fs.FileMode(0o644)
	if hdr.Mode&0o111 != 0 {
		mode = 0o755
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, r, hdr.Size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// packageRoot finds the top-level directory holding package.toml.
func packageRoot(staging string) (string, error) {
	entries, err := os.ReadDir(staging)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		dir := filepath.Join(staging, e.Name())
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join(dir, "package.toml")); err == nil {
				return dir, nil
			}
		}
	}
	return "", errors.New("no top-level directory with a package.toml")
}
