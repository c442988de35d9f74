//go:build cgo

package fidius

import (
	"encoding/json"
	"runtime"
	"strings"
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
	return loadWithBack(t, hostReentrySource, back,
		MethodDesc{Name: "locked"}, MethodDesc{Name: "shown"}, MethodDesc{Name: "small"}, MethodDesc{Name: "big"})
}

// Two calls at once with one thread allowed into Python, the first holding
// a plugin lock across a host call: its way back must not wait for the
// place the second took while it waits for the lock.
func TestHostCallReturnsPastTheGate(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	h := hostReentryPlugin(t, func(json.RawMessage) (any, error) {
		time.Sleep(200 * time.Millisecond)
		return "ok", nil
	})
	prev := SetThreadLimit(1)
	defer SetThreadLimit(prev)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := Call[string](ctx, h, 0)
			errs <- err
		}()
		time.Sleep(50 * time.Millisecond)
	}
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("deadlock: a call holding a plugin lock waits for the gate place of a call waiting for that lock")
		}
	}
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

const bigAnswerSource = `
import fidius

__fidius_host_imports__ = {"Big": {"version": 1, "hash": 0x43}}

def ask():
    return len(fidius.host("Big").big("z" * 40_000_000))

def read(rows):
    return sum(len(r) for r in rows)
`

// A large host answer or input item does not stay allocated on the thread
// it passed through, as a large result does not.
func TestLargeHostAnswerIsNotKept(t *testing.T) {
	const n = 40_000_000
	dir, d := simplePlugin(t, bigAnswerSource, MethodDesc{Name: "ask"}, MethodDesc{Name: "read", ClientStreaming: true})
	hi := &HostInterface{Name: "Big", Version: 1, Hash: 0x43, Funcs: map[string]HostFunc{
		"big": func(json.RawMessage) (any, error) { return strings.Repeat("x", n), nil },
	}}
	h, err := LoadPythonPlugin(dir, d, WithHostInterface(hi))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	runtime.LockOSThread() // calls under context.Background run on this thread
	defer runtime.UnlockOSThread()
	if got, err := Call[int](ctx, h, 0); err != nil || got != n {
		t.Fatalf("ask: %v, %v", got, err)
	}
	big, _ := json.Marshal(strings.Repeat("y", n))
	if out, err := h.CallClientStream(ctx, 1, items(json.RawMessage(big)), nil); err != nil || string(out) != "40000000" {
		t.Fatalf("read: %s, %v", out, err)
	}
	if c := sideBufferCap(); c > 1<<20 {
		t.Fatalf("the thread's buffers keep %d bytes after a large host answer and input item", c)
	}
	if c := threadBufferCap(); c > 1<<20 {
		t.Fatalf("the thread's buffer keeps %d bytes after a host call's large arguments", c)
	}
}
