//go:build cgo

package fidius

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fidiusFixture copies one of fidius's own test packages (testdata/fidius,
// taken unchanged from fidius's tests/) to a temporary directory, with its
// __HASH_PLACEHOLDER__ replaced by hash, as fidius's own tests stage them.
func fidiusFixture(t *testing.T, name string, hash uint64) string {
	t.Helper()
	src := filepath.Join("testdata", "fidius", name)
	dst := filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dst)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".py") {
			p := filepath.Join(dst, e.Name())
			b, _ := os.ReadFile(p)
			b = []byte(strings.ReplaceAll(string(b), "__HASH_PLACEHOLDER__", fmt.Sprintf("0x%016X", hash)))
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dst
}

// The descriptors of fidius's Sink and Transformer test interfaces:
//
//	fn load(&self, rows: Stream<u64>) -> u64;
//	fn transform(&self, input: Stream<u64>) -> Stream<u64>;
var (
	sinkDesc = &InterfaceDescriptor{
		InterfaceName: "Sink",
		InterfaceHash: InterfaceHash(SignatureString("load", []string{"u64"}, "u64", false, false, true)),
		Methods:       []MethodDesc{{Name: "load", ClientStreaming: true}},
	}
	transformerDesc = &InterfaceDescriptor{
		InterfaceName: "Transformer",
		InterfaceHash: InterfaceHash(SignatureString("transform", []string{"u64"}, "u64", false, true, true)),
		Methods:       []MethodDesc{{Name: "transform", Streaming: true, ClientStreaming: true}},
	}
)

// items yields the JSON of xs.
func items(xs ...any) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		for _, x := range xs {
			b, _ := json.Marshal(x)
			if !yield(b, nil) {
				return
			}
		}
	}
}

// counting yields 0, 1, 2, ... for ever, counting what it produced and
// recording when its cleanup ran.
type counting struct {
	produced atomic.Int64
	stopped  atomic.Bool
}

func (c *counting) seq() iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		defer c.stopped.Store(true)
		for i := 0; ; i++ {
			c.produced.Add(1)
			if !yield(json.RawMessage(fmt.Sprint(i)), nil) {
				return
			}
		}
	}
}

func TestSignatureMarkersMatchFidius(t *testing.T) {
	// The spelling fidius's macro crate gives (hash.rs): "!stream" then
	// "<stream" for a bidirectional method.
	if got := SignatureString("transform", []string{"u64"}, "u64", false, true, true); got != "transform:u64->u64!stream<stream" {
		t.Errorf("bidirectional signature %q", got)
	}
	if got := SignatureString("load", []string{"u64"}, "u64", false, false, true); got != "load:u64->u64<stream" {
		t.Errorf("client-streaming signature %q", got)
	}
}

func TestClientStreamFidiusFixture(t *testing.T) {
	dir := fidiusFixture(t, "test-plugin-py-client-stream", sinkDesc.InterfaceHash)
	h := mustLoad(t, dir, sinkDesc)
	for _, c := range []context.Context{ctx, cancellable(t)} {
		out, err := h.CallClientStream(c, 0, items(1, 2, 3, 4, 5), nil)
		if err != nil || string(out) != "15" {
			t.Fatalf("load([1..5]) = %s, %v; want 15", out, err)
		}
	}
	// Misuse is a wire-mode mismatch that names the right call.
	_, err := h.CallJSON(ctx, 0, []byte(`[[1,2]]`))
	wantErr(t, err, ErrWireModeMismatch, "CallClientStream")
}

func TestBidiStreamFidiusFixture(t *testing.T) {
	dir := fidiusFixture(t, "test-plugin-py-bidi-stream", transformerDesc.InterfaceHash)
	h := mustLoad(t, dir, transformerDesc)
	for _, c := range []context.Context{ctx, cancellable(t)} {
		got, err := collect(t, h.CallBidiStream(c, 0, items(1, 2, 3, 4, 5), nil))
		if err != nil || strings.Join(got, ",") != "2,4,6,8,10" {
			t.Fatalf("transform([1..5]) = %v, %v; want 2,4,6,8,10", got, err)
		}
	}

	// Lazy: an unbounded input; take three outputs and leave. The host's
	// iterator produced only what the plugin pulled, and was stopped.
	var c counting
	var got []string
	for item, err := range h.CallBidiStream(ctx, 0, c.seq(), nil) {
		if err != nil {
			t.Fatal(err)
		}
		if got = append(got, string(item)); len(got) == 3 {
			break
		}
	}
	if strings.Join(got, ",") != "0,2,4" {
		t.Errorf("first three outputs %v, want 0,2,4", got)
	}
	if n := c.produced.Load(); n != 3 {
		t.Errorf("the host produced %d items for 3 outputs, want 3", n)
	}
	if !c.stopped.Load() {
		t.Error("the host's iterator was not stopped when the stream was left")
	}
	_, err := h.CallClientStream(ctx, 0, items(1), nil)
	wantErr(t, err, ErrWireModeMismatch, "CallBidiStream")
}

// cancellable is a context that can end but does not, within the test.
func cancellable(t *testing.T) context.Context {
	c, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	return c
}

const clientStreamSource = `
import threading, time

def take(rows, n):
    # Stops reading early.
    out = []
    for r in rows:
        out.append(r)
        if len(out) == n:
            break
    return out

def total(rows, start=0, scale=1):
    return (start + sum(rows)) * scale

def careful(rows):
    # Catches the host's error and reports it.
    try:
        return sum(rows)
    except Exception as e:
        return type(e).__name__ + ": " + str(e)

def slow_sum(rows):
    return sum(rows)

def keep(rows):
    global kept
    kept = rows
    return 0

def read_kept():
    return list(kept)

def spin(rows):
    for r in rows:
        while True:
            pass
`

func clientStreamPlugin(t *testing.T) *PluginHandle {
	dir, d := simplePlugin(t, clientStreamSource,
		MethodDesc{Name: "take", ClientStreaming: true}, MethodDesc{Name: "total", ClientStreaming: true},
		MethodDesc{Name: "careful", ClientStreaming: true}, MethodDesc{Name: "slow_sum", ClientStreaming: true},
		MethodDesc{Name: "keep", ClientStreaming: true}, MethodDesc{Name: "read_kept"},
		MethodDesc{Name: "spin", ClientStreaming: true})
	return mustLoad(t, dir, d)
}

func TestClientStreamSemantics(t *testing.T) {
	h := clientStreamPlugin(t)

	t.Run("arguments follow the stream", func(t *testing.T) {
		for args, want := range map[string]string{``: "6", `null`: "6", `10`: "16", `[10, 2]`: "32"} {
			out, err := h.CallClientStream(ctx, hidx(h, "total"), items(1, 2, 3), []byte(args))
			if err != nil || string(out) != want {
				t.Errorf("total(rows, %s) = %s, %v; want %s", args, out, err, want)
			}
		}
	})

	t.Run("a plugin that stops reading stops the host's iterator", func(t *testing.T) {
		var c counting
		out, err := h.CallClientStream(ctx, hidx(h, "take"), c.seq(), []byte(`[4]`))
		if err != nil || string(out) != "[0,1,2,3]" {
			t.Fatalf("take(rows, 4) = %s, %v", out, err)
		}
		if n := c.produced.Load(); n != 4 {
			t.Errorf("produced %d items, want 4", n)
		}
		if !c.stopped.Load() {
			t.Error("the host's iterator was not stopped")
		}
	})

	t.Run("the host's error reaches the plugin and comes back", func(t *testing.T) {
		errDisk := errors.New("disk on fire")
		failing := func(yield func(json.RawMessage, error) bool) {
			if yield(json.RawMessage("1"), nil) {
				yield(nil, errDisk)
			}
		}
		_, err := h.CallClientStream(ctx, hidx(h, "total"), failing, nil)
		if !errors.Is(err, errDisk) || !strings.Contains(err.Error(), `method "total": the host's input stream failed`) {
			t.Errorf("uncaught host error: %v", err)
		}
		out, err := h.CallClientStream(ctx, hidx(h, "careful"), failing, nil)
		if err != nil || string(out) != `"HostStreamError: disk on fire"` {
			t.Errorf("caught host error: %s, %v", out, err)
		}
		panicking := func(yield func(json.RawMessage, error) bool) { panic("boom") }
		_, err = h.CallClientStream(ctx, hidx(h, "total"), panicking, nil)
		if err == nil || !strings.Contains(err.Error(), "the host's input stream failed: the host's input iterator panicked: boom") {
			t.Errorf("panicking host iterator: %v", err)
		}
		bad := items(json.RawMessage("{"))
		_, err = h.CallClientStream(ctx, hidx(h, "total"), bad, nil)
		wantErr(t, err, ErrInputDecode, "item 1 of the host's input stream is not valid JSON")
	})

	t.Run("a stream kept past its call ends", func(t *testing.T) {
		if _, err := h.CallClientStream(ctx, hidx(h, "keep"), items(1, 2), nil); err != nil {
			t.Fatal(err)
		}
		if got := callNamed[[]int](t, h, "read_kept"); len(got) != 0 {
			t.Errorf("reading a kept stream after its call gave %v, want nothing", got)
		}
	})

	t.Run("the GIL is free while the host produces", func(t *testing.T) {
		other := greeter(t)
		slow := func(yield func(json.RawMessage, error) bool) {
			for i := 0; i < 3; i++ {
				time.Sleep(100 * time.Millisecond)
				if !yield(json.RawMessage("1"), nil) {
					return
				}
			}
		}
		done := make(chan error, 1)
		go func() { _, err := h.CallClientStream(ctx, hidx(h, "slow_sum"), slow, nil); done <- err }()
		time.Sleep(50 * time.Millisecond)
		wantGILFree(t, other, "a host producer slept")
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("cancellation", func(t *testing.T) {
		var c counting
		dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		err := guarded(t, func() error { _, err := h.CallClientStream(dctx, hidx(h, "spin"), c.seq(), nil); return err })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("spin under a deadline: %v", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !c.stopped.Load() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !c.stopped.Load() {
			t.Error("the host's iterator of a cancelled call was never stopped")
		}
	})

	t.Run("8 goroutines at once", func(t *testing.T) {
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; n < 50; n++ {
					xs := make([]any, n)
					want := 0
					for k := range xs {
						xs[k] = g*1000 + k
						want += g*1000 + k
					}
					c := ctx
					if n%2 == 1 {
						c = cancellable(t)
					}
					out, err := h.CallClientStream(c, hidx(h, "total"), items(xs...), nil)
					if err != nil || string(out) != fmt.Sprint(want) {
						t.Errorf("goroutine %d, %d items: %s, %v; want %d", g, n, out, err, want)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
}

const feedThreadSource = `
import threading

def from_thread(rows):
    out = {}
    def read():
        try:
            out["got"] = next(rows)
        except BaseException as e:
            out["got"] = type(e).__name__ + ": " + str(e)
    t = threading.Thread(target=read)
    t.start()
    t.join()
    return out["got"]

def echo(rows):
    for r in rows:
        yield r
`

// Only the thread running the call may read its input: Go resumes the
// host's iterator there. A plugin thread gets an exception, never a crash.
func TestFeedReadFromAnotherThread(t *testing.T) {
	if !inChild(t) {
		wantChildPass(t, runChild(t, time.Minute))
		return
	}
	dir, d := simplePlugin(t, feedThreadSource, MethodDesc{Name: "from_thread", ClientStreaming: true},
		MethodDesc{Name: "echo", ClientStreaming: true, Streaming: true})
	h := mustLoad(t, dir, d)
	out, err := h.CallClientStream(ctx, 0, items(1), nil)
	if err != nil || string(out) != `"RuntimeError: the host's input stream can only be read by the thread running the call"` {
		t.Errorf("next() from a plugin thread: %s, %v", out, err)
	}

	// Bidirectional streams inside one another, with calls in the loop
	// body, under both kinds of context: each keeps its coroutine on its
	// own thread.
	other := clientStreamPlugin(t)
	for _, c := range []context.Context{ctx, cancellable(t)} {
		var got []string
		for x, err := range h.CallBidiStream(c, 1, items(1, 2), nil) {
			if err != nil {
				t.Fatal(err)
			}
			for y, err := range h.CallBidiStream(ctx, 1, items(10, 20), nil) {
				if err != nil {
					t.Fatal(err)
				}
				sum, err := other.CallClientStream(c, hidx(other, "total"), items(json.RawMessage(x), json.RawMessage(y)), nil)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(sum))
			}
		}
		if strings.Join(got, ",") != "11,21,12,22" {
			t.Errorf("nested streams: %v", got)
		}
	}
}

// wantGILFree makes 10 calls to h and fails t unless they are quick: the
// GIL is free while Go code of another call runs (what names it).
func wantGILFree(t *testing.T, h *PluginHandle, what string) {
	t.Helper()
	start := time.Now()
	for i := 0; i < 10; i++ {
		if _, err := h.CallJSON(ctx, idx(t, h, "noop"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("10 calls to another plugin took %v while %s", took, what)
	}
}
