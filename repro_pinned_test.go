//go:build cgo && fidius_repro

// Reproductions of defects not fixed on this branch: a host-fed stream's
// input runs as a coroutine (iter.Pull2) of a locked thread, and a
// bidirectional stream under a context that cannot end locks its
// goroutine across yields, so any iterator that meets another coroutine
// or changes the thread's locking ends the process with Go's fatal
// "coro: OS thread locking must match locking at coroutine creation".
// And a host function that calls runtime.Goexit. Run with: go test -tags fidius_repro -count=1 -run TestRepro .

package fidius

import (
	"encoding/json"
	"iter"
	"runtime"
	"strings"
	"testing"
	"time"
)

func reproBidi(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, feedThreadSource, MethodDesc{Name: "from_thread", ClientStreaming: true},
		MethodDesc{Name: "echo", ClientStreaming: true, Streaming: true})
	return mustLoad(t, dir, d)
}

// A thread-bound source: valid for a range loop, fatal as a feed.
func TestReproLockedHostIterator(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	h := clientStreamPlugin(t)
	locked := func(yield func(json.RawMessage, error) bool) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for i := 0; i < 3; i++ {
			if !yield(json.RawMessage("1"), nil) {
				return
			}
		}
	}
	if out, err := h.CallClientStream(ctx, hidx(h, "total"), locked, nil); err != nil || string(out) != "3" {
		t.Fatalf("total: %s, %v", out, err)
	}
}

// An input adapted from a pull-style source made before the call.
func TestReproPulledSourceAsInput(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	h := clientStreamPlugin(t)
	next, stop := iter.Pull2(items(1, 2, 3))
	defer stop()
	adapted := func(yield func(json.RawMessage, error) bool) {
		for {
			x, err, ok := next()
			if !ok || !yield(x, err) {
				return
			}
		}
	}
	if out, err := h.CallClientStream(ctx, hidx(h, "total"), adapted, nil); err != nil || string(out) != "6" {
		t.Fatalf("total: %s, %v", out, err)
	}
}

// One plugin's bidirectional output as another call's input.
func TestReproBidiOutputAsInput(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	h, b := clientStreamPlugin(t), reproBidi(t)
	out, err := h.CallClientStream(ctx, hidx(h, "total"), b.CallBidiStream(ctx, 1, items(1, 2, 3), nil), nil)
	if err != nil || string(out) != "6" {
		t.Fatalf("total: %s, %v", out, err)
	}
	got, err := collect(t, b.CallBidiStream(ctx, 1, b.CallBidiStream(ctx, 1, items(1, 2, 3), nil), nil))
	if err != nil || strings.Join(got, ",") != "1,2,3" {
		t.Fatalf("chained: %v, %v", got, err)
	}
}

// iter.Pull2 of a bidirectional stream.
func TestReproPullBidi(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	next, stop := iter.Pull2(reproBidi(t).CallBidiStream(ctx, 1, items(1, 2, 3), nil))
	defer stop()
	if x, err, ok := next(); !ok || err != nil || string(x) != "1" {
		t.Fatalf("next: %s, %v, %v", x, err, ok)
	}
}

// A bidirectional loop that zips its outputs with a pulled sequence.
func TestReproZipInBidiLoop(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	next, stop := iter.Pull2(items(10, 20, 30))
	defer stop()
	var got []string
	for x, err := range reproBidi(t).CallBidiStream(ctx, 1, items(1, 2, 3), nil) {
		if err != nil {
			t.Fatal(err)
		}
		y, _, _ := next()
		got = append(got, string(x)+"+"+string(y))
	}
	if strings.Join(got, ",") != "1+10,2+20,3+30" {
		t.Fatalf("zip: %v", got)
	}
}

// A host function that ends its goroutine (t.FailNow, runtime.Goexit)
// unwinds through the C frames of the call: the call's thread place is
// never given back (and the Python frames are abandoned), so with one
// thread allowed every later call waits for ever.
func TestReproGoexitInHostFunction(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	h := hostReentryPlugin(t, func(json.RawMessage) (any, error) {
		runtime.Goexit()
		return nil, nil
	})
	prev := SetThreadLimit(1)
	defer SetThreadLimit(prev)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		Call[string](ctx, h, 1) // shown(): its str() calls the host
	}()
	<-exited
	done := make(chan struct{})
	go func() { Call[string](ctx, h, 2); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("the next call waits for ever: the place was never given back")
	}
}
