//go:build cgo

// Host iterators of every kind feed streams: ones that lock their thread,
// adapters over iter.Pull, another stream's output, and bidirectional
// loops pulled with iter.Pull2 or zipped with a pulled sequence. When the
// input ran as a coroutine of the call's locked thread, each of these
// ended the process ("coro: OS thread locking must match"); each runs in
// a child process so that a regression cannot take the suite down.

package fidius

import (
	"encoding/json"
	"iter"
	"runtime"
	"strings"
	"testing"
	"time"
)

func feedEchoPlugin(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, feedThreadSource, MethodDesc{Name: "from_thread", ClientStreaming: true},
		MethodDesc{Name: "echo", ClientStreaming: true, Streaming: true})
	return mustLoad(t, dir, d)
}

// A thread-bound source: valid for a range loop, fatal as a feed.
func TestFeedSourceLockedHostIterator(t *testing.T) {
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
func TestFeedSourcePulledSourceAsInput(t *testing.T) {
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
func TestFeedSourceBidiOutputAsInput(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	h, b := clientStreamPlugin(t), feedEchoPlugin(t)
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
func TestFeedSourcePullBidi(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	next, stop := iter.Pull2(feedEchoPlugin(t).CallBidiStream(ctx, 1, items(1, 2, 3), nil))
	defer stop()
	if x, err, ok := next(); !ok || err != nil || string(x) != "1" {
		t.Fatalf("next: %s, %v, %v", x, err, ok)
	}
}

// A bidirectional loop that zips its outputs with a pulled sequence.
func TestFeedSourceZipInBidiLoop(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, 30*time.Second))
		return
	}
	next, stop := iter.Pull2(items(10, 20, 30))
	defer stop()
	var got []string
	for x, err := range feedEchoPlugin(t).CallBidiStream(ctx, 1, items(1, 2, 3), nil) {
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
