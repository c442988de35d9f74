// This file owns discovery: finding packages by name among directories and
// .fid archives in search paths, and loading them.

package fidius

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Host finds plugin packages in its search paths and loads the Python ones.
// A search path is a directory whose entries may be package directories
// (holding a package.toml) and .fid archives. The zero value of every
// field but SearchPaths is ready to use.
type Host struct {
	// SearchPaths are searched in order; the first package of a name wins.
	SearchPaths []string
	// CacheDir is where archives are unpacked, once for each archive
	// content. Empty means the user cache directory's fidius-go/packages.
	CacheDir string
	// Extensions are the archive file extensions besides "fid" (packages
	// may declare their own, such as "cloacina").
	Extensions []string
	// Unpack limits what archives may hold.
	Unpack UnpackOptions
	// TrustedKeys verify package signatures.
	TrustedKeys []ed25519.PublicKey
	// RequireSignature makes Load refuse a package that no trusted key
	// has signed.
	RequireSignature bool
	// Options are passed to LoadPythonPlugin, before Load's own.
	Options []Option
}

// PackageInfo is a package a Host found.
type PackageInfo struct {
	// Dir is the package directory; for an archive, where it was unpacked.
	Dir string
	// Archive is the archive the package came from, or empty.
	Archive string
	// Manifest is the package's parsed package.toml.
	Manifest *Manifest
}

// Packages returns every package in the search paths, in order. A search
// path that cannot be read, or an entry that is a broken package or
// archive, is reported in the error, which joins them all; the packages
// that could be read are returned with it.
func (h *Host) Packages() ([]PackageInfo, error) {
	return h.PackagesContext(context.Background())
}

// PackagesContext is Packages under ctx, which stops unpacking archives
// when it ends; the error then matches ctx.Err().
func (h *Host) PackagesContext(ctx context.Context) ([]PackageInfo, error) {
	var (
		found []PackageInfo
		errs  []error
	)
	for _, sp := range h.SearchPaths {
		entries, err := os.ReadDir(sp)
		if err != nil {
			errs = append(errs, fmt.Errorf("search path %s: %w", sp, err))
			continue
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return found, err
			}
			p := filepath.Join(sp, e.Name())
			info, ok, err := h.inspect(ctx, p, e.IsDir())
			if err != nil {
				errs = append(errs, err)
			} else if ok {
				found = append(found, info)
			}
		}
	}
	return found, errors.Join(errs...)
}

// inspect reads the package at p, if p is one.
func (h *Host) inspect(ctx context.Context, p string, isDir bool) (PackageInfo, bool, error) {
	if isDir {
		if _, err := os.Stat(filepath.Join(p, "package.toml")); err != nil {
			return PackageInfo{}, false, nil
		}
		m, err := LoadManifest(p)
		return PackageInfo{Dir: p, Manifest: m}, err == nil, err
	}
	if !h.isArchive(p) {
		return PackageInfo{}, false, nil
	}
	dir, err := h.unpackCached(ctx, p)
	if err != nil {
		return PackageInfo{}, false, err
	}
	m, err := LoadManifest(dir)
	return PackageInfo{Dir: dir, Archive: p, Manifest: m}, err == nil, err
}

func (h *Host) isArchive(p string) bool {
	ext := strings.TrimPrefix(filepath.Ext(p), ".")
	if ext == "fid" {
		return true
	}
	for _, x := range h.Extensions {
		if ext == strings.TrimPrefix(x, ".") {
			return true
		}
	}
	return false
}

// unpackCached unpacks an archive into a cache directory named after its
// content, unless an earlier call already did.
func (h *Host) unpackCached(ctx context.Context, archive string) (string, error) {
	f, err := os.Open(archive)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrArchive, err)
	}
	sum := sha256.New()
	_, err = io.Copy(sum, ctxReader{ctx, f})
	f.Close()
	if cerr := ctx.Err(); cerr != nil {
		return "", fmt.Errorf("unpacking %s: %w", archive, cerr)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrArchive, archive, err)
	}
	cache := h.CacheDir
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		cache = filepath.Join(base, "fidius-go", "packages")
	}
	dest := filepath.Join(cache, hex.EncodeToString(sum.Sum(nil))[:32])
	// Unpacking renames the package into place only once it is complete.
	if dir, err := packageRoot(dest); err == nil {
		return dir, nil
	}
	return UnpackPackageContext(ctx, archive, dest, h.Unpack)
}

// List returns the packages that implement the named interface; an empty
// name lists them all. Errors are as for Packages.
func (h *Host) List(iface string) ([]PackageInfo, error) {
	return h.ListContext(context.Background(), iface)
}

// ListContext is List under ctx, as PackagesContext.
func (h *Host) ListContext(ctx context.Context, iface string) ([]PackageInfo, error) {
	all, err := h.PackagesContext(ctx)
	if iface == "" {
		return all, err
	}
	var out []PackageInfo
	for _, p := range all {
		if p.Manifest.Package.Interface == iface {
			out = append(out, p)
		}
	}
	return out, err
}

// Find returns the first package called name. A name no readable package
// has is ErrPackageNotFound, with the problems met on the way.
func (h *Host) Find(name string) (PackageInfo, error) {
	return h.FindContext(context.Background(), name)
}

// FindContext is Find under ctx, as PackagesContext.
func (h *Host) FindContext(ctx context.Context, name string) (PackageInfo, error) {
	all, err := h.PackagesContext(ctx)
	if cerr := ctx.Err(); cerr != nil {
		return PackageInfo{}, cerr
	}
	for _, p := range all {
		if p.Manifest.Package.Name == name {
			return p, nil
		}
	}
	return PackageInfo{}, h.notFound(name, err)
}

// notFound is ErrPackageNotFound for name, with the problems met on the way.
func (h *Host) notFound(name string, problems error) error {
	nf := fmt.Errorf("%w: %q in %s", ErrPackageNotFound, name, strings.Join(h.SearchPaths, ", "))
	if problems != nil {
		return errors.Join(nf, problems)
	}
	return nf
}

// Load finds the Python package called name and loads it with
// LoadPythonPlugin, with Options and then opts (WithConfig loads a
// configured package), after checking its signature against TrustedKeys
// when RequireSignature is set. Packages of other runtimes (fidius's
// "rust" and "wasm") are passed over: a name only they have is
// ErrNotPythonRuntime, naming the runtime.
func (h *Host) Load(name string, desc *InterfaceDescriptor, opts ...Option) (*PluginHandle, error) {
	return h.LoadContext(context.Background(), name, desc, opts...)
}

// LoadContext is Load under ctx, which stops unpacking archives and
// interrupts the import as LoadPythonPluginContext describes.
func (h *Host) LoadContext(ctx context.Context, name string, desc *InterfaceDescriptor, opts ...Option) (*PluginHandle, error) {
	all, err := h.PackagesContext(ctx)
	if cerr := ctx.Err(); cerr != nil {
		return nil, cerr
	}
	var other *PackageInfo
	for i, p := range all {
		if p.Manifest.Package.Name != name {
			continue
		}
		if p.Manifest.Package.RuntimeName() != RuntimePython {
			if other == nil {
				other = &all[i]
			}
			continue
		}
		if h.RequireSignature {
			if err := VerifyPackage(p.Dir, h.TrustedKeys); err != nil {
				return nil, err
			}
		}
		return LoadPythonPluginContext(ctx, p.Dir, desc, append(h.Options[:len(h.Options):len(h.Options)], opts...)...)
	}
	if other != nil {
		return nil, fmt.Errorf("%w: package %q in %s has runtime %q", ErrNotPythonRuntime, name, other.Dir, other.Manifest.Package.RuntimeName())
	}
	return nil, h.notFound(name, err)
}
