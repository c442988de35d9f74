//go:build cgo

package fidius

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"strconv"
	"strings"
	"testing"
)

func FuzzManifest(f *testing.F) {
	valid, err := os.ReadFile("testdata/greeter/package.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	for _, s := range []string{
		"",
		"[package]\nname = \"x\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\n[metadata]\n",
		"[package]\nname = \"x\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 4294967296\n[metadata]\n",
		"[package]\nname = \"x\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\nruntime = \"python\"\n[metadata]\n[python]\nentry_module = \"a.b\"\n",
		"[package]\nname = \"x\"\nversion = \"1\"\ninterface = \"T\"\ninterface_version = 1\nruntime = \"python\"\n[metadata]\n[python]\nentry_module = \"a..b\"\n",
		"[package]\nname = 1\n",
		"a = 1\na = 2\n",
		"[metadata]\nx = [1, \"mixed\", {a = 1}]\n",
		"[package]\nname = \"\\ud800\"\n",
		"\xff\xfe[package]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest("package.toml", data)
		if err != nil {
			if !errors.Is(err, ErrManifest) {
				t.Fatalf("error %v does not match ErrManifest", err)
			}
			if !strings.Contains(err.Error(), "package.toml") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		switch m.Package.RuntimeName() {
		case RuntimeRust:
			if m.Python != nil {
				t.Fatal("a rust package with a [python] section was accepted")
			}
		case RuntimePython:
			if m.Python == nil || !isDottedName(m.Python.EntryModule) {
				t.Fatalf("a python package with entry module %+v was accepted", m.Python)
			}
		default:
			t.Fatalf("runtime %q was accepted", m.Package.Runtime)
		}
		var meta map[string]any
		if err := m.DecodeMetadata(&meta); err != nil && !errors.Is(err, ErrManifest) {
			t.Fatalf("DecodeMetadata: %v", err)
		}
	})
}

// refusals are the documented reasons for refusing JSON that Go's
// json.Valid accepts.
var refusals = []string{
	"not valid UTF-8",                  // Go's decoder would replace the bytes
	"deeper than 1000",                 // nesting limit
	"Exceeds the limit",                // Python's int/str digit limit
	"value too large to convert",       // a float beyond float64
	"maximum recursion depth exceeded", // encoding a result nested at the limit
}

func FuzzJSONRoundTrip(f *testing.F) {
	for _, s := range []string{
		`null`, `true`, `0`, `-0`, `-0.0`, `1e400`, `1e-400`, `123456789012345678901234567890`,
		`0.1`, `5e-324`, `"\ud800"`, `"\ud83d\ude00"`, `"\u0000"`, "\"\xff\"", `{"a":1,"a":2}`,
		`[[[[]]]]`, `{"":{"":[]}}`, `[1,]`, `01`, `1.`, `.5`, `"\x"`, `tru`, ` `, `[1 2]`,
		strings.Repeat("[", 1001) + strings.Repeat("]", 1001),
		"1" + strings.Repeat("0", 5000),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h := greeter(t)
		in := append(append([]byte("["), data...), ']')
		out, err := h.CallJSON(ctx, idx(t, h, "echo"), in)
		valid := json.Valid(in)
		if err != nil {
			if !errors.Is(err, ErrInputDecode) && !errors.Is(err, ErrOutputEncode) {
				t.Fatalf("%q: unexpected error kind: %v", in, err)
			}
			if valid && !refused(err) {
				t.Fatalf("%q is valid JSON but was refused: %v", in, err)
			}
			return
		}
		if !valid {
			t.Fatalf("%q is not valid JSON but was accepted, giving %s", in, out)
		}
		if !json.Valid(out) {
			t.Fatalf("%q gave invalid JSON %q", in, out)
		}
		a, b := decodeNumbers(t, in), decodeNumbers(t, out)
		if !sameJSON(a, b) {
			t.Fatalf("%q came back as %q", in, out)
		}
	})
}

func refused(err error) bool {
	for _, r := range refusals {
		if strings.Contains(err.Error(), r) {
			return true
		}
	}
	return false
}

func decodeNumbers(t *testing.T, b []byte) any {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	return v
}

// sameJSON compares decoded JSON values: integers exactly, other numbers
// as float64 (Python writes 1e2 back as 100.0).
func sameJSON(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		if isInt(x) && isInt(y) {
			i, _ := new(big.Int).SetString(string(x), 10)
			j, _ := new(big.Int).SetString(string(y), 10)
			return i.Cmp(j) == 0
		}
		f, _ := strconv.ParseFloat(string(x), 64)
		g, _ := strconv.ParseFloat(string(y), 64)
		return f == g
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameJSON(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !sameJSON(v, w) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}

func isInt(n json.Number) bool { return !strings.ContainsAny(string(n), ".eE") }
