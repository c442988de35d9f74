//go:build cgo

package fidius

import (
	"encoding/json"
	"testing"
	"time"
)

// Tests here used to crash the process; each runs its body in a child.

func TestDescriptorGrownAfterLoad(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	dir, d := simplePlugin(t, "def one(): return 1\ndef two(): return 2\n", MethodDesc{Name: "one"})
	d.Methods = make([]MethodDesc, 1, 4) // room to grow in place
	d.Methods[0] = MethodDesc{Name: "one"}
	h := mustLoad(t, dir, d)
	d.Methods = append(d.Methods, MethodDesc{Name: "two"})
	d.Methods[0].WireRaw = true
	_, err := h.CallJSON(ctx, 1, nil)
	wantErr(t, err, ErrInvalidMethodIndex, "1", "has 1 methods")
	if got, err := Call[int](ctx, h, 0); err != nil || got != 1 {
		t.Fatalf("method 0 after the caller changed its descriptor: %v, %v", got, err)
	}
	// Descriptor returns a copy: changing it changes nothing either.
	mine := h.Descriptor()
	mine.Methods = append(mine.Methods, MethodDesc{Name: "two"})
	mine.Methods[0].Name = "renamed"
	mine.InterfaceHash = 99
	if got := h.Descriptor(); len(got.Methods) != 1 || got.Methods[0].Name != "one" || got.Methods[0].WireRaw || got.InterfaceHash != 0x1234 || h.MethodCount() != 1 {
		t.Fatalf("the handle's descriptor changed: %+v, %d methods", got, h.MethodCount())
	}
	_, err = h.CallJSON(ctx, 1, nil)
	wantErr(t, err, ErrInvalidMethodIndex)
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, err := Call[int](ctx, h, 0); err != nil || got != 1 {
		t.Fatalf("after reload: %v, %v", got, err)
	}
}

func TestDataclassFieldNameNotStr(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	dir, d := simplePlugin(t, `
import dataclasses

class Odd:
    pass

field = dataclasses.field()
field.name = 1
field._field_type = dataclasses._FIELD
Odd.__dataclass_fields__ = {1: field}

class Plain:
    __dataclass_fields__ = {1: dataclasses.field()}

def odd():
    return [Odd()]

def plain():
    return Plain()
`, MethodDesc{Name: "odd"}, MethodDesc{Name: "plain"})
	h := mustLoad(t, dir, d)
	_, err := h.CallJSON(ctx, 0, nil)
	wantErr(t, err, ErrOutputEncode, `"odd"`, "TypeError: dataclass Odd has a field whose name is not a str: 1")
	// A field that is not a dataclass field (no field type) is not listed.
	if out, err := h.CallJSON(ctx, 1, nil); err != nil || string(out) != `{}` {
		t.Fatalf("plain: %s, %v", out, err)
	}
}

func TestEncoderDepthLimit(t *testing.T) {
	// A plugin that raises the recursion limit must not be able to make
	// the encoder overflow the C stack.
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	dir, d := simplePlugin(t, `
import dataclasses, sys

@dataclasses.dataclass
class Node:
    next: object = None

def deep(n, kind="list"):
    sys.setrecursionlimit(10**6)
    v = None
    for _ in range(n):
        v = {"a": v} if kind == "dict" else Node(v) if kind == "dataclass" else (v,) if kind == "tuple" else [v]
    return v

def cycle(kind):
    sys.setrecursionlimit(10**6)
    if kind == "list":
        v = [1]
        v.append(v)
    elif kind == "dict":
        v = {}
        v["self"] = {"inner": v}
    else:
        v = Node()
        v.next = [v]
    return v
`, MethodDesc{Name: "deep"}, MethodDesc{Name: "cycle"})
	h := mustLoad(t, dir, d)
	for _, kind := range []string{"list", "dict", "dataclass", "tuple"} {
		// 1000 containers inside each other: the decoder's limit, and the encoder's.
		out, err := Call[json.RawMessage](ctx, h, 0, 1000, kind)
		if err != nil {
			t.Fatalf("%s 1000 deep: %v", kind, err)
		}
		if !json.Valid(out) {
			t.Fatalf("%s 1000 deep: invalid JSON", kind)
		}
		for _, n := range []int{1001, 200000} {
			_, err := Call[json.RawMessage](ctx, h, 0, n, kind)
			wantErr(t, err, ErrOutputEncode, `"deep"`, "ValueError: value nests deeper than 1000 levels")
		}
	}
	for kind, what := range map[string]string{"list": "list", "dict": "dict", "dataclass": "Node"} {
		_, err := h.CallJSON(ctx, 1, []byte(`"`+kind+`"`))
		wantErr(t, err, ErrOutputEncode, `"cycle"`, "ValueError: the "+what+" contains itself")
	}
}
