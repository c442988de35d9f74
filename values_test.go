//go:build cgo

package fidius

import (
	"strings"
	"testing"
)

// valuesSource returns, by name, values of types the encoder knows only
// by what they do: no library is imported by the encoder itself.
const valuesSource = `
import array, collections.abc, decimal, fractions, types

class Index:
    def __index__(self):
        return 7
    def __str__(self):
        return "Index!"

class Floaty:
    def __float__(self):
        return 2.5

class Both:
    # __index__ wins over __float__, as operator.index does.
    def __index__(self):
        return 3
    def __float__(self):
        return 3.5

class ToList:
    def tolist(self):
        return [1, [2, 3]]

class BadToList:
    # tolist() that gives something else is not used.
    def tolist(self):
        return object()
    def __str__(self):
        return "bad tolist"

class Frozen(collections.abc.Mapping):
    def __init__(self, d):
        self._d = d
    def __getitem__(self, k):
        return self._d[k]
    def __iter__(self):
        return iter(self._d)
    def __len__(self):
        return len(self._d)

class Plain:
    def __str__(self):
        return "plain!"

def gen():
    yield 1

VALUES = {
    "index": lambda: Index(),
    "floaty": lambda: Floaty(),
    "both": lambda: Both(),
    "decimal": lambda: decimal.Decimal("1.25"),
    "fraction": lambda: fractions.Fraction(1, 4),
    "tolist": lambda: ToList(),
    "badtolist": lambda: BadToList(),
    "array": lambda: array.array("h", [1, -2]),
    "memoryview": lambda: memoryview(b"\x01\x02"),
    "set": lambda: {5},
    "frozenset": lambda: frozenset(["a"]),
    "mapping": lambda: Frozen({"k": [Index()]}),
    "proxy": lambda: types.MappingProxyType({"p": 1}),
    "nested": lambda: [Index(), {"f": Floaty()}, (frozenset([1]),)],
    "plain": lambda: Plain(),
    "generator": lambda: gen(),
    "map": lambda: map(str, [1]),
    "complex": lambda: 1j,
}

def value(kind):
    return VALUES[kind]()

class CoroutineLike:
    def __await__(self):
        return iter(())

def coroutine():
    return CoroutineLike()

def stream():
    yield Index()
    yield Plain()
`

func TestValueTableDuckTypes(t *testing.T) {
	methods := []MethodDesc{{Name: "value"}, {Name: "coroutine"}, {Name: "stream", Streaming: true}}
	dir, d := simplePlugin(t, valuesSource, methods...)
	h := mustLoad(t, dir, d)
	for kind, want := range map[string]string{
		"index":      `7`,
		"floaty":     `2.5`,
		"both":       `3`,
		"decimal":    `1.25`,
		"fraction":   `0.25`,
		"tolist":     `[1,[2,3]]`,
		"badtolist":  `"bad tolist"`,
		"array":      `[1,-2]`,
		"memoryview": `[1,2]`,
		"set":        `[5]`,
		"frozenset":  `["a"]`,
		"mapping":    `{"k":[7]}`,
		"proxy":      `{"p":1}`,
		"nested":     `[7,{"f":2.5},[[1]]]`,
		"plain":      `"plain!"`,
		"complex":    `"1j"`,
	} {
		out, err := h.CallJSON(ctx, 0, []byte(`"`+kind+`"`))
		if err != nil {
			t.Errorf("%s: %v", kind, err)
			continue
		}
		if string(out) != want {
			t.Errorf("%s: got %s, want %s", kind, out, want)
		}
	}

	// An iterator from a unary method is a mistake, never its repr.
	for _, kind := range []string{"generator", "map"} {
		_, err := h.CallJSON(ctx, 0, []byte(`"`+kind+`"`))
		wantErr(t, err, ErrOutputEncode, "is an iterator", "CallStream")
	}
	_, err := h.CallJSON(ctx, 1, nil)
	wantErr(t, err, ErrOutputEncode, "CoroutineLike is awaitable")

	// Strict values: what would become its str() is an error naming the
	// type; everything else converts as before.
	strict, err := LoadPythonPlugin(dir, d, WithStrictValues())
	if err != nil {
		t.Fatal(err)
	}
	defer strict.Close()
	for kind, typ := range map[string]string{"plain": "Plain", "badtolist": "BadToList", "complex": "complex"} {
		_, err := strict.CallJSON(ctx, 0, []byte(`"`+kind+`"`))
		wantErr(t, err, ErrOutputEncode, typ+" has no JSON form", "strict")
	}
	items, err := collect(t, strict.CallStream(ctx, 2, nil))
	if len(items) != 1 || items[0] != "7" {
		t.Errorf("strict stream items before the error: %s", items)
	}
	wantErr(t, err, ErrOutputEncode, "Plain has no JSON form")
	for _, kind := range []string{"index", "floaty", "mapping", "set", "nested"} {
		if _, err := strict.CallJSON(ctx, 0, []byte(`"`+kind+`"`)); err != nil {
			t.Errorf("strict %s: %v", kind, err)
		}
	}
}

// numpyValuesSource returns numpy values by name.
const numpyValuesSource = `
def numpy_value(kind):
    import numpy as np
    return {
        "arange": lambda: np.arange(5),
        "int64": lambda: np.int64(3),
        "bool": lambda: np.bool_(True),
        "float64": lambda: np.float64(2.0),
        "float32": lambda: np.float32(1.5),
        "int8": lambda: np.array([-1, 2], dtype=np.int8),
        "f32array": lambda: np.array([0.5, 1.0], dtype=np.float32),
        "bools": lambda: np.array([True, False]),
        "matrix": lambda: np.arange(6).reshape(2, 3),
        "empty": lambda: np.zeros((0,)),
        "in_dict": lambda: {"n": np.int32(4), "xs": np.array([1.5])},
        "str": lambda: np.str_("s"),
    }[kind]()

def numpy_raw(data):
    import numpy as np
    if data == b"strided":
        return np.arange(6, dtype=np.uint8)[::2]
    if data == b"int32":
        return np.array([1, 256], dtype="<i4")
    return np.frombuffer(data, dtype=np.uint8) + 1
`

func TestValueTableNumpy(t *testing.T) {
	dir, d := simplePlugin(t, extensionSource+numpyValuesSource,
		MethodDesc{Name: "load"}, MethodDesc{Name: "numpy_value"}, MethodDesc{Name: "numpy_raw", WireRaw: true})
	h := mustLoad(t, dir, d)
	if got, err := Call[string](ctx, h, 0, "numpy"); err != nil || strings.HasPrefix(got, "missing: ") {
		t.Skipf("numpy is not installed for Python %s (Debian: apt-get install python3-numpy): %s %v", PythonVersion(), got, err)
	}
	for kind, want := range map[string]string{
		"arange":   `[0,1,2,3,4]`,
		"int64":    `3`,
		"bool":     `true`,
		"float64":  `2.0`,
		"float32":  `1.5`,
		"int8":     `[-1,2]`,
		"f32array": `[0.5,1.0]`,
		"bools":    `[true,false]`,
		"matrix":   `[[0,1,2],[3,4,5]]`,
		"empty":    `[]`,
		"in_dict":  `{"n":4,"xs":[1.5]}`,
		"str":      `"s"`,
	} {
		out, err := h.CallJSON(ctx, 1, []byte(`"`+kind+`"`))
		if err != nil {
			t.Errorf("%s: %v", kind, err)
			continue
		}
		if string(out) != want {
			t.Errorf("%s: got %s, want %s", kind, out, want)
		}
	}
	if xs, err := Call[[]int](ctx, h, 1, "arange"); err != nil || len(xs) != 5 || xs[4] != 4 {
		t.Errorf("Call[[]int] of numpy.arange(5): %v, %v", xs, err)
	}

	// Raw: a numpy array is returned through the buffer protocol, in C
	// order, even when it is a strided view.
	for in, want := range map[string]string{
		"\x01\x02": "\x02\x03",
		"strided":  "\x00\x02\x04",
		"int32":    "\x01\x00\x00\x00\x00\x01\x00\x00",
	} {
		out, err := h.CallRaw(ctx, 2, []byte(in))
		if err != nil || string(out) != want {
			t.Errorf("raw %q: %q, %v; want %q", in, out, err, want)
		}
	}
}
