// This file owns package signatures, compatible with fidius: a SHA-256
// digest over the package's files, signed with Ed25519 into package.sig.

package fidius

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// packageFiles lists a package's files as fidius selects them, relative to
// dir, slash-separated and sorted: every file except those under
// directories named "target" or ".git" (at any depth), and, unless sigs,
// those ending in ".sig". skip, if not empty, is an absolute path left out
// (an archive being written inside dir). A symbolic link to a file counts
// as the file; one to a directory, or anything else that is not a regular
// file, is an error.
func packageFiles(dir string, sigs bool, skip string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && (d.Name() == "target" || d.Name() == ".git") {
				return filepath.SkipDir
			}
			return nil
		}
		if !sigs && strings.HasSuffix(d.Name(), ".sig") {
			return nil
		}
		if skip != "" {
			if abs, _ := filepath.Abs(p); abs == skip {
				return nil
			}
		}
		if d.Type()&fs.ModeSymlink != 0 {
			st, err := os.Stat(p)
			if err != nil {
				return err
			}
			if st.IsDir() {
				return fmt.Errorf("%s is a symbolic link to a directory, which a package cannot hold", p)
			}
		} else if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	slices.Sort(files)
	return files, err
}

// PackageDigest returns the SHA-256 digest fidius signs: over every file
// under dir except those in directories named "target" or ".git" and those
// ending in ".sig", in order of their slash-separated relative paths, it
// hashes the path's length (little-endian uint64), the path, the content's
// length (little-endian uint64) and the content.
func PackageDigest(dir string) ([32]byte, error) {
	files, err := packageFiles(dir, false, "")
	if err != nil {
		return [32]byte{}, fmt.Errorf("digest of %s: %w", dir, err)
	}
	h := sha256.New()
	var n [8]byte
	for _, rel := range files {
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			return [32]byte{}, fmt.Errorf("digest of %s: %w", dir, err)
		}
		st, err := f.Stat()
		if err == nil {
			binary.LittleEndian.PutUint64(n[:], uint64(len(rel)))
			h.Write(n[:])
			io.WriteString(h, rel)
			binary.LittleEndian.PutUint64(n[:], uint64(st.Size()))
			h.Write(n[:])
			var copied int64
			copied, err = io.Copy(h, f)
			if err == nil && copied != st.Size() {
				err = fmt.Errorf("%s changed size while being read", rel)
			}
		}
		f.Close()
		if err != nil {
			return [32]byte{}, fmt.Errorf("digest of %s: %w", dir, err)
		}
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// SignPackage signs dir's digest with key and writes the raw 64-byte
// signature to dir/package.sig.
func SignPackage(dir string, key ed25519.PrivateKey) error {
	if len(key) != ed25519.PrivateKeySize {
		return fmt.Errorf("signing %s: private key has %d bytes, want %d", dir, len(key), ed25519.PrivateKeySize)
	}
	sum, err := PackageDigest(dir)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "package.sig"), ed25519.Sign(key, sum[:]), 0o644)
}

// VerifyPackage checks dir/package.sig against dir's digest. Any key in
// trusted that verifies it is enough. A missing package.sig is
// ErrSignatureMissing; a signature no trusted key verifies is
// ErrSignatureInvalid.
func VerifyPackage(dir string, trusted []ed25519.PublicKey) error {
	sig, err := os.ReadFile(filepath.Join(dir, "package.sig"))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: no package.sig in %s", ErrSignatureMissing, dir)
	}
	if err != nil {
		return err
	}
	if len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: %s/package.sig has %d bytes, want %d", ErrSignatureInvalid, dir, len(sig), ed25519.SignatureSize)
	}
	sum, err := PackageDigest(dir)
	if err != nil {
		return err
	}
	for _, k := range trusted {
		if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, sum[:], sig) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s: none of the %d trusted keys verifies it", ErrSignatureInvalid, dir, len(trusted))
}
