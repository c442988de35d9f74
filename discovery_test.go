//go:build cgo

package fidius

import (
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func manifestFor(name, iface, runtime, entry string) string {
	s := "[package]\nname = \"" + name + "\"\nversion = \"1.0.0\"\ninterface = \"" + iface + "\"\ninterface_version = 1\n"
	if runtime != "" {
		s += "runtime = \"" + runtime + "\"\n"
	}
	s += "\n[metadata]\n"
	if entry != "" {
		s += "\n[python]\nentry_module = \"" + entry + "\"\n"
	}
	return s
}

// threePackages lays out two search paths: the first holds a package
// directory and a .fid archive, the second a rust package, a directory
// that is not a package and a stray file.
func threePackages(t *testing.T) (*Host, string) {
	mod := moduleName(t)
	first, second := t.TempDir(), t.TempDir()
	write := func(path, body string) {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(first, "alpha", "package.toml"), manifestFor("alpha", "Greeter", "python", mod+"_alpha"))
	write(filepath.Join(first, "alpha", mod+"_alpha.py"), "__interface_hash__ = 1\ndef greet(n): return 'alpha greets ' + n\n")
	archive := writeArchive(t, []tarEntry{
		{name: "beta-1.0.0/package.toml", body: manifestFor("beta", "Greeter", "python", mod+"_beta")},
		{name: "beta-1.0.0/" + mod + "_beta.py", body: "__interface_hash__ = 1\ndef greet(n): return 'beta greets ' + n\n"},
	})
	data, _ := os.ReadFile(archive)
	write(filepath.Join(first, "beta-1.0.0.fid"), string(data))
	write(filepath.Join(second, "gamma", "package.toml"), manifestFor("gamma", "Other", "", ""))
	write(filepath.Join(second, "notes", "README"), "not a package")
	write(filepath.Join(second, "stray.txt"), "not an archive")
	cache := t.TempDir()
	return &Host{SearchPaths: []string{first, second}, CacheDir: cache}, cache
}

var greeterDesc = &InterfaceDescriptor{InterfaceName: "Greeter", InterfaceHash: 1, Methods: []MethodDesc{{Name: "greet"}}}

func TestHostDiscovery(t *testing.T) {
	h, cache := threePackages(t)
	all, err := h.Packages()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range all {
		names = append(names, p.Manifest.Package.Name+":"+p.Manifest.Package.Interface+":"+p.Manifest.Package.RuntimeName())
	}
	if strings.Join(names, " ") != "alpha:Greeter:python beta:Greeter:python gamma:Other:rust" {
		t.Fatalf("found %q", names)
	}
	greeters, err := h.List("Greeter")
	if err != nil || len(greeters) != 2 {
		t.Fatalf("List(Greeter): %d, %v", len(greeters), err)
	}
	sort.Slice(greeters, func(i, j int) bool { return greeters[i].Manifest.Package.Name < greeters[j].Manifest.Package.Name })
	if greeters[0].Archive != "" || !strings.HasSuffix(greeters[1].Archive, "beta-1.0.0.fid") || !strings.HasPrefix(greeters[1].Dir, cache) {
		t.Fatalf("infos %+v", greeters)
	}
	if others, _ := h.List("Other"); len(others) != 1 || others[0].Manifest.Package.Name != "gamma" {
		t.Fatalf("List(Other): %+v", others)
	}

	// The archive is unpacked once: a second discovery reuses it.
	marker := filepath.Join(greeters[1].Dir, "marker")
	os.WriteFile(marker, []byte("x"), 0o644)
	beta, err := h.Find("beta")
	if err != nil || beta.Dir != greeters[1].Dir {
		t.Fatalf("Find(beta): %+v, %v", beta, err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("the archive was unpacked again")
	}
	if entries, _ := os.ReadDir(cache); len(entries) != 1 {
		t.Fatalf("cache holds %d entries", len(entries))
	}

	for name, want := range map[string]string{"alpha": "alpha greets Go", "beta": "beta greets Go"} {
		p, err := h.Load(name, greeterDesc, modeOptions...)
		if err != nil {
			t.Fatalf("Load(%s): %v", name, err)
		}
		if got, err := Call[string](ctx, p, 0, "Go"); err != nil || got != want {
			t.Fatalf("%s: %q, %v", name, got, err)
		}
		p.Close()
	}
	_, err = h.Load("gamma", greeterDesc)
	wantErr(t, err, ErrNotPythonRuntime)
	_, err = h.Load("delta", greeterDesc)
	wantErr(t, err, ErrPackageNotFound, `"delta"`)
}

func TestHostRequireSignature(t *testing.T) {
	h, _ := threePackages(t)
	pub, priv, _ := ed25519.GenerateKey(nil)
	h.TrustedKeys = []ed25519.PublicKey{pub}
	h.RequireSignature = true
	_, err := h.Load("alpha", greeterDesc)
	wantErr(t, err, ErrSignatureMissing)
	alpha, _ := h.Find("alpha")
	if err := SignPackage(alpha.Dir, priv); err != nil {
		t.Fatal(err)
	}
	p, err := h.Load("alpha", greeterDesc)
	if err != nil {
		t.Fatalf("signed package: %v", err)
	}
	p.Close()
	os.WriteFile(filepath.Join(alpha.Dir, "extra.py"), []byte("x = 1\n"), 0o644)
	_, err = h.Load("alpha", greeterDesc)
	wantErr(t, err, ErrSignatureInvalid)
}

func TestHostBrokenEntries(t *testing.T) {
	h, _ := threePackages(t)
	bad := filepath.Join(h.SearchPaths[1], "broken")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "package.toml"), []byte("[package"), 0o644)
	os.WriteFile(filepath.Join(h.SearchPaths[1], "junk.fid"), []byte("not bzip2"), 0o644)
	h.SearchPaths = append(h.SearchPaths, filepath.Join(t.TempDir(), "missing"))
	all, err := h.Packages()
	if len(all) != 3 {
		t.Fatalf("good packages: %d", len(all))
	}
	wantErr(t, err, ErrManifest, "broken")
	wantErr(t, err, ErrArchive, "junk.fid")
	if !strings.Contains(err.Error(), "missing") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing search path not reported: %v", err)
	}
	// A package that can be read is still found.
	if _, err := h.Find("beta"); err != nil {
		t.Fatal(err)
	}
}

// fidius's rust and wasm packages share search paths with Python ones:
// listed with their runtime, passed over by Load.
func TestHostMixedRuntimes(t *testing.T) {
	mod := moduleName(t)
	sp := t.TempDir()
	write := func(path, body string) {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(sp, "a-rust", "package.toml"), manifestFor("shared", "Greeter", "rust", ""))
	write(filepath.Join(sp, "b-python", "package.toml"), manifestFor("shared", "Greeter", "python", mod))
	write(filepath.Join(sp, "b-python", mod+".py"), `__interface_hash__ = 1
def __fidius_configure__(config):
    class Greeter:
        def greet(self, n):
            return config["greeting"] + ", " + n
    return Greeter()
def greet(n):
    return "plain " + n
`)
	write(filepath.Join(sp, "c-wasm", "package.toml"), manifestFor("wasm-only", "Greeter", "wasm", "")+"\n[wasm]\ncomponent = \"plugin.wasm\"\n")
	h := &Host{SearchPaths: []string{sp}}
	all, err := h.List("Greeter")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var got []string
	for _, p := range all {
		got = append(got, p.Manifest.Package.Name+":"+p.Manifest.Package.RuntimeName())
	}
	if strings.Join(got, " ") != "shared:rust shared:python wasm-only:wasm" {
		t.Errorf("List: %q", got)
	}

	p, err := h.Load("shared", greeterDesc)
	if err != nil {
		t.Fatalf("Load(shared): %v", err)
	}
	defer p.Close()
	if s, err := Call[string](ctx, p, 0, "Go"); err != nil || s != "plain Go" {
		t.Errorf("greet: %q, %v", s, err)
	}
	if m := p.Manifest(); m == nil || m.Package.Name != "shared" || m.Package.Version != "1.0.0" || p.Dir() != filepath.Join(sp, "b-python") {
		t.Errorf("handle identity: %+v in %s", m, p.Dir())
	}
	configured, err := h.Load("shared", greeterDesc, WithConfig(map[string]string{"greeting": "Hi"}))
	if err != nil {
		t.Fatalf("Load(shared, WithConfig): %v", err)
	}
	defer configured.Close()
	if s, err := Call[string](ctx, configured, 0, "Go"); err != nil || s != "Hi, Go" {
		t.Errorf("configured greet: %q, %v", s, err)
	}
	_, err = h.Load("wasm-only", greeterDesc)
	wantErr(t, err, ErrNotPythonRuntime, `"wasm-only"`, `runtime "wasm"`)
}
