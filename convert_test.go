//go:build cgo

package fidius

import (
	"encoding/json"
	"strings"
	"testing"
)

// 16: JSON to Python, every row of the value table.
func TestJSONToPython(t *testing.T) {
	h := greeter(t)
	in := `[null, true, false, 0, -5, 123456789012345678901234567890, -123456789012345678901234567890,
		1.5, 1e3, -0.0, 2E-3, "s\u00e9\ud83d\ude00\n", "\ud800", [1, [2]], {"a": {"b": null}}]`
	out, err := h.CallJSON(ctx, idx(t, h, "types"), []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var got [][2]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	want := [][2]string{
		{"NoneType", "None"},
		{"bool", "True"},
		{"bool", "False"},
		{"int", "0"},
		{"int", "-5"},
		{"int", "123456789012345678901234567890"},
		{"int", "-123456789012345678901234567890"},
		{"float", "1.5"},
		{"float", "1000.0"},
		{"float", "-0.0"},
		{"float", "0.002"},
		{"str", `'s` + "\u00e9\U0001F600" + `\n'`},
		{"str", `'\ud800'`},
		{"list", "[1, [2]]"},
		{"dict", "{'a': {'b': None}}"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d values: %q", len(got), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("value %d: got %q, want %q", i, got[i], want[i])
		}
	}
}

// 16: Python to JSON, every row of the value table.
func TestPythonToJSON(t *testing.T) {
	h := greeter(t)
	value := idx(t, h, "value")
	cases := map[string]string{
		"none":             `null`,
		"true":             `true`,
		"false":            `false`,
		"int":              `42`,
		"negative":         `-7`,
		"bigint":           `123456789012345678901234567890`,
		"negbigint":        `-123456789012345678901234567890`,
		"float":            `0.1`,
		"bigfloat":         `1e+16`,
		"wholefloat":       `2.0`,
		"str":              `"a\"b\\c\n\u0001` + "\u00e9\U0001F600" + `"`,
		"list":             `[1,"two",[3.5]]`,
		"tuple":            `[1,[2,3]]`,
		"dict":             `{"a":1,"b":{"c":[]}}`,
		"keys":             `{"1":"a","None":"b","(1, 2)":"c","2.5":"d"}`,
		"bytes":            `[0,1,255]`,
		"bytearray":        `[2,254]`,
		"dataclass":        `{"x":1,"y":"a","tags":["t"]}`,
		"nested_dataclass": `{"start":{"x":0,"y":"s","tags":[]},"end":{"x":5,"y":"e","tags":[]}}`,
		"other":            `"custom!"`,
	}
	for kind, want := range cases {
		out, err := h.CallJSON(ctx, value, []byte(`"`+kind+`"`))
		if err != nil {
			t.Errorf("%s: %v", kind, err)
			continue
		}
		if string(out) != want {
			t.Errorf("%s: got %s, want %s", kind, out, want)
		}
		if !json.Valid(out) {
			t.Errorf("%s: %s is not valid JSON", kind, out)
		}
	}
	for _, kind := range []string{"nan", "inf", "neginf"} {
		_, err := h.CallJSON(ctx, value, []byte(`"`+kind+`"`))
		wantErr(t, err, ErrOutputEncode, `"value"`, "cannot be represented in JSON")
	}
}

// 16: values survive the trip there and back exactly.
func TestRoundTrip(t *testing.T) {
	h := greeter(t)
	echo := idx(t, h, "echo")
	for _, in := range []string{
		`[123456789012345678901234567890]`,
		`[-99999999999999999999999999999999999999]`,
		`[9223372036854775807,-9223372036854775808,18446744073709551615]`,
		`[0.1,1e-07,123456.789,5e-324,1.7976931348623157e+308]`,
		`["tab\tquote\"slash\\nul\u0000 \u2028"]`,
		`[{"nested":[{"deep":[[[]]]}],"empty":{}}]`,
		`[]`,
	} {
		out, err := h.CallJSON(ctx, echo, []byte(in))
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if canon(t, out) != canon(t, []byte(in)) {
			t.Errorf("round trip of %s gave %s", in, out)
		}
	}
	// The integer digits themselves, not a float approximation.
	out, _ := h.CallJSON(ctx, echo, []byte(`[123456789012345678901234567890]`))
	if string(out) != `[123456789012345678901234567890]` {
		t.Errorf("30-digit integer came back as %s", out)
	}
}

func canon(t *testing.T, b []byte) string {
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

func TestDeepInputIsRefused(t *testing.T) {
	h := greeter(t)
	ok := strings.Repeat("[", 999) + strings.Repeat("]", 999)
	if _, err := h.CallJSON(ctx, idx(t, h, "sink"), []byte(ok)); err != nil {
		t.Fatalf("999 levels: %v", err)
	}
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	_, err := h.CallJSON(ctx, idx(t, h, "sink"), []byte(deep))
	wantErr(t, err, ErrInputDecode, "deeper than 1000")
}

func TestInputRawBytesAreStrictUTF8(t *testing.T) {
	h := greeter(t)
	types := idx(t, h, "types")
	// An escaped lone surrogate is kept, as Python's json module keeps it,
	// also next to raw multi-byte UTF-8.
	out, err := h.CallJSON(ctx, types, []byte(`["\ud800 é"]`))
	if err != nil || string(out) != `[["str","'\\ud800 é'"]]` {
		t.Fatalf("escaped lone surrogate: %s, %v", out, err)
	}
	// A surrogate encoded in raw bytes (ED A0 80) is not UTF-8, whatever
	// escapes share its string.
	for _, in := range []string{
		"[\"\\ud800 \xed\xa0\x80\"]",
		"[\"\xed\xa0\x80 \\ud800\"]",
		"[\"\\n \xed\xa0\x80\"]",
		"[\"\xed\xa0\x80\"]",
	} {
		_, err := h.CallJSON(ctx, types, []byte(in))
		wantErr(t, err, ErrInputDecode, "offset 1: string is not valid UTF-8")
	}
}

func TestDuplicateJSONKeysAreRefused(t *testing.T) {
	dir, d := simplePlugin(t, `
class S(str):
    pass

class Key:
    def __str__(self):
        return "k"
    def __repr__(self):
        return "Key()"

CASES = {
    "int_then_str": {1: "a", "1": "b"},
    "str_then_int": {"1": "b", 1: "a"},
    "late": {"x": 0, "y": 1, 2: "a", "z": 3, "2": "b"},
    "two_non_str": {Key(): 1, "a": 2, "k": 3},
    "subclass": {S("1"): "b", 1: "a"},
    "distinct": {1: "a", "2": "b", None: "c", "None2": "d"},
    "plain": {"a": 1, "b": {"c": 2}},
}

def keys(kind):
    return CASES[kind]
`, MethodDesc{Name: "keys"})
	h := mustLoad(t, dir, d)
	for kind, dup := range map[string]string{
		"int_then_str": `keys 1 and '1' of a dict are both the JSON key '1'`,
		"str_then_int": `keys '1' and 1 of a dict are both the JSON key '1'`,
		"late":         `keys 2 and '2' of a dict are both the JSON key '2'`,
		"two_non_str":  `keys Key() and 'k' of a dict are both the JSON key 'k'`,
		"subclass":     `keys '1' and 1 of a dict are both the JSON key '1'`,
	} {
		_, err := h.CallJSON(ctx, 0, []byte(`"`+kind+`"`))
		wantErr(t, err, ErrOutputEncode, `"keys"`, "ValueError: keys ", dup)
	}
	for kind, want := range map[string]string{
		"distinct": `{"1":"a","2":"b","None":"c","None2":"d"}`,
		"plain":    `{"a":1,"b":{"c":2}}`,
	} {
		if out, err := h.CallJSON(ctx, 0, []byte(`"`+kind+`"`)); err != nil || string(out) != want {
			t.Errorf("%s: %s, %v", kind, out, err)
		}
	}
}
