//go:build cgo

package fidius

import (
	"context"
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const reentrySource = `
import fidius

__fidius_host_imports__ = {"Back": {"version": 1, "hash": 0x42}}

def first(rows):
    # Reads one input, yields it, stops.
    for r in rows:
        yield r
        return

def echo(rows):
    for r in rows:
        yield r

def stash(rows):
    global kept
    kept = rows
    # Calls the host, which calls read_kept on this plugin, on this thread.
    return fidius.host("Back").again()

def read_kept():
    try:
        return next(kept)
    except BaseException as e:
        return type(e).__name__ + ": " + str(e)
`

func reentryPlugin(t *testing.T, back func(json.RawMessage) (any, error)) *PluginHandle {
	return loadWithBack(t, reentrySource, back,
		MethodDesc{Name: "first", ClientStreaming: true, Streaming: true},
		MethodDesc{Name: "echo", ClientStreaming: true, Streaming: true},
		MethodDesc{Name: "stash", ClientStreaming: true},
		MethodDesc{Name: "read_kept"})
}

// loadWithBack loads a plugin of src offered the host interface "Back",
// whose one function "again" is back.
func loadWithBack(t *testing.T, src string, back HostFunc, methods ...MethodDesc) *PluginHandle {
	dir, d := simplePlugin(t, src, methods...)
	hi := &HostInterface{Name: "Back", Version: 1, Hash: 0x42, Funcs: map[string]HostFunc{"again": back}}
	h, err := LoadPythonPlugin(dir, d, WithHostInterface(hi))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// careless yields three items and ignores what yield returns, a common
// slip in hand-written iterators.
func careless(yield func(json.RawMessage, error) bool) {
	for i := 0; i < 3; i++ {
		yield(json.RawMessage("1"), nil)
	}
}

// A bidirectional stream under a context that can end, whose host iterator
// ignores yield's result: when the plugin stops reading (or the host
// leaves the loop), the stream must still end.
func TestBidiCarelessIteratorUnpinned(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	h := reentryPlugin(t, nil)
	c, cancel := context.WithCancel(ctx)
	defer cancel()
	// The plugin stops reading after one input.
	got, err := collect(t, h.CallBidiStream(c, 0, careless, nil))
	if err != nil || strings.Join(got, ",") != "1" {
		t.Fatalf("first: %v, %v", got, err)
	}
	// The host leaves the loop after one output.
	for _, err := range h.CallBidiStream(c, 1, careless, nil) {
		if err != nil {
			t.Fatal(err)
		}
		break
	}
}

// A plugin that keeps its input and reads it from a nested call on the same
// thread (through a host function that calls the plugin back) must get an
// exception, not end the process.
func TestFeedReadFromNestedCall(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	var h *PluginHandle
	h = reentryPlugin(t, func(json.RawMessage) (any, error) {
		return Call[string](ctx, h, 3)
	})
	out, err := h.CallClientStream(ctx, 2, items(1, 2), nil)
	t.Logf("stash: %s, %v", out, err)
	if err != nil || !strings.Contains(string(out), "RuntimeError") {
		t.Errorf("stash: %s, %v", out, err)
	}
}

const feedEncodeSource = `
class Next:
    # Its str(), called while the item is being encoded, reads the input.
    def __init__(self, rows):
        self.rows = rows
    def __str__(self):
        return str(next(self.rows))

def pairs(rows):
    for r in rows:
        yield ["abcdefghijklmnopqrstuvwxyz", r, Next(rows)]

def small():
    return "X"
`

// The host's iterator may call a plugin on the call's thread while an item
// is being encoded: the item must come out whole.
func TestFeedReadDuringEncoding(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	dir, d := simplePlugin(t, feedEncodeSource,
		MethodDesc{Name: "pairs", ClientStreaming: true, Streaming: true}, MethodDesc{Name: "small"})
	h := mustLoad(t, dir, d)
	calling := func(yield func(json.RawMessage, error) bool) {
		for i := 0; i < 4; i++ {
			if _, err := h.CallJSON(ctx, 1, nil); err != nil {
				yield(nil, err)
				return
			}
			if !yield(json.RawMessage(strconv.Itoa(i)), nil) {
				return
			}
		}
	}
	got, err := collect(t, h.CallBidiStream(ctx, 0, calling, nil))
	if want := `["abcdefghijklmnopqrstuvwxyz",0,"1"] ["abcdefghijklmnopqrstuvwxyz",2,"3"]`; err != nil || strings.Join(got, " ") != want {
		t.Errorf("pairs: %v, %v; want %s", got, err, want)
	}
}

func feedCount() int {
	feeds.Lock()
	defer feeds.Unlock()
	return len(feeds.m)
}

// A client stream whose caller gives up while waiting for a thread leaves
// nothing registered behind.
func TestClientStreamGivenUpAtTheGate(t *testing.T) {
	inProcessOnly(t, "SetThreadLimit bounds threads inside this process's Python")
	h := clientStreamPlugin(t)
	prev := SetThreadLimit(1)
	defer SetThreadLimit(prev)
	before := feedCount()
	// Hold the only place for a while.
	done := make(chan struct{})
	go func() {
		defer close(done)
		slow := func(yield func(json.RawMessage, error) bool) {
			time.Sleep(300 * time.Millisecond)
			yield(json.RawMessage("1"), nil)
		}
		h.CallClientStream(ctx, hidx(h, "slow_sum"), slow, nil)
	}()
	time.Sleep(50 * time.Millisecond)
	for range 20 {
		c, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
		_, err := h.CallClientStream(c, hidx(h, "total"), items(1, 2), nil)
		cancel()
		if err == nil {
			t.Fatal("a call got through the gate")
		}
	}
	<-done
	time.Sleep(100 * time.Millisecond)
	if n := feedCount() - before; n != 0 {
		t.Errorf("%d feeds left registered by calls that never ran", n)
	}
}

// Deadlines at every moment of client and bidirectional streams: nothing
// is left behind, every started iterator is stopped, no crash.
func TestFedStreamsUnderTinyDeadlines(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 2*time.Minute))
		return
	}
	h := clientStreamPlugin(t)
	dir, d := simplePlugin(t, feedThreadSource, MethodDesc{Name: "from_thread", ClientStreaming: true},
		MethodDesc{Name: "echo", ClientStreaming: true, Streaming: true})
	b := mustLoad(t, dir, d)
	baseFeeds, baseG := feedCount(), runtime.NumGoroutine()
	var cs []*counting
	for n := 0; n < 400; n++ {
		dl := time.Duration(n%40) * 25 * time.Microsecond
		c, cancel := context.WithTimeout(ctx, dl)
		cc := &counting{}
		cs = append(cs, cc)
		if n%2 == 0 {
			h.CallClientStream(c, hidx(h, "total"), func(yield func(json.RawMessage, error) bool) {
				for x, err := range cc.seq() {
					if x != nil && string(x) == "1000" {
						return
					}
					if !yield(x, err) {
						return
					}
				}
			}, nil)
		} else {
			k := 0
			for _, err := range b.CallBidiStream(c, 1, cc.seq(), nil) {
				if err != nil || k > 50 {
					break
				}
				k++
			}
		}
		cancel()
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ok := feedCount() == baseFeeds && runtime.NumGoroutine() <= baseG+2
		for _, cc := range cs {
			if cc.produced.Load() > 0 && !cc.stopped.Load() {
				ok = false
			}
		}
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopped := 0
	for _, cc := range cs {
		if cc.produced.Load() > 0 && !cc.stopped.Load() {
			stopped++
		}
	}
	buf := make([]byte, 1<<20)
	t.Errorf("left: %d feeds, %d goroutines (from %d), %d iterators never stopped\n%s", feedCount()-baseFeeds, runtime.NumGoroutine(), baseG, stopped, buf[:runtime.Stack(buf, true)])
}

// Many goroutines leave bidirectional loops early, under both kinds of
// context, with calls in the loop body.
func TestBidiConcurrentEarlyBreak(t *testing.T) {
	dir, d := simplePlugin(t, feedThreadSource, MethodDesc{Name: "from_thread", ClientStreaming: true},
		MethodDesc{Name: "echo", ClientStreaming: true, Streaming: true})
	b := mustLoad(t, dir, d)
	other := clientStreamPlugin(t)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g%3 == 0 {
				runtime.LockOSThread() // already locked when the stream starts
				defer runtime.UnlockOSThread()
			}
			for n := 0; n < 30; n++ {
				c := ctx
				if (g+n)%2 == 1 {
					c = cancellable(t)
				}
				var cc counting
				k := 0
				for x, err := range b.CallBidiStream(c, 1, cc.seq(), nil) {
					if err != nil {
						t.Error(err)
						return
					}
					if _, err := other.CallClientStream(c, hidx(other, "total"), items(json.RawMessage(x)), nil); err != nil {
						t.Error(err)
						return
					}
					if k++; k == n%5+1 {
						break
					}
				}
				if !cc.stopped.Load() {
					t.Errorf("goroutine %d, run %d: the iterator was not stopped when the loop was left", g, n)
				}
			}
		}()
	}
	wg.Wait()
}
