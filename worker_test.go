// Tests of worker mode: plugins in worker processes (WithWorkers).

package fidius

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
)

func loadWorkers(t testing.TB, dir string, d *InterfaceDescriptor, opts ...Option) *PluginHandle {
	t.Helper()
	h, err := LoadPythonPlugin(dir, d, append([]Option{WithWorkers(1)}, opts...)...)
	if err != nil {
		t.Fatalf("LoadPythonPlugin with workers: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestWorkerSmoke(t *testing.T) {
	dir, d := simplePlugin(t, `
def hello(name):
    return "hi " + name
def raw(b):
    return b[::-1]
def boom():
    raise ValueError("nope")
`, MethodDesc{Name: "hello"}, MethodDesc{Name: "raw", WireRaw: true}, MethodDesc{Name: "boom"})
	h := loadWorkers(t, dir, d)
	out, err := h.CallJSON(context.Background(), 0, []byte(`["you"]`))
	if err != nil || string(out) != `"hi you"` {
		t.Fatalf("hello: %s, %v", out, err)
	}
	out, err = h.CallRaw(context.Background(), 1, []byte("abc"))
	if err != nil || string(out) != "cba" {
		t.Fatalf("raw: %q, %v", out, err)
	}
	_, err = h.CallJSON(context.Background(), 2, nil)
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "ValueError" || perr.Message != "nope" {
		t.Fatalf("boom: %v", err)
	}
	var d2 map[string]any
	_ = json.Unmarshal(perr.Details, &d2)
	if _, ok := d2["traceback"]; !ok {
		t.Fatalf("details %s", perr.Details)
	}
}
