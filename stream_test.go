//go:build cgo

package fidius

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"
	"testing"
	"time"
)

const streamSource = `
__interface_hash__ = 0x1234
events = []

def count(n, label="item"):
    try:
        for i in range(n):
            yield {"i": i, "label": label}
    finally:
        events.append(f"finally {label}")

def fail_after_two():
    yield 1
    yield 2
    raise ValueError("third item broke")

def plain_list():
    return ["a", "b", "c"]

def not_iterable():
    return 42

def take_events():
    out = list(events)
    events.clear()
    return out
`

func streamPlugin(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, streamSource,
		MethodDesc{Name: "count", Streaming: true},
		MethodDesc{Name: "fail_after_two", Streaming: true},
		MethodDesc{Name: "plain_list", Streaming: true},
		MethodDesc{Name: "not_iterable", Streaming: true},
		MethodDesc{Name: "take_events"})
	return mustLoad(t, dir, d)
}

func collect(t *testing.T, seq iter.Seq2[json.RawMessage, error]) ([]string, error) {
	t.Helper()
	var items []string
	for item, err := range seq {
		if err != nil {
			return items, err
		}
		items = append(items, string(item))
	}
	return items, nil
}

func events(t *testing.T, h *PluginHandle) []string {
	t.Helper()
	ev, err := Call[[]string](ctx, h, 4)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestStreamInOrder(t *testing.T) {
	h := streamPlugin(t)
	items, err := collect(t, h.CallStream(ctx, 0, []byte(`[5, "x"]`)))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"i":0,"label":"x"} {"i":1,"label":"x"} {"i":2,"label":"x"} {"i":3,"label":"x"} {"i":4,"label":"x"}`
	if strings.Join(items, " ") != want {
		t.Fatalf("got %s", items)
	}
	if ev := events(t, h); len(ev) != 1 || ev[0] != "finally x" {
		t.Fatalf("events %q", ev)
	}
}

func TestStreamErrorAfterItems(t *testing.T) {
	h := streamPlugin(t)
	items, err := collect(t, h.CallStream(ctx, 1, nil))
	if strings.Join(items, ",") != "1,2" {
		t.Fatalf("items before the error: %q", items)
	}
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "ValueError" || perr.Message != "third item broke" {
		t.Fatalf("got %v", err)
	}
}

func TestStreamStopEarlyRunsFinally(t *testing.T) {
	h := streamPlugin(t)
	n := 0
	for _, err := range h.CallStream(ctx, 0, []byte(`[1000, "broken"]`)) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 2 {
			break
		}
	}
	if ev := events(t, h); len(ev) != 1 || ev[0] != "finally broken" {
		t.Fatalf("after break: events %q", ev)
	}
	// iter.Pull2's stop is the Next/Close form of the same thing.
	next, stop := iter.Pull2(h.CallStream(ctx, 0, []byte(`[1000, "pulled"]`)))
	if item, err, ok := next(); !ok || err != nil || string(item) != `{"i":0,"label":"pulled"}` {
		t.Fatalf("first pulled item %s, %v, %v", item, err, ok)
	}
	stop()
	if ev := events(t, h); len(ev) != 1 || ev[0] != "finally pulled" {
		t.Fatalf("after stop: events %q", ev)
	}
}

func TestStreamCancelRunsFinally(t *testing.T) {
	h := streamPlugin(t)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := 0
	var last error
	for _, err := range h.CallStream(cctx, 0, []byte(`[1000, "cancelled"]`)) {
		if err != nil {
			last = err
			break
		}
		if n++; n == 3 {
			cancel()
		}
	}
	if !errors.Is(last, context.Canceled) || n != 3 {
		t.Fatalf("after %d items: %v", n, last)
	}
	// The loop has returned; the generator is closed in the background.
	if ev := eventually(t, h); len(ev) != 1 || ev[0] != "finally cancelled" {
		t.Fatalf("events %q", ev)
	}
}

// eventually returns the plugin's events once there are some, waiting up
// to 10 seconds for work that goes on in the background.
func eventually(t *testing.T, h *PluginHandle) []string {
	t.Helper()
	var ev []string
	for deadline := time.Now().Add(10 * time.Second); len(ev) == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		ev = events(t, h)
	}
	return ev
}

func TestStreamShapes(t *testing.T) {
	h := streamPlugin(t)
	items, err := collect(t, h.CallStream(ctx, 2, nil))
	if err != nil || strings.Join(items, ",") != `"a","b","c"` {
		t.Fatalf("plain list: %q, %v", items, err)
	}
	_, err = collect(t, h.CallStream(ctx, 3, nil))
	wantErr(t, err, ErrOutputEncode, "iterable", "int")
	_, err = collect(t, h.CallStream(ctx, 0, []byte(`[1,`)))
	wantErr(t, err, ErrInputDecode)
	_, err = h.CallJSON(ctx, 0, []byte(`[1]`))
	wantErr(t, err, ErrWireModeMismatch, "CallStream")
	_, err = collect(t, h.CallStream(ctx, 4, nil))
	wantErr(t, err, ErrWireModeMismatch, "does not stream")
	_, err = collect(t, h.CallStream(ctx, 99, nil))
	wantErr(t, err, ErrInvalidMethodIndex)
}

func TestConcurrentStreams(t *testing.T) {
	h := streamPlugin(t)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			label := fmt.Sprintf("g%d", g)
			i := 0
			for item, err := range h.CallStream(ctx, 0, []byte(fmt.Sprintf(`[200, %q]`, label))) {
				if err != nil {
					t.Error(err)
					return
				}
				if want := fmt.Sprintf(`{"i":%d,"label":%q}`, i, label); string(item) != want {
					t.Errorf("got %s, want %s", item, want)
					return
				}
				i++
			}
			if i != 200 {
				t.Errorf("%s: %d items", label, i)
			}
		}()
	}
	wg.Wait()
	if ev := events(t, h); len(ev) != 8 {
		t.Fatalf("events %q", ev)
	}
}

func TestStreamIterErrors(t *testing.T) {
	dir, d := simplePlugin(t, `
from fidius import PluginError

class Feed:
    def __iter__(self):
        raise PluginError("AUTH", "token expired", details={"retry": False})

class BrokenIter:
    def __iter__(self):
        raise TypeError("broken inside __iter__")

class NoIter:
    __iter__ = None

def feed(): return Feed()
def broken(): return BrokenIter()
def none_iter(): return NoIter()
def number(): return 42
`, MethodDesc{Name: "feed", Streaming: true}, MethodDesc{Name: "broken", Streaming: true},
		MethodDesc{Name: "none_iter", Streaming: true}, MethodDesc{Name: "number", Streaming: true})
	h := mustLoad(t, dir, d)
	_, err := collect(t, h.CallStream(ctx, 0, nil))
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "AUTH" || perr.Message != "token expired" || string(perr.Details) != `{"retry":false}` {
		t.Fatalf("__iter__ raising PluginError: %v", err)
	}
	// A TypeError raised by an __iter__ the type does define is the plugin's.
	_, err = collect(t, h.CallStream(ctx, 1, nil))
	if !errors.As(err, &perr) || perr.Code != "TypeError" || perr.Message != "broken inside __iter__" || !strings.Contains(string(perr.Details), "in __iter__") {
		t.Fatalf("__iter__ raising TypeError: %v", err)
	}
	// Types without __iter__ are not iterable: the result is the problem.
	_, err = collect(t, h.CallStream(ctx, 2, nil))
	wantErr(t, err, ErrOutputEncode, `"none_iter"`, "streaming method must return an iterable, not NoIter")
	_, err = collect(t, h.CallStream(ctx, 3, nil))
	wantErr(t, err, ErrOutputEncode, `"number"`, "streaming method must return an iterable, not int")
}
