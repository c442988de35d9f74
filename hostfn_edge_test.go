//go:build cgo

package fidius

import (
	"sync/atomic"
	"testing"
)

// Host functions work while a method runs, on its thread: not at import
// time, not in a thread the plugin started. Those calls are refused with
// HOST_UNBOUND, as the README says.
func TestHostFunctionsOutsideAMethod(t *testing.T) {
	var free atomic.Int64
	hi := slotHost(&free, nil)
	src := slotPluginSource(hi.Hash, 1) + `
import threading

def _try():
    try:
        fidius.host("SlotHost").free_slots()
        return "called"
    except fidius.PluginError as e:
        return e.code

AT_IMPORT = _try()

def at_import():
    return AT_IMPORT

def in_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(_try()))
    t.start()
    t.join()
    return out[0]

def in_method():
    return _try()
`
	dir, d := simplePlugin(t, src, MethodDesc{Name: "at_import"}, MethodDesc{Name: "in_thread"}, MethodDesc{Name: "in_method"})
	h, err := LoadPythonPlugin(dir, d, WithHostInterface(hi))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for i, want := range []string{"HOST_UNBOUND", "HOST_UNBOUND", "called"} {
		if got, err := Call[string](ctx, h, i, nil...); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", d.Methods[i].Name, got, err, want)
		}
	}
}

func TestRawClientStreamRefusedAtLoad(t *testing.T) {
	dir, d := simplePlugin(t, "def load(rows):\n    return b''\n", MethodDesc{Name: "load", ClientStreaming: true, WireRaw: true})
	_, err := LoadPythonPlugin(dir, d)
	wantErr(t, err, ErrWireModeMismatch, `method "load"`, "typed, not raw-wire")
}
