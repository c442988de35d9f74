//go:build cgo

package fidius

import (
	"encoding/json"
	"testing"
	"time"
)

const hostReentrySource = `
import fidius, threading

__fidius_host_imports__ = {"Back": {"version": 1, "hash": 0x42}}

lock = threading.Lock()

def locked():
    # A plugin lock held across a host call.
    with lock:
        return fidius.host("Back").again()

class Shown:
    # Its str(), called while the result is being encoded, asks the host,
    # and the host asks this plugin.
    def __str__(self):
        return str(fidius.host("Back").again())

def shown():
    return ["abcdefghijklmnopqrstuvwxyz", Shown(), "tail"]

def small():
    return "X"

def big():
    return "B" * (2 << 20)
`

func hostReentryPlugin(t *testing.T, back func(json.RawMessage) (any, error)) *PluginHandle {
	dir, d := simplePlugin(t, hostReentrySource,
		MethodDesc{Name: "locked"}, MethodDesc{Name: "shown"}, MethodDesc{Name: "small"}, MethodDesc{Name: "big"})
	hi := &HostInterface{Name: "Back", Version: 1, Hash: 0x42, Funcs: map[string]HostFunc{"again": back}}
	h, err := LoadPythonPlugin(dir, d, WithHostInterface(hi))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// A host function called while a result is being encoded may call the
// plugin back on the same thread: the result must come out whole.
func TestHostCallDuringEncoding(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	var h *PluginHandle
	method := 2
	h = hostReentryPlugin(t, func(json.RawMessage) (any, error) {
		s, err := Call[string](ctx, h, method)
		return len(s), err
	})
	out, err := h.CallJSON(ctx, 1, nil)
	if want := `["abcdefghijklmnopqrstuvwxyz","1","tail"]`; err != nil || string(out) != want {
		t.Errorf("small nested result: %s, %v; want %s", out, err, want)
	}
	method = 3 // a nested result large enough that its thread buffer is freed
	out, err = h.CallJSON(ctx, 1, nil)
	if want := `["abcdefghijklmnopqrstuvwxyz","2097152","tail"]`; err != nil || string(out) != want {
		t.Errorf("big nested result: %.200s, %v; want %s", out, err, want)
	}
}
