//go:build cgo

package fidius

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestAppendArgsMatchesEncodingJSON(t *testing.T) {
	type point struct{ X, Y int }
	args := []any{"plain", "quote\" back\\slash", "ctl\x00\x01\x1f\n\r\t", "é😀", "bad\xffutf8\xc3", "<html>&",
		"", 0, -42, int64(1) << 62, true, false, nil, 1.5, point{1, 2}, []string{"a"}, map[string]int{"k": 1},
		json.RawMessage(`{"raw":true}`)}
	got, err := appendArgs(nil, args)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(args)
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %v", got, err)
	}
	json.Unmarshal(want, &w)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if _, err := appendArgs(nil, []any{make(chan int)}); err == nil {
		t.Fatal("a channel encoded")
	}
}

func TestCallArgumentTypesReachPython(t *testing.T) {
	h := greeter(t)
	got, err := Call[[][2]string](ctx, h, idx(t, h, "types"), "s\n", 7, int64(-8), true, nil, 2.5, []int{1}, map[string]bool{"b": false})
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]string{{"str", `'s\n'`}, {"int", "7"}, {"int", "-8"}, {"bool", "True"}, {"NoneType", "None"},
		{"float", "2.5"}, {"list", "[1]"}, {"dict", "{'b': False}"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q", got)
	}
	// Results with escapes take the encoding/json path.
	s, err := Call[string](ctx, h, idx(t, h, "greet"), "a\"b\\c\u00e9")
	if err != nil || s != "Hello, a\"b\\c\u00e9!" {
		t.Fatalf("got %q, %v", s, err)
	}
	raw, err := Call[json.RawMessage](ctx, h, idx(t, h, "echo"), 1, "x")
	if err != nil || string(raw) != `[1,"x"]` {
		t.Fatalf("RawMessage: %s, %v", raw, err)
	}
}

func TestCallRawAppend(t *testing.T) {
	h := greeter(t)
	reverse := idx(t, h, "reverse")
	buf := make([]byte, 0, 1<<20)
	out, err := h.CallRawAppend(ctx, reverse, buf[:0], []byte("abc"))
	if err != nil || string(out) != "cba" || &out[0] != &buf[:1][0] {
		t.Fatalf("got %q, %v (reused buffer: %v)", out, err, len(out) > 0 && &out[0] == &buf[:1][0])
	}
	out, err = h.CallRawAppend(ctx, reverse, []byte("prefix:"), []byte("xyz"))
	if err != nil || string(out) != "prefix:zyx" {
		t.Fatalf("got %q, %v", out, err)
	}
	big := make([]byte, 200<<10)
	big[0] = 1
	out, err = h.CallRawAppend(ctx, reverse, buf[:0], big)
	if err != nil || len(out) != len(big) || out[len(out)-1] != 1 || &out[0] != &buf[:1][0] {
		t.Fatalf("large result: len %d, %v", len(out), err)
	}
	allocs := testing.AllocsPerRun(100, func() { out, _ = h.CallRawAppend(ctx, reverse, buf[:0], big) })
	if allocs != 0 {
		t.Fatalf("%.1f allocations per call with a reused buffer", allocs)
	}
	dst := []byte("keep")
	out, err = h.CallRawAppend(ctx, idx(t, h, "raw_str"), dst, nil)
	wantErr(t, err, ErrOutputEncode)
	if string(out) != "keep" {
		t.Fatalf("dst after an error: %q", out)
	}
}
