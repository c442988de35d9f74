package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dsnet/compress/bzip2"
	"github.com/fidius-go/fidius"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fidius-py-test")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "fidius-py")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cli runs the built binary and returns stdout, stderr and the exit code.
func cli(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// oneLineError checks a failure: non-zero exit, nothing on stdout, one line
// on stderr mentioning each fragment.
func oneLineError(t *testing.T, stdout, stderr string, code int, fragments ...string) {
	t.Helper()
	if code == 0 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "fidius-py") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	for _, f := range fragments {
		if !strings.Contains(stderr, f) {
			t.Errorf("stderr %q does not mention %q", stderr, f)
		}
	}
}

const example = "../../examples/greeter/plugin"

func copyExample(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"package.toml", "example_greeter.py"} {
		b, err := os.ReadFile(filepath.Join(example, name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	return dir
}

func TestHelp(t *testing.T) {
	out, _, code := cli(t, "", "--help")
	if code != 0 || !strings.Contains(out, "inspect") || !strings.Contains(out, "keygen") {
		t.Fatalf("exit %d: %s", code, out)
	}
	for name, c := range commands {
		out, errs, code := cli(t, "", name, "--help")
		if code != 0 || errs != "" || !strings.Contains(out, "usage: fidius-py "+name+" "+c.args) {
			t.Errorf("%s --help: exit %d, %q %q", name, code, out, errs)
		}
	}
}

// --version names the library's module version as the build recorded it
// (go version -m) and the Python the binary runs.
func TestVersion(t *testing.T) {
	out, errs, code := cli(t, "", "--version")
	info, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	version, revision, dirty := "", "", ""
	for _, line := range strings.Split(string(info), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "mod" && f[1] == "github.com/fidius-go/fidius":
			version = f[2]
		case len(f) == 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.revision="):
			revision = strings.TrimPrefix(f[1], "vcs.revision=")[:12]
		case len(f) == 2 && f[0] == "build" && f[1] == "vcs.modified=true":
			dirty = "+dirty"
		}
	}
	if version == "(devel)" && revision != "" {
		version += " " + revision + dirty
	}
	want := "fidius-py: library github.com/fidius-go/fidius " + version + ", Python " + fidius.PythonVersion() + "\n"
	if code != 0 || version == "" || out != want {
		t.Fatalf("exit %d: %q %q, want %q", code, out, errs, want)
	}
}

func TestBadInput(t *testing.T) {
	cases := [][]string{
		{"frobnicate"},
		{"inspect"},
		{"inspect", "a", "b"},
		{"inspect", "/no/such/package"},
		{"call", example},
		{"call", "--raw", "--stream", example, "greet"},
		{"call", "--bogus", example, "greet"},
		{"stub"},
		{"sign", example},
		{"verify", "--key", "/no/such/key", example},
		{"keygen"},
		{"digest", "/no/such/dir"},
	}
	for _, args := range cases {
		out, errs, code := cli(t, "", args...)
		oneLineError(t, out, errs, code)
	}
	out, _, code := cli(t, "")
	if code != 2 || !strings.Contains(out, "usage") {
		t.Fatalf("no arguments: exit %d, %q", code, out)
	}
}

func TestInspect(t *testing.T) {
	out, errs, code := cli(t, "", "inspect", example)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"package:     py-greeter 0.1.0", "interface:   Greeter (version 1)", "runtime:     python",
		"entry:       example_greeter", "hash:        0xe59581c4ab5583dd", "methods:     fail, greet, reverse", "configured:  no"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	// From an archive of the same package.
	archive := writeArchive(t, copyExample(t))
	if out2, errs, code := cli(t, "", "inspect", archive); code != 0 || out2 != out {
		t.Fatalf("archive: exit %d %s\n%s", code, errs, out2)
	}
}

func TestCall(t *testing.T) {
	out, errs, code := cli(t, "", "call", example, "greet", `["World"]`)
	if code != 0 || out != "\"Hello, World!\"\n" {
		t.Fatalf("exit %d: %q %q", code, out, errs)
	}
	out, errs, code = cli(t, "", "call", example, "fail")
	oneLineError(t, out, errs, code, "BAD_INPUT", "deliberate failure")
	out, errs, code = cli(t, "", "call", example, "wave")
	oneLineError(t, out, errs, code, `"wave"`, "registered with @method: fail, greet, reverse")
	out, errs, code = cli(t, "", "call", example, "greet", `["unterminated`)
	oneLineError(t, out, errs, code, "cannot decode call input")
	out, errs, code = cli(t, "stressed", "call", "--raw", example, "reverse")
	if code != 0 || out != "desserts" {
		t.Fatalf("raw from stdin: exit %d: %q %q", code, out, errs)
	}
	out, errs, code = cli(t, "", "call", "--raw", example, "reverse", "abc")
	if code != 0 || out != "cba" {
		t.Fatalf("raw from the argument: exit %d: %q %q", code, out, errs)
	}
	ticker := "../../testdata/ticker"
	out, errs, code = cli(t, "", "call", "--stream", ticker, "ticks", "[3]")
	if code != 0 || out != "0\n1\n2\n" {
		t.Fatalf("stream: exit %d: %q %q", code, out, errs)
	}
}

func TestStub(t *testing.T) {
	dir := t.TempDir()
	iface := filepath.Join(dir, "greeter.toml")
	os.WriteFile(iface, []byte(greeterInterface), 0o644)
	out, errs, code := cli(t, "", "stub", "--interface", iface)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"__interface_hash__ = 0xE59581C4AB5583DD", "def greet(arg0):", "def reverse(data):", "def fail():", "reverse:Vec < u8 >->Vec < u8 >!raw",
		"fidius-py stub --go --interface " + iface + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stub lacks %q:\n%s", want, out)
		}
	}
	// The stub is a plugin module the library loads.
	pkg := copyExample(t)
	os.WriteFile(filepath.Join(pkg, "package.toml"), []byte(strings.Replace(mustRead(t, filepath.Join(pkg, "package.toml")), "example_greeter", "stubbed_greeter", 1)), 0o644)
	os.WriteFile(filepath.Join(pkg, "stubbed_greeter.py"), []byte(out), 0o644)
	if out, errs, code := cli(t, "", "call", pkg, "greet", `["x"]`); code == 0 || !strings.Contains(errs, "NotImplementedError") {
		t.Fatalf("calling a stub: exit %d %q %q", code, out, errs)
	}
	os.WriteFile(iface, []byte("interface = \"X\"\n[[methods]]\nname = \"a-b\"\n"), 0o644)
	out, errs, code = cli(t, "", "stub", "--interface", iface)
	oneLineError(t, out, errs, code, `"a-b"`)
	os.WriteFile(iface, []byte("interface = \"X\"\n[[methods]]\nname = \"a\"\nargz = []\n"), 0o644)
	out, errs, code = cli(t, "", "stub", "--interface", iface)
	oneLineError(t, out, errs, code, "argz")
}

func mustRead(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestKeysSignVerifyDigest(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "alice")
	if out, errs, code := cli(t, "", "keygen", name); code != 0 || !strings.Contains(out, name+".secret") {
		t.Fatalf("keygen: exit %d %q %q", code, out, errs)
	}
	secret, public := mustRead(t, name+".secret"), mustRead(t, name+".public")
	if len(secret) != 32 || len(public) != 32 {
		t.Fatalf("key sizes %d %d", len(secret), len(public))
	}
	if st, _ := os.Stat(name + ".secret"); st.Mode().Perm() != 0o600 {
		t.Fatalf("secret key mode %v", st.Mode().Perm())
	}
	if !ed25519.PublicKey(public).Equal(ed25519.NewKeyFromSeed([]byte(secret)).Public()) {
		t.Fatal("the public key does not belong to the secret key")
	}

	pkg := copyExample(t)
	out, errs, code := cli(t, "", "digest", pkg)
	sum, _ := fidius.PackageDigest(pkg)
	if code != 0 || out != hex.EncodeToString(sum[:])+"\n" {
		t.Fatalf("digest: exit %d %q %q", code, out, errs)
	}
	out, errs, code = cli(t, "", "verify", "--key", name+".public", pkg)
	oneLineError(t, out, errs, code, "not signed")
	if out, errs, code := cli(t, "", "sign", "--key", name+".secret", pkg); code != 0 {
		t.Fatalf("sign: exit %d %q %q", code, out, errs)
	}
	if out, errs, code := cli(t, "", "verify", "--key", name+".public", pkg); code != 0 || !strings.Contains(out, "signature valid") {
		t.Fatalf("verify: exit %d %q %q", code, out, errs)
	}
	// Archives of signed packages verify too.
	if out, errs, code := cli(t, "", "verify", "--key", name+".public", writeArchive(t, pkg)); code != 0 {
		t.Fatalf("verify archive: exit %d %q %q", code, out, errs)
	}
	os.WriteFile(filepath.Join(pkg, "example_greeter.py"), []byte("tampered\n"), 0o644)
	out, errs, code = cli(t, "", "verify", "--key", name+".public", pkg)
	oneLineError(t, out, errs, code, "invalid")
	out, errs, code = cli(t, "", "sign", "--key", name+".public.bad", pkg)
	oneLineError(t, out, errs, code)
}

// writeArchive packs dir as a .fid archive holding pkg-0.1.0/.
func writeArchive(t *testing.T, dir string) string {
	t.Helper()
	var buf bytes.Buffer
	bz, _ := bzip2.NewWriter(&buf, nil)
	tw := tar.NewWriter(bz)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		tw.WriteHeader(&tar.Header{Name: "pkg-0.1.0/" + e.Name(), Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
		tw.Write(b)
	}
	tw.Close()
	bz.Close()
	path := filepath.Join(t.TempDir(), "pkg.fid")
	os.WriteFile(path, buf.Bytes(), 0o644)
	return path
}

// Flags may come before, between or after the positional arguments; "--"
// ends them, and a negative JSON number is an argument, not a flag.
func TestFlagsAnywhere(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"call", example, "reverse", "--raw", "abc"}, "cba"},
		{[]string{"call", example, "--raw", "reverse", "abc"}, "cba"},
		{[]string{"call", example, "reverse", "abc", "--raw"}, "cba"},
		{[]string{"call", example, "reverse", "--raw", "--", "--raw"}, "war--"},
		{[]string{"call", "--raw", "--", example, "reverse", "-v"}, "v-"},
		{[]string{"call", example, "greet", "-1"}, "\"Hello, -1!\"\n"},
		{[]string{"call", example, "greet", "--", `["--raw"]`}, "\"Hello, --raw!\"\n"},
	} {
		out, errs, code := cli(t, "", c.args...)
		if code != 0 || out != c.want {
			t.Errorf("%q: exit %d, %q %q; want %q", c.args, code, out, errs, c.want)
		}
	}
	out, errs, code := cli(t, "", "call", example, "greet", `["x"]`, "--bogus")
	oneLineError(t, out, errs, code, "-bogus")
	if code != 2 {
		t.Errorf("an unknown flag after the arguments: exit %d, want 2", code)
	}
}

// keygen never replaces a key pair unless told to, and a replaced secret
// key is 0600 even where the old file was world-readable.
func TestKeygenRefusesToOverwrite(t *testing.T) {
	name := filepath.Join(t.TempDir(), "bob")
	if _, errs, code := cli(t, "", "keygen", name); code != 0 {
		t.Fatalf("keygen: exit %d %q", code, errs)
	}
	secret := mustRead(t, name+".secret")
	out, errs, code := cli(t, "", "keygen", name)
	oneLineError(t, out, errs, code, name+".secret exists", "--force")
	if mustRead(t, name+".secret") != secret {
		t.Fatal("a refused keygen changed the secret key")
	}
	// Only the public key left: still refused, and nothing written.
	os.Remove(name + ".secret")
	out, errs, code = cli(t, "", "keygen", name)
	oneLineError(t, out, errs, code, name+".public exists")
	if _, err := os.Stat(name + ".secret"); err == nil {
		t.Fatal("a refused keygen wrote a secret key")
	}

	os.WriteFile(name+".secret", []byte("old"), 0o644)
	os.Chmod(name+".secret", 0o644)
	if out, errs, code := cli(t, "", "keygen", "--force", name); code != 0 || !strings.Contains(out, name+".public") {
		t.Fatalf("keygen --force: exit %d %q %q", code, out, errs)
	}
	st, err := os.Stat(name + ".secret")
	if err != nil || st.Mode().Perm() != 0o600 || st.Size() != 32 {
		t.Fatalf("after --force: %v, %v", st, err)
	}
	pub := mustRead(t, name+".public")
	if !ed25519.PublicKey(pub).Equal(ed25519.NewKeyFromSeed([]byte(mustRead(t, name+".secret"))).Public()) {
		t.Fatal("--force wrote keys that are not a pair")
	}
}

// Secret and public keys are both 32 raw bytes; the file name tells them
// apart, and sign checks a secret key against the public key next to it.
func TestKeyKinds(t *testing.T) {
	dir := t.TempDir()
	alice, bob := filepath.Join(dir, "alice"), filepath.Join(dir, "bob")
	for _, name := range []string{alice, bob} {
		if _, errs, code := cli(t, "", "keygen", name); code != 0 {
			t.Fatalf("keygen: %q", errs)
		}
	}
	pkg := copyExample(t)

	out, errs, code := cli(t, "", "sign", "--key", alice+".public", pkg)
	oneLineError(t, out, errs, code, alice+".public is a public key", "pass "+alice+".secret")
	if code != 2 {
		t.Errorf("sign with a public key: exit %d, want 2", code)
	}
	out, errs, code = cli(t, "", "verify", "--key", alice+".secret", pkg)
	oneLineError(t, out, errs, code, alice+".secret is a secret key", "pass "+alice+".public")
	if code != 2 {
		t.Errorf("verify with a secret key: exit %d, want 2", code)
	}
	if _, err := os.Stat(filepath.Join(pkg, "package.sig")); err == nil {
		t.Fatal("a refused sign wrote package.sig")
	}

	// A secret key next to another pair's public key.
	mallory := filepath.Join(dir, "mallory")
	os.WriteFile(mallory+".secret", []byte(mustRead(t, alice+".secret")), 0o600)
	os.WriteFile(mallory+".public", []byte(mustRead(t, bob+".public")), 0o644)
	out, errs, code = cli(t, "", "sign", "--key", mallory+".secret", pkg)
	oneLineError(t, out, errs, code, mallory+".secret and "+mallory+".public are not a key pair")
	// A public key copied to NAME.secret.
	os.WriteFile(mallory+".secret", []byte(mustRead(t, bob+".public")), 0o600)
	out, errs, code = cli(t, "", "sign", "--key", mallory+".secret", pkg)
	oneLineError(t, out, errs, code, "same bytes as "+mallory+".public", "not a secret key")

	// Files named otherwise are taken as the kind the command needs.
	plainSecret, plainPublic := filepath.Join(dir, "signing-key"), filepath.Join(dir, "trusted-key")
	os.WriteFile(plainSecret, []byte(mustRead(t, alice+".secret")), 0o600)
	os.WriteFile(plainPublic, []byte(mustRead(t, alice+".public")), 0o644)
	if out, errs, code := cli(t, "", "sign", "--key", plainSecret, pkg); code != 0 {
		t.Fatalf("sign with %s: exit %d %q %q", plainSecret, code, out, errs)
	}
	if out, errs, code := cli(t, "", "verify", "--key", plainPublic, pkg); code != 0 || out != "signature valid: "+pkg+"\n" {
		t.Fatalf("verify with %s: exit %d %q %q", plainPublic, code, out, errs)
	}
	out, errs, code = cli(t, "", "verify", "--key", bob+".public", pkg)
	oneLineError(t, out, errs, code, "signature is invalid", pkg)
}

// sign takes a directory; an archive is refused with what to do instead.
func TestSignRefusesArchive(t *testing.T) {
	name := filepath.Join(t.TempDir(), "alice")
	cli(t, "", "keygen", name)
	archive := writeArchive(t, copyExample(t))
	before := mustRead(t, archive)
	out, errs, code := cli(t, "", "sign", "--key", name+".secret", archive)
	oneLineError(t, out, errs, code, archive+" is not a directory", "sign the directory, then fidius-py pack it")
	if mustRead(t, archive) != before {
		t.Fatal("the archive changed")
	}
}

// Errors about an archive name the archive, not the temporary directory it
// was unpacked into.
func TestArchiveErrorsNameTheArchive(t *testing.T) {
	name := filepath.Join(t.TempDir(), "alice")
	cli(t, "", "keygen", name)
	pkg := copyExample(t)
	unsigned := writeArchive(t, pkg)
	out, errs, code := cli(t, "", "verify", "--key", name+".public", unsigned)
	oneLineError(t, out, errs, code, "not signed: no package.sig in "+unsigned)
	if strings.Contains(errs, "fidius-py-") {
		t.Errorf("names a temporary directory: %q", errs)
	}

	cli(t, "", "sign", "--key", name+".secret", pkg)
	os.WriteFile(filepath.Join(pkg, "example_greeter.py"), []byte("tampered\n"), 0o644)
	tampered := writeArchive(t, pkg)
	out, errs, code = cli(t, "", "verify", "--key", name+".public", tampered)
	oneLineError(t, out, errs, code, "signature is invalid: "+tampered+":")

	// A Python error's file names too.
	os.WriteFile(filepath.Join(pkg, "example_greeter.py"), []byte("raise ValueError(__file__)\n"), 0o644)
	broken := writeArchive(t, pkg)
	// (inspect prints the manifest before it imports the module.)
	_, errs, code = cli(t, "", "inspect", "-v", broken)
	if code != 1 || !strings.Contains(errs, "ValueError: "+broken+"/example_greeter.py\n") ||
		!strings.Contains(errs, "File \""+broken+"/example_greeter.py\", line 1") || strings.Contains(errs, "fidius-py-") {
		t.Errorf("inspect -v: exit %d, %q; want the error and traceback to name %s", code, errs, broken)
	}
}

// writePlugin writes a package directory whose entry module is source.
func writePlugin(t *testing.T, module, source string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "package.toml"), []byte(`[package]
name = "py-`+module+`"
version = "0.1.0"
interface = "Test"
interface_version = 1
runtime = "python"

[metadata]

[python]
entry_module = "`+module+`"
`), 0o644)
	os.WriteFile(filepath.Join(dir, module+".py"), []byte(source), 0o644)
	return dir
}

// -v shows a plugin error's details and the Python traceback; without it
// the error is one line that says there is more.
func TestCallVerbose(t *testing.T) {
	out, errs, code := cli(t, "", "call", example, "fail")
	if code != 1 || out != "" || errs != "fidius-py call: plugin error BAD_INPUT: deliberate failure (-v shows more)\n" {
		t.Fatalf("exit %d, %q %q", code, out, errs)
	}
	out, errs, code = cli(t, "", "call", "-v", example, "fail")
	if code != 1 || out != "" || errs != "fidius-py call: plugin error BAD_INPUT: deliberate failure\ndetails: {\"got\":42}\n" {
		t.Fatalf("-v: exit %d, %q %q", code, out, errs)
	}

	pkg := writePlugin(t, "fidius_py_verbose", "from fidius import method\n__interface_hash__ = 1\n\n@method\ndef boom():\n    return 1 / 0\n")
	_, errs, code = cli(t, "", "call", pkg, "boom", "-v")
	want := "fidius-py call: plugin error ZeroDivisionError: division by zero\ntraceback:\n  File \"" +
		filepath.Join(pkg, "fidius_py_verbose.py") + "\", line 6, in boom\n    return 1 / 0\n"
	if code != 1 || !strings.HasPrefix(errs, want) {
		t.Fatalf("exit %d, %q; want it to start %q", code, errs, want)
	}
	// An error with nothing more to show says nothing about -v.
	_, errs, _ = cli(t, "", "call", example, "wave")
	if strings.Contains(errs, "-v") {
		t.Errorf("%q mentions -v", errs)
	}

	// inspect shows an import error's traceback.
	broken := writePlugin(t, "fidius_py_broken", "x = 1\nraise RuntimeError('no')\n")
	_, errs, code = cli(t, "", "inspect", broken)
	if code != 1 || !strings.HasSuffix(errs, "RuntimeError: no (-v shows more)\n") {
		t.Fatalf("inspect: exit %d %q", code, errs)
	}
	_, errs, code = cli(t, "", "inspect", "-v", broken)
	if code != 1 || !strings.Contains(errs, "RuntimeError: no\n") || !strings.Contains(errs, "fidius_py_broken.py\", line 2, in <module>") {
		t.Fatalf("inspect -v: exit %d %q", code, errs)
	}
}

// inspect says when a package is configured, and --timeout stops an
// import that never ends.
func TestInspectConfiguredAndTimeout(t *testing.T) {
	pkg := writePlugin(t, "fidius_py_inspect_cfg", "__interface_hash__ = 1\ndef __fidius_configure__(config):\n    return config\n")
	if out, errs, code := cli(t, "", "inspect", pkg); code != 0 || !strings.Contains(out, "configured:  yes, by __fidius_configure__ (try call --config JSON)\n") {
		t.Fatalf("exit %d: %q %q", code, out, errs)
	}
	spin := writePlugin(t, "fidius_py_inspect_spin", "__interface_hash__ = 1\nwhile True:\n    pass\n")
	start := time.Now()
	out, errs, code := cli(t, "", "inspect", "--timeout", "200ms", spin)
	if code != 1 || !strings.Contains(errs, "context deadline exceeded") || time.Since(start) > 5*time.Second {
		t.Fatalf("inspect --timeout: exit %d after %v: %q %q", code, time.Since(start), out, errs)
	}
	out, errs, code = cli(t, "", "call", spin, "f", "--timeout", "200ms")
	oneLineError(t, out, errs, code, "context deadline exceeded")
}

// A method that returns an iterator, called without --stream, fails and
// says to use --stream instead of printing the iterator's str().
func TestCallIteratorWithoutStream(t *testing.T) {
	ticker := "../../testdata/ticker"
	out, errs, code := cli(t, "", "call", ticker, "ticks", "[3]")
	oneLineError(t, out, errs, code, "ticks", "generator", "call it with --stream")
	pkg := writePlugin(t, "fidius_py_iter", "from fidius import method\n__interface_hash__ = 1\n\n@method\ndef items():\n    return iter([1, 2])\n")
	out, errs, code = cli(t, "", "call", pkg, "items")
	oneLineError(t, out, errs, code, "items", "list_iterator", "call it with --stream")
	if out, errs, code := cli(t, "", "call", "--stream", pkg, "items"); code != 0 || out != "1\n2\n" {
		t.Fatalf("--stream: exit %d, %q %q", code, out, errs)
	}
	// A string that only looks like one is a result like any other.
	pkg = writePlugin(t, "fidius_py_lookalike", "from fidius import method\n__interface_hash__ = 1\n\n@method\ndef s():\n    return '<generator object f at 0x1>x'\n")
	if out, errs, code := cli(t, "", "call", pkg, "s"); code != 0 || out != "\"<generator object f at 0x1>x\"\n" {
		t.Fatalf("lookalike: exit %d, %q %q", code, out, errs)
	}
}

// --config loads the package configured: __fidius_configure__ gets the JSON
// and the method is the returned object's.
func TestCallConfig(t *testing.T) {
	ticker := "../../testdata/ticker"
	out, errs, code := cli(t, "", "call", "--stream", "--config", `{"step": 5}`, ticker, "ticks", "[3]")
	if code != 0 || out != "0\n5\n10\n" {
		t.Fatalf("exit %d, %q %q", code, out, errs)
	}
	out, errs, code = cli(t, "", "call", "--config", `{"step": `, ticker, "ticks", "[3]")
	oneLineError(t, out, errs, code, "--config is not valid JSON")
	if code != 2 {
		t.Errorf("invalid --config: exit %d, want 2", code)
	}
	out, errs, code = cli(t, "", "call", "--config", "", ticker, "ticks", "[3]")
	oneLineError(t, out, errs, code, "--config is not valid JSON")
	// The configure function raises: its error and, with -v, traceback.
	_, errs, code = cli(t, "", "call", "--stream", "--config", `{}`, "-v", ticker, "ticks", "[3]")
	if code != 1 || !strings.Contains(errs, "__fidius_configure__ raised KeyError: 'step'\n") || !strings.Contains(errs, "in __init__") {
		t.Fatalf("configure raises: exit %d %q", code, errs)
	}
	out, errs, code = cli(t, "", "call", "--config", `{}`, example, "greet", `["x"]`)
	oneLineError(t, out, errs, code, "has no __fidius_configure__")

	// A configured object's method need not be registered with @method.
	pkg := writePlugin(t, "fidius_py_configured", `__interface_hash__ = 1

class Greeter:
    def __init__(self, config):
        self.greeting = config["greeting"]

    def greet(self, name):
        return f"{self.greeting}, {name}!"

def __fidius_configure__(config):
    return Greeter(config)
`)
	out, errs, code = cli(t, "", "call", "--config", `{"greeting": "Hej"}`, pkg, "greet", `["du"]`)
	if code != 0 || out != "\"Hej, du!\"\n" {
		t.Fatalf("configured: exit %d, %q %q", code, out, errs)
	}
	out, errs, code = cli(t, "", "call", "--config", `{"greeting": "Hej"}`, pkg, "wave")
	oneLineError(t, out, errs, code, `"wave"`, "not defined")
	out, errs, code = cli(t, "", "call", pkg, "greet", `["du"]`)
	oneLineError(t, out, errs, code, `"greet" is not registered`, "no method is registered with @method")
}

func TestCallHelp(t *testing.T) {
	out, _, code := cli(t, "", "call", "--help")
	for _, want := range []string{"-raw", "passed to the method as bytes, as they are, not parsed as JSON", "-config", "__fidius_configure__", "-v", "traceback"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("call --help lacks %q:\n%s", want, out)
		}
	}
}

const greeterInterface = `interface = "Greeter"

[[methods]]
name = "greet"
args = ["String"]
returns = "String"

[[methods]]
name = "reverse"
args = ["Vec < u8 >"]
returns = "Vec < u8 >"
raw = true

[[methods]]
name = "fail"
returns = "String"
`

// hash prints the hash and the signatures it is computed from, from an
// interface file or from signatures typed in; both give the example's hash.
func TestHash(t *testing.T) {
	iface := filepath.Join(t.TempDir(), "greeter.toml")
	os.WriteFile(iface, []byte(greeterInterface), 0o644)
	want := "0xE59581C4AB5583DD\nfail:->String\ngreet:String->String\nreverse:Vec < u8 >->Vec < u8 >!raw\n"
	for _, args := range [][]string{
		{"hash", "--interface", iface},
		{"hash", "greet:String->String", "reverse:Vec < u8 >->Vec < u8 >!raw", "fail:->String"},
		{"hash", "reverse:Vec < u8 >->Vec < u8 >!raw", "fail:->String", "greet:String->String"},
	} {
		if out, errs, code := cli(t, "", args...); code != 0 || out != want {
			t.Errorf("%q: exit %d, %q %q; want %q", args, code, out, errs, want)
		}
	}
	if out, _, code := cli(t, "", "hash", "ticks:u32->u32!stream"); code != 0 || out != "0xB29C538250DA204F\nticks:u32->u32!stream\n" {
		t.Errorf("ticks: exit %d, %q", code, out)
	}
	// Arguments join with ",", an empty returns is an empty return type, and
	// the suffixes come in the order !raw, !stream, <stream.
	os.WriteFile(iface, []byte(`interface = "Spelling"
[[methods]]
name = "reset"
args = ["u32", "String"]
[[methods]]
name = "pipe"
args = ["Vec < u8 >"]
raw = true
streaming = true
client_streaming = true
`), 0o644)
	sigs := []string{"pipe:Vec < u8 >->!raw!stream<stream", "reset:u32,String->"}
	want = fmt.Sprintf("0x%016X\n%s\n%s\n", fidius.InterfaceHash(sigs...), sigs[0], sigs[1])
	if out, errs, code := cli(t, "", "hash", "--interface", iface); code != 0 || out != want {
		t.Errorf("spelling: exit %d, %q %q; want %q", code, out, errs, want)
	}
	if out, _, code := cli(t, "", append([]string{"hash"}, sigs...)...); code != 0 || out != want {
		t.Errorf("spelling, typed in: exit %d, %q; want %q", code, out, want)
	}
	for _, args := range [][]string{{"hash"}, {"hash", "--interface", iface, "greet:String->String"}, {"hash", "greet(String)->String"}} {
		out, errs, code := cli(t, "", args...)
		oneLineError(t, out, errs, code)
		if code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	out, errs, code := cli(t, "", "hash", "greet")
	oneLineError(t, out, errs, code, `"greet" is not a method signature`, "name:Arg1,Arg2->Ret")
}

// stub --go prints a descriptor literal that loads the plugin the Python
// stub is for: the test reads the literal back and loads the example with
// it.
func TestStubGo(t *testing.T) {
	iface := filepath.Join(t.TempDir(), "greeter.toml")
	os.WriteFile(iface, []byte(greeterInterface), 0o644)
	out, errs, code := cli(t, "", "stub", "--interface", iface, "--go")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"var greeterInterface = &fidius.InterfaceDescriptor{\n",
		"\tInterfaceHash: fidius.InterfaceHash( // 0xE59581C4AB5583DD\n",
		"\t\t\"reverse:Vec < u8 >->Vec < u8 >!raw\",\n",
		"\t\t{Name: \"reverse\", WireRaw: true}, // index 1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stub --go lacks %q:\n%s", want, out)
		}
	}
	if formatted, err := format.Source([]byte(out)); err != nil || string(formatted) != out {
		t.Errorf("not gofmt-formatted (%v):\n%s", err, out)
	}
	desc := descriptorFromSource(t, out)
	if desc.InterfaceHash != 0xE59581C4AB5583DD || desc.InterfaceName != "Greeter" {
		t.Fatalf("descriptor %+v", desc)
	}
	h, err := fidius.LoadPythonPlugin(example, desc)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if got, err := fidius.Call[string](context.Background(), h, 0, "Go"); err != nil || got != "Hello, Go!" {
		t.Fatalf("greet: %q %v", got, err)
	}
	if got, err := h.CallRaw(context.Background(), 1, []byte("ab")); err != nil || string(got) != "ba" {
		t.Fatalf("reverse: %q %v", got, err)
	}

	os.WriteFile(iface, []byte("interface = \"Ticker\"\n[[methods]]\nname = \"ticks\"\nargs = [\"u32\"]\nreturns = \"u32\"\nstreaming = true\n"), 0o644)
	out, _, _ = cli(t, "", "stub", "--go", "--interface", iface)
	if d := descriptorFromSource(t, out); d.InterfaceHash != 0xB29C538250DA204F || !d.Methods[0].Streaming {
		t.Fatalf("ticker: %+v\n%s", d, out)
	}
}

// descriptorFromSource evaluates the literal stub --go prints: the
// InterfaceHash call's string arguments and each method's fields.
func descriptorFromSource(t *testing.T, src string) *fidius.InterfaceDescriptor {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "stub.go", "package p\n"+src, 0)
	if err != nil {
		t.Fatalf("%v:\n%s", err, src)
	}
	lit := f.Decls[0].(*ast.GenDecl).Specs[0].(*ast.ValueSpec).Values[0].(*ast.UnaryExpr).X.(*ast.CompositeLit)
	str := func(e ast.Expr) string {
		s, err := strconv.Unquote(e.(*ast.BasicLit).Value)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	d := &fidius.InterfaceDescriptor{}
	for _, e := range lit.Elts {
		kv := e.(*ast.KeyValueExpr)
		switch kv.Key.(*ast.Ident).Name {
		case "InterfaceName":
			d.InterfaceName = str(kv.Value)
		case "InterfaceHash":
			var sigs []string
			for _, a := range kv.Value.(*ast.CallExpr).Args {
				sigs = append(sigs, str(a))
			}
			d.InterfaceHash = fidius.InterfaceHash(sigs...)
		case "Methods":
			for _, m := range kv.Value.(*ast.CompositeLit).Elts {
				var md fidius.MethodDesc
				for _, fe := range m.(*ast.CompositeLit).Elts {
					fkv := fe.(*ast.KeyValueExpr)
					switch fkv.Key.(*ast.Ident).Name {
					case "Name":
						md.Name = str(fkv.Value)
					case "WireRaw":
						md.WireRaw = fkv.Value.(*ast.Ident).Name == "true"
					case "Streaming":
						md.Streaming = fkv.Value.(*ast.Ident).Name == "true"
					case "ClientStreaming":
						md.ClientStreaming = fkv.Value.(*ast.Ident).Name == "true"
					case "Optional":
						md.Optional = fkv.Value.(*ast.Ident).Name == "true"
					}
				}
				d.Methods = append(d.Methods, md)
			}
		}
	}
	return d
}

// The README's interface file gives the hash output and the descriptor the
// README shows.
func TestREADMEExamples(t *testing.T) {
	readme := mustRead(t, "../../README.md")
	block := func(after, lang string) string {
		t.Helper()
		i := strings.Index(readme, after)
		if i < 0 {
			t.Fatalf("README has no %q", after)
		}
		rest := readme[i+len(after):]
		open := strings.Index(rest, "```"+lang+"\n")
		if open < 0 {
			t.Fatalf("README has no ```%s block after %q", lang, after)
		}
		rest = rest[open+len("```"+lang+"\n"):]
		return rest[:strings.Index(rest, "```")]
	}
	iface := filepath.Join(t.TempDir(), "greeter.toml")
	os.WriteFile(iface, []byte(block("The interface file for `stub` and `hash`", "toml")), 0o644)
	if out, errs, code := cli(t, "", "stub", "--go", "--interface", iface); code != 0 || out != block("`stub --go` prints, for that file:", "go") {
		t.Errorf("stub --go: exit %d %q\n%s", code, errs, out)
	}
	want := block("fidius-py stub --go --interface greeter.toml # the host's fidius.InterfaceDescriptor\n```", "")
	if out, errs, code := cli(t, "", "hash", "--interface", iface); code != 0 || out != want {
		t.Errorf("hash: exit %d %q\n%s\nREADME:\n%s", code, errs, out, want)
	}
}

// --stdin-stream feeds a client stream from standard input, one JSON value
// per line; with --stream the call is bidirectional.
func TestCallStdinStream(t *testing.T) {
	pkg := writePlugin(t, "fidius_py_stdin_stream", `from fidius import method
__interface_hash__ = 1

@method
def load(rows, start=0):
    return start + sum(rows)

@method
def transform(rows):
    for r in rows:
        yield r * 2
`)
	if out, errs, code := cli(t, "1\n2\n\n3\n", "call", "--stdin-stream", pkg, "load"); code != 0 || out != "6\n" {
		t.Errorf("load: exit %d, %q %q", code, out, errs)
	}
	if out, errs, code := cli(t, "1\n2\n", "call", pkg, "load", "10", "--stdin-stream"); code != 0 || out != "13\n" {
		t.Errorf("load with an argument: exit %d, %q %q", code, out, errs)
	}
	if out, errs, code := cli(t, "1\n2\n", "call", "--stdin-stream", "--stream", pkg, "transform"); code != 0 || out != "2\n4\n" {
		t.Errorf("transform: exit %d, %q %q", code, out, errs)
	}
	out, errs, code := cli(t, "1\nnot json\n", "call", "--stdin-stream", pkg, "load")
	oneLineError(t, out, errs, code, "standard input, line 2: not a JSON value")
}

// hash and stub leave optional methods out of the hash and mark them.
func TestOptionalMethodsInInterfaceFile(t *testing.T) {
	iface := filepath.Join(t.TempDir(), "opt.toml")
	os.WriteFile(iface, []byte(`interface = "Opt"
[[methods]]
name = "core"
args = ["u32"]
returns = "u32"
[[methods]]
name = "extra"
returns = "String"
optional = true
[[methods]]
name = "load"
args = ["u64"]
returns = "u64"
client_streaming = true
`), 0o644)
	hashWant := fidius.InterfaceHash("core:u32->u32", "load:u64->u64<stream")
	want := fmt.Sprintf("0x%016X\ncore:u32->u32\nload:u64->u64<stream\nextra:->String (optional: not hashed)\n", hashWant)
	if out, errs, code := cli(t, "", "hash", "--interface", iface); code != 0 || out != want {
		t.Errorf("hash: exit %d, %q %q; want %q", code, out, errs, want)
	}
	out, errs, code := cli(t, "", "stub", "--go", "--interface", iface)
	if code != 0 {
		t.Fatalf("stub --go: exit %d: %s", code, errs)
	}
	desc := descriptorFromSource(t, out)
	if desc.InterfaceHash != hashWant || len(desc.Methods) != 3 || !desc.Methods[1].Optional || !desc.Methods[2].ClientStreaming {
		t.Errorf("stub --go descriptor %+v from:\n%s", desc, out)
	}
	out, errs, code = cli(t, "", "stub", "--interface", iface)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("__interface_hash__ = 0x%016X", hashWant)) ||
		!strings.Contains(out, "# Optional: a plugin may leave extra out.") || !strings.Contains(out, "def load(items):") {
		t.Errorf("stub: exit %d %s\n%s", code, errs, out)
	}
}

// pack writes the same archive each time; unpack gives the package back,
// signature and all.
func TestPackUnpack(t *testing.T) {
	dir := copyExample(t)
	keys := filepath.Join(t.TempDir(), "k")
	if _, errs, code := cli(t, "", "keygen", keys); code != 0 {
		t.Fatal(errs)
	}
	out, errs, code := cli(t, "", "pack", dir, "-o", t.TempDir())
	if code != 0 || !strings.Contains(out, "py-greeter-0.1.0.fid") || !strings.Contains(out, "is not signed") {
		t.Fatalf("pack unsigned: exit %d %q %q", code, out, errs)
	}
	if _, errs, code := cli(t, "", "sign", "--key", keys+".secret", dir); code != 0 {
		t.Fatal(errs)
	}
	first := filepath.Join(t.TempDir(), "a.fid")
	second := filepath.Join(t.TempDir(), "b.fid")
	for _, o := range []string{first, second} {
		if out, errs, code := cli(t, "", "pack", "-o", o, dir); code != 0 || out != "packed "+dir+": "+o+"\n" {
			t.Fatalf("pack: exit %d %q %q", code, out, errs)
		}
	}
	a, _ := os.ReadFile(first)
	b, _ := os.ReadFile(second)
	if !bytes.Equal(a, b) {
		t.Error("two packs of one directory differ")
	}
	dest := t.TempDir()
	out, errs, code = cli(t, "", "unpack", first, dest)
	if code != 0 || out != filepath.Join(dest, "py-greeter-0.1.0")+"\n" {
		t.Fatalf("unpack: exit %d %q %q", code, out, errs)
	}
	if out, errs, code := cli(t, "", "verify", "--key", keys+".public", strings.TrimSpace(out)); code != 0 {
		t.Errorf("verify the unpacked package: exit %d %q %q", code, out, errs)
	}
	if out, errs, code := cli(t, "", "verify", "--key", keys+".public", first); code != 0 || !strings.Contains(out, first) {
		t.Errorf("verify the archive: exit %d %q %q", code, out, errs)
	}
}

func TestCallIsolated(t *testing.T) {
	pkg := writePlugin(t, "fidius_py_isolated", `__interface_hash__ = 1
from fidius import method

@method
def interpreter():
    try:
        import _interpreters as i  # 3.13
    except ImportError:
        import _xxsubinterpreters as i  # 3.12
    cur = i.get_current()
    return int(cur[0] if isinstance(cur, tuple) else cur)
`)
	out, errs, code := cli(t, "", "call", "--isolated", pkg, "interpreter")
	if v := fidius.PythonVersion(); strings.HasPrefix(v, "3.10.") || strings.HasPrefix(v, "3.11.") {
		oneLineError(t, out, errs, code, "isolated interpreters need CPython 3.12 or later")
		return
	}
	if code != 0 || out == "0\n" || out == "" {
		t.Fatalf("call --isolated ran in interpreter %q (0 is the main one): exit %d, %q", out, code, errs)
	}
	out, errs, code = cli(t, "", "call", pkg, "interpreter")
	if code != 0 || out != "0\n" {
		t.Fatalf("call without --isolated ran in interpreter %q: exit %d, %q", out, code, errs)
	}
}

func TestCallWorkers(t *testing.T) {
	pkg := writePlugin(t, "fidius_py_workers", `__interface_hash__ = 1
import os, sys
from fidius import method

@method
def where(n):
    return [os.getpid(), n + 1, sys.executable]
`)
	out, errs, code := cli(t, "", "call", "--workers", pkg, "where", "[41]")
	var got []any
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got) != 3 {
		t.Fatalf("call --workers: exit %d, %q, %q", code, out, errs)
	}
	if pid := int(got[0].(float64)); pid == os.Getpid() || got[1] != 42.0 {
		t.Fatalf("call --workers ran in pid %v (this is %d): %v", got[0], os.Getpid(), got)
	}
	// --python names the worker's Python.
	py := got[2].(string)
	out, errs, code = cli(t, "", "call", "--python", py, pkg, "where", "[1]")
	if code != 0 || !strings.Contains(out, py) {
		t.Fatalf("call --python %s: exit %d, %q, %q", py, code, out, errs)
	}
	// A method the package does not have is a one-line error.
	out, errs, code = cli(t, "", "call", "--workers", pkg, "nowhere")
	oneLineError(t, out, errs, code, `method "nowhere"`)
}
