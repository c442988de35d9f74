//go:build cgo

package fidius

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

type floatArgs struct {
	Ratio  float64            `json:"ratio"`
	Small  float32            `json:"small,omitempty"`
	Zero   float64            `json:"zero,omitempty"`
	List   []float64          `json:"list"`
	ByName map[string]float64 `json:"by_name"`
	Ptr    *float64           `json:"ptr"`
	Any    any                `json:"any"`
	When   time.Time          `json:"when"`
	Count  int                `json:"count"`
	hidden float64
	FloatEmbedded
}

type FloatEmbedded struct {
	Inner float64 `json:"inner"`
}

type celsius float64

type node struct {
	V    float64 `json:"v"`
	Next *node   `json:"next,omitempty"`
}

func TestFloatsArriveAsPythonFloats(t *testing.T) {
	dir, d := simplePlugin(t, `
def kinds(*args):
    def k(v):
        if isinstance(v, dict):
            return {key: k(x) for key, x in v.items()}
        if isinstance(v, list):
            return [k(x) for x in v]
        return type(v).__name__ + ":" + repr(v)
    return [k(a) for a in args]
`, MethodDesc{Name: "kinds"})
	h := mustLoad(t, dir, d)
	two := 2.0
	got, err := Call[[]any](ctx, h, 0,
		float64(2), float32(0.5), celsius(-3), 1e21, 1e-7, []float64{1, 2.5},
		map[string]any{"a": 4.0, "b": []any{5.0, "s", 6}},
		floatArgs{Ratio: 1, List: []float64{3}, ByName: map[string]float64{"x": 7}, Ptr: &two, Any: 8.0,
			When: time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), Count: 9, hidden: 1, FloatEmbedded: FloatEmbedded{Inner: 10}},
		&node{V: 1, Next: &node{V: 2.5}},
		int64(3), "2",
	)
	if err != nil {
		t.Fatal(err)
	}
	want := []any{
		"float:2.0", "float:0.5", "float:-3.0", "float:1e+21", "float:1e-07", []any{"float:1.0", "float:2.5"},
		map[string]any{"a": "float:4.0", "b": []any{"float:5.0", "str:'s'", "int:6"}},
		map[string]any{"ratio": "float:1.0", "list": []any{"float:3.0"}, "by_name": map[string]any{"x": "float:7.0"},
			"ptr": "float:2.0", "any": "float:8.0", "when": "str:'2026-11-25T00:00:00Z'", "count": "int:9", "inner": "float:10.0"},
		map[string]any{"v": "float:1.0", "next": map[string]any{"v": "float:2.5"}},
		"int:3", "str:'2'",
	}
	if !deepEqualJSON(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}

	// encoding/json's refusals stay refusals.
	_, err = Call[any](ctx, h, 0, math.NaN())
	wantErr(t, err, ErrInputDecode, "unsupported value")
	_, err = Call[any](ctx, h, 0, []float64{math.Inf(1)})
	wantErr(t, err, ErrInputDecode, "unsupported value")
}

// Shapes encoding/json handles that the float shadows got wrong: a named
// float embedded first replaced the whole struct by its value, one
// embedded later (or an embedded type with methods) sent every float as
// an int, ",string" became a number, and a recursive type's element
// shadow, built while the type was, was kept without its floats.
func TestFloatShadowShapes(t *testing.T) {
	type strFloat struct {
		F float64  `json:"f,string"`
		P *float32 `json:"p,string"`
		G float64  `json:"g"`
	}
	half := float32(0.5)
	for _, c := range []struct {
		name string
		v    any
		want string
	}{
		{"embedded named float, first", embedsNamed{Temp: 1, X: 2}, `{"Temp":1.0,"X":2.0}`},
		{"embedded named float, second", tempSecond{2, 1}, `{"X":2.0,"Temp":1.0}`},
		{"unexported embedded float", embedsLower{1, 2}, `{"X":2.0}`},
		{"embedded type with methods, first", baseFirst{Base{1}, 2}, `{"ID":1,"Ratio":2.0}`},
		{"embedded type with methods, second", baseSecond{2, Base{1}}, `{"Ratio":2.0,"ID":1}`},
		{"embedded pointer with methods", basePtr{3, &Base{1}}, `{"Ratio":3.0,"ID":1}`},
		{"embedded pointer", embedsPtr{InnerP: &InnerP{A: 1}, B: 2}, `{"A":1.0,"B":2.0}`},
		{"embedded nil pointer", embedsPtr{B: 2}, `{"B":2.0}`},
		{",string option", strFloat{F: 2, P: &half, G: 3}, `{"f":"2","p":"0.5","g":3.0}`},
		{"recursive type", rtree{V: 1}, `{"v":1.0}`},
		{"slice of it, after it", []rtree{{V: 3}}, `[{"v":3.0}]`},
		{"array", [2]float32{1, 2}, `[1.0,2.0]`},
	} {
		b, err := marshalArg(c.v)
		if err != nil || string(b) != c.want {
			j, _ := json.Marshal(c.v)
			t.Errorf("%s: %s, %v; want %s (encoding/json: %s)", c.name, b, err, c.want, j)
		}
	}
}

type rtree struct {
	V    float64 `json:"v"`
	Kids []rtree `json:"kids,omitempty"`
}

type Temp float64

type embedsNamed struct {
	Temp
	X float64
}

type tempSecond struct {
	X float64
	Temp
}

type lowerTemp float64

type embedsLower struct {
	lowerTemp
	X float64
}

type InnerP struct{ A float64 }

type embedsPtr struct {
	*InnerP
	B float64
}

type Base struct{ ID int }

func (Base) String() string { return "base" }

type baseFirst struct {
	Base
	Ratio float64
}

type baseSecond struct {
	Ratio float64
	Base
}

type basePtr struct {
	Ratio float64
	*Base
}

// A value that contains itself is encoding/json's error, not a stack
// overflow that ends the process; deep values that do not are fine.
func TestFloatShadowCycle(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	m := map[string]any{"f": 1.0}
	m["self"] = m
	s := make([]any, 1)
	s[0] = s
	type node struct {
		F    float64
		Next any
	}
	n := &node{F: 1}
	n.Next = n
	for _, v := range []any{m, s, n} {
		_, err := marshalArg(v)
		var uv *json.UnsupportedValueError
		if !errors.As(err, &uv) || !strings.Contains(err.Error(), "encountered a cycle") {
			t.Errorf("%T containing itself: %v", v, err)
		}
	}
	deep := any(1.0)
	for range 5000 {
		deep = []any{deep}
	}
	b, err := marshalArg(deep)
	if err != nil || !bytes.Contains(b, []byte("[1.0]")) {
		t.Errorf("5000 levels: %v", err)
	}
}

// First uses of types from many goroutines at once (run with -race).
func TestFloatShadowConcurrentFirstUse(t *testing.T) {
	type a struct {
		X float32
		Y []struct{ Z *float64 }
		M map[string]any
	}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			z := float64(i)
			for _, v := range []any{a{X: 1, Y: []struct{ Z *float64 }{{&z}}, M: map[string]any{"w": float32(2)}}, []rtree{{V: 1}}, baseSecond{1, Base{}}} {
				if _, err := marshalArg(v); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
}

func deepEqualJSON(a, b any) bool {
	switch a := a.(type) {
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !deepEqualJSON(a[i], b[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k := range a {
			if !deepEqualJSON(a[k], b[k]) {
				return false
			}
		}
		return true
	}
	return a == b
}

func BenchmarkCallFloatStruct(b *testing.B) {
	dir, d := simplePlugin(b, "def noop(*a):\n    return None\n", MethodDesc{Name: "noop"})
	h := mustLoad(b, dir, d)
	arg := floatArgs{Ratio: 1, List: []float64{3}, ByName: map[string]float64{"x": 7}}
	for b.Loop() {
		if _, err := Call[any](ctx, h, 0, arg); err != nil {
			b.Fatal(err)
		}
	}
}
