//go:build cgo

package fidius

import (
	"math"
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
