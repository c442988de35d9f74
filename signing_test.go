//go:build cgo

package fidius

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func signedTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{
		"package.toml": "[package]\nname = \"d\"\n",
		"src/a.py":     "print('a')\n",
		"src/b/c.txt":  "",
		"vendor/x.py":  "X = 1\n",
	} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(body), 0o644)
	}
	return dir
}

func TestPackageDigestVector(t *testing.T) {
	dir := signedTree(t)
	// Computed with Python's hashlib from fidius's definition.
	const want = "8dae2f82502f0a9a251b94a44459826f283dc56c7f617638a8d5cdc1890f717e"
	sum, err := PackageDigest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(sum[:]) != want {
		t.Fatalf("digest %x, want %s", sum, want)
	}
	// Excluded: .sig files anywhere, target/ and .git/ directories.
	for _, name := range []string{"package.sig", "src/other.sig", "target/build.o", ".git/HEAD", "src/target/x"} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("ignored"), 0o644)
	}
	if again, _ := PackageDigest(dir); again != sum {
		t.Fatalf("excluded files changed the digest")
	}
}

func TestSignAndVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	otherPub, otherPriv, _ := ed25519.GenerateKey(nil)
	dir := signedTree(t)
	wantErr(t, VerifyPackage(dir, []ed25519.PublicKey{pub}), ErrSignatureMissing, dir)
	if err := SignPackage(dir, priv); err != nil {
		t.Fatal(err)
	}
	if sig, _ := os.ReadFile(filepath.Join(dir, "package.sig")); len(sig) != 64 {
		t.Fatalf("package.sig has %d bytes", len(sig))
	}
	if err := VerifyPackage(dir, []ed25519.PublicKey{otherPub, pub}); err != nil {
		t.Fatalf("any trusted key should do: %v", err)
	}
	wantErr(t, VerifyPackage(dir, []ed25519.PublicKey{otherPub}), ErrSignatureInvalid, dir)
	wantErr(t, VerifyPackage(dir, nil), ErrSignatureInvalid)

	// A .sig file elsewhere in the tree does not matter.
	os.WriteFile(filepath.Join(dir, "src", "notes.sig"), []byte("anything"), 0o644)
	if err := VerifyPackage(dir, []ed25519.PublicKey{pub}); err != nil {
		t.Fatalf("after adding a .sig file: %v", err)
	}

	// One changed byte in one file.
	changed := signedTree(t)
	SignPackage(changed, priv)
	b, _ := os.ReadFile(filepath.Join(changed, "src", "a.py"))
	b[0] ^= 1
	os.WriteFile(filepath.Join(changed, "src", "a.py"), b, 0o644)
	err := VerifyPackage(changed, []ed25519.PublicKey{pub})
	wantErr(t, err, ErrSignatureInvalid)
	if errors.Is(err, ErrSignatureMissing) {
		t.Fatal("an invalid signature is not a missing one")
	}

	// One added file.
	added := signedTree(t)
	SignPackage(added, otherPriv)
	os.WriteFile(filepath.Join(added, "src", "new.py"), []byte("x = 1\n"), 0o644)
	wantErr(t, VerifyPackage(added, []ed25519.PublicKey{otherPub}), ErrSignatureInvalid)

	// A truncated signature file.
	os.WriteFile(filepath.Join(dir, "package.sig"), []byte("short"), 0o644)
	wantErr(t, VerifyPackage(dir, []ed25519.PublicKey{pub}), ErrSignatureInvalid, "5 bytes")
	if err := SignPackage(dir, ed25519.PrivateKey("short")); err == nil {
		t.Fatal("signed with a 5-byte key")
	}
}

func TestSignedPackageStillVerifiesAfterLoading(t *testing.T) {
	writeBytecode(t)
	pub, priv, _ := ed25519.GenerateKey(nil)
	mod := moduleName(t)
	dir := writePackage(t, mod, map[string]string{
		mod + ".py":         "__interface_hash__ = 1\nimport " + mod + "_helper\ndef cached(): return " + mod + "_helper.__cached__\n",
		mod + "_helper.py":  "X = 1\n",
		"vendor/readme.txt": "vendored\n",
	})
	if err := SignPackage(dir, priv); err != nil {
		t.Fatal(err)
	}
	h := mustLoad(t, dir, &InterfaceDescriptor{InterfaceName: "T", InterfaceHash: 1, Methods: []MethodDesc{{Name: "cached"}}})
	cached, err := Call[string](ctx, h, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cached, pycacheDir()) {
		t.Fatalf("bytecode cached at %q, want under %q", cached, pycacheDir())
	}
	if _, err := os.Stat(cached); err != nil {
		t.Fatalf("no bytecode written: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "__pycache__")); err == nil {
		t.Fatal("Python wrote __pycache__ into the package")
	}
	if err := VerifyPackage(dir, []ed25519.PublicKey{pub}); err != nil {
		t.Fatalf("after loading: %v", err)
	}
}
