//go:build cgo

// This file owns calls in worker mode: each call's conversation with a
// worker as frames, the host functions and host-fed items it serves
// meanwhile, cancellation by signal with a kill after a grace period, and
// the unary calls and streams built on it.

package fidius

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// workerGrace is how long a cancelled call has to stop before its worker
// is killed: time for the plugin's finally blocks, and the bound on a
// deadline for code that never returns to Python (a C sleep, a long
// numpy operation).
const workerGrace = 500 * time.Millisecond

// conv is one call's conversation with a worker: a unary call, or a
// stream from its start to its end.
type conv struct {
	h    *PluginHandle
	m    *MethodDesc
	i    int // m's index
	wp   *workerPool
	w    *worker // once the first exchange has it
	n    uint64  // the call's number in w
	in   *feed   // a client or bidirectional stream's input, or nil
	live bool    // a stream is open in the worker
	item []byte  // the answer to a pull

	// cancelled is closed once the caller's ctx ended: host functions and
	// fed items are refused from then on.
	cancelled chan struct{}
	once      sync.Once
	// back is when the call last took its worker back after lending it
	// (UnixNano), or 0.
	back atomic.Int64
}

func (h *PluginHandle) newConv(i int, m *MethodDesc) *conv {
	return &conv{h: h, m: m, i: i, cancelled: make(chan struct{})}
}

// acquire gets the worker for the next exchange: any free one for the
// first, numbering the call there, then the same one.
func (c *conv) acquire(ctx context.Context) error {
	if c.w != nil {
		_, err := c.wp.acquire(ctx, c.w, nil)
		return err
	}
	for {
		wp := c.h.wk.pool()
		w, err := wp.acquire(ctx, nil, nil)
		if err == errRetired {
			continue // a Reload put a new pool in place
		}
		if errors.Is(err, ErrClosed) {
			return c.h.errClosed()
		}
		if err != nil {
			return err
		}
		c.wp, c.w = wp, w
		w.calls++
		c.n = w.calls
		return nil
	}
}

// exchange sends one frame and reads until the answer, serving the host
// calls and input pulls the plugin makes meanwhile. A successful answer's
// payload is appended to into; an error is the call's. The worker is held
// throughout, except while Go works out an answer for it.
//
// x, if not nil, is shared with a caller that may leave (see handoff).
func (c *conv) exchange(kind, flags byte, payload []byte, into []byte, x *handoff) (frame, []byte, error) {
	w := c.w
	err := w.send(kind, flags, uint16(c.i), payload)
	if x != nil {
		close(x.sent) // payload is the caller's again
	}
	if err != nil {
		return frame{}, into, w.lost(err)
	}
	for {
		next, err := w.head()
		if err != nil {
			return frame{}, into, w.lost(err)
		}
		base := into
		if next == fHostCall || next == fPull || !x.deliver() {
			// A question's payload, or an answer for a caller who left:
			// not in the caller's buffer, which is the caller's again.
			base = nil
		}
		f, out, err := w.read(base)
		if err == nil && f.kind != fHostCall && f.kind != fPull {
			err = w.answered()
		}
		if err != nil {
			return f, into, w.lost(err)
		}
		body := out[len(base):]
		var (
			k      byte
			answer []byte
		)
		switch f.kind {
		case fOK, fItem, fEnd, fDone:
			if base == nil && into != nil {
				return f, into, nil // the caller left: nothing in its buffer
			}
			return f, out, nil
		case fHostCall:
			k, answer = c.lend(func() (byte, []byte) { return c.hostCall(body) })
		case fPull:
			k, answer = c.lend(c.pull)
		case fPluginErr:
			return f, into, c.in.hostErrorOrNot(c.m, pluginErrorFrame(body))
		case fOutputErr:
			return f, into, fmt.Errorf("%w from method %q: %s", ErrOutputEncode, c.m.Name, body)
		case fInputErr:
			return f, into, fmt.Errorf("%w for method %q: %s", ErrInputDecode, c.m.Name, body)
		case fCancelled:
			return f, into, context.Canceled // the caller returns its ctx's own error
		default:
			return f, into, c.unexpected(f)
		}
		// Taken back from whatever ran in it meanwhile.
		if _, err := c.wp.acquire(context.Background(), w, c); err != nil {
			return f, into, err
		}
		c.back.Store(time.Now().UnixNano())
		if err := w.send(k, 0, 0, answer); err != nil {
			return f, into, w.lost(err)
		}
	}
}

// lend runs f, Go's side of a question the plugin asked, with the worker
// back in the pool: the worker waits for the answer, and meanwhile runs
// any exchange it is handed, nested (a host function calling the plugin
// back, an input iterator that reads another of its streams).
func (c *conv) lend(f func() (byte, []byte)) (byte, []byte) {
	c.wp.lend(c.w, c)
	return f()
}

// hostCall runs a host function the plugin called: [interface, function,
// args].
func (c *conv) hostCall(body []byte) (byte, []byte) {
	var req [3]json.RawMessage
	var iface, fn string
	if json.Unmarshal(body, &req) != nil || json.Unmarshal(req[0], &iface) != nil || json.Unmarshal(req[1], &fn) != nil {
		out, _ := json.Marshal(map[string]string{"code": "HOST_ERROR", "message": "malformed host call"})
		return fHostErr, out
	}
	select {
	case <-c.cancelled:
		out, _ := json.Marshal(map[string]string{"code": "CANCELLED", "message": "the call's context ended"})
		return fHostErr, out
	default:
	}
	out, ok := c.h.wk.hostBinding().call(iface, fn, req[2])
	if !ok {
		return fHostErr, out
	}
	return fHostOK, out
}

// pull answers a fed stream's next(): the host's next item, its end, or
// its error's message.
func (c *conv) pull() (byte, []byte) {
	if c.in == nil {
		return fFeedEnd, nil
	}
	select {
	case <-c.cancelled:
		return fFeedEnd, nil // once ctx ends, the plugin gets no more items
	default:
	}
	item, status := c.in.next()
	switch status {
	case 0:
		return fFeedEnd, nil
	case -1:
		return fFeedErr, item
	}
	return fFeed, item // checked by the worker, which counts the items
}

// unexpected ends a conversation that is out of step.
func (c *conv) unexpected(f frame) error {
	c.w.kill(fmt.Sprintf("it answered with a frame of kind %d", f.kind))
	return c.w.lost(errors.New("protocol out of step"))
}

// pluginErrorFrame decodes a PLUGIN_ERR payload: code and message
// lengths (u32 each), code, message, details JSON.
func pluginErrorFrame(b []byte) error {
	if len(b) < 8 {
		return &PluginError{Code: "WorkerProtocol", Message: "malformed error frame"}
	}
	n1, n2 := int(binary.LittleEndian.Uint32(b)), int(binary.LittleEndian.Uint32(b[4:]))
	b = b[8:]
	if n1+n2 > len(b) {
		return &PluginError{Code: "WorkerProtocol", Message: "malformed error frame"}
	}
	e := &PluginError{Code: string(b[:n1]), Message: string(b[n1 : n1+n2])}
	if d := b[n1+n2:]; len(d) > 0 && string(d) != "null" {
		e.Details = json.RawMessage(append([]byte(nil), d...))
	}
	return e
}

// hostErrorOrNot is hostError for a call with a host-fed stream.
func (f *feed) hostErrorOrNot(m *MethodDesc, err error) error {
	if f == nil {
		return err
	}
	return f.hostError(m, err)
}

// step runs one exchange: on the caller's goroutine under a ctx that
// cannot end, else on a goroutine of its own that the caller leaves when
// ctx ends. Then the call is cancelled in the worker, which is killed if
// it has not answered within workerGrace, and the conversation is
// finished in the background. stayed is false when the caller left.
func (c *conv) step(ctx context.Context, kind, flags byte, payload, into []byte) (frame, []byte, error, bool) {
	if ctx.Err() != nil {
		// Ended before the step (a stream's loop body cancelled it):
		// nothing more runs, as in-process; a stream open in the worker
		// is closed in the background.
		c.once.Do(func() { close(c.cancelled) })
		go c.finish()
		return frame{}, into, nil, false
	}
	if err := c.acquire(ctx); err != nil {
		return frame{}, into, err, true
	}
	if ctx.Done() == nil {
		f, out, err := c.exchange(kind, flags, payload, into, nil)
		c.settle(kind, f, err)
		c.wp.release(c.w)
		return f, out, err, true
	}
	var (
		f    frame
		out  []byte
		xerr error // not err: shared with the goroutine, which may outlive the caller
	)
	done := make(chan struct{})
	x := &handoff{sent: make(chan struct{})}
	go func() {
		f, out, xerr = c.exchange(kind, flags, payload, into, x)
		c.settle(kind, f, xerr)
		c.wp.release(c.w)
		close(done)
	}()
	select {
	case <-done:
		return f, out, xerr, true
	case <-ctx.Done():
	}
	if !x.leave() {
		<-done // the answer is being written into into: it is the caller's
		return f, out, xerr, true
	}
	c.once.Do(func() { close(c.cancelled) })
	if c.in != nil {
		go c.in.stop() // an items blocked in a send must not hold up the kill
	}
	c.w.cancelCall(c.n)
	go func() {
		c.awaitOrKill(done, fmt.Sprintf("its call of method %q did not stop within %v of its context ending", c.m.Name, workerGrace))
		c.finish()
	}()
	return frame{}, into, nil, false
}

// awaitOrKill waits for the exchange of a cancelled call to end (done),
// killing its worker if the call's plugin code has not stopped within
// workerGrace. Time the worker spends lent does not count: the call waits
// for Go then (a host function, a fed item), no code of it runs in the
// worker, which may be running other calls meanwhile, and the
// cancellation is raised as soon as the call has its worker back.
func (c *conv) awaitOrKill(done chan struct{}, reason string) {
	wait := workerGrace
	for {
		t := time.NewTimer(wait)
		select {
		case <-done:
			t.Stop()
			return
		case <-t.C:
		}
		c.wp.mu.Lock()
		lent := slices.Contains(c.w.lent, c)
		c.wp.mu.Unlock()
		if lent {
			wait = workerGrace
			continue
		}
		if back := c.back.Load(); back != 0 {
			if since := time.Since(time.Unix(0, back)); since < workerGrace {
				wait = workerGrace - since
				continue
			}
		}
		c.w.kill(reason)
		<-done
		return
	}
}

// handoff is what an exchange run on a goroutine of its own shares with
// a caller who may leave it when its ctx ends. The caller's buffers must
// not be touched once it has: it waits for the request to be sent before
// it leaves (payload may be a pooled buffer, as Call's), and the answer is
// appended to the caller's into only if the exchange claims it before the
// caller leaves; in-process, C reads the input and delivers the result
// under the same rule (cancellation.leave and deliver).
type handoff struct {
	sent  chan struct{} // closed once the request is sent, or failed to be
	state atomic.Int32  // handoffRunning, handoffDelivering or handoffLeft
}

const (
	handoffRunning int32 = iota
	handoffDelivering
	handoffLeft
)

// deliver claims the caller's buffer for the answer: false once the
// caller has left. A nil handoff (a caller who cannot leave) always
// delivers.
func (x *handoff) deliver() bool {
	return x == nil || x.state.CompareAndSwap(handoffRunning, handoffDelivering) || x.state.Load() == handoffDelivering
}

// leave is the caller giving up, once the request is out; false if the
// answer is being delivered: then it waits for it.
func (x *handoff) leave() bool {
	<-x.sent
	return x.state.CompareAndSwap(handoffRunning, handoffLeft)
}

// settle notes what an exchange did to the call's stream: opened it, or
// ended it (the worker drops a stream that ends, fails or is cancelled).
// It runs while the exchange still holds the worker: released first, a
// worker whose stream just opened counts none, and a closed or retired
// pool would stop it.
func (c *conv) settle(kind byte, f frame, err error) {
	switch {
	case kind == fStream && err == nil && f.kind == fOK:
		c.live = true
		c.wp.mu.Lock()
		c.w.streams++
		c.wp.mu.Unlock()
	case kind == fNext && (err != nil || f.kind != fItem) && c.live:
		c.live = false
		c.wp.streamEnded(c.w)
	}
}

// finish closes a stream the worker still has open and stops the host's
// items.
func (c *conv) finish() {
	if c.live {
		c.live = false
		// The grace period starts once the worker is back: it may be
		// running another call until then.
		if _, err := c.wp.acquire(context.Background(), c.w, nil); err == nil {
			done := make(chan struct{})
			go func() {
				var num [8]byte
				binary.LittleEndian.PutUint64(num[:], c.n)
				c.exchange(fStop, 0, num[:], nil, nil)
				c.wp.release(c.w)
				close(done)
			}()
			c.awaitOrKill(done, fmt.Sprintf("closing the stream of method %q took longer than %v", c.m.Name, workerGrace))
		}
		c.wp.streamEnded(c.w)
	}
	if c.in != nil {
		c.in.stop()
		c.in.forget()
	}
}

// workerCall is a unary call (typed, raw, or client-streaming) in worker
// mode.
func (h *PluginHandle) workerCall(ctx context.Context, i int, m *MethodDesc, kind callKind, dst, input []byte, items iter.Seq2[json.RawMessage, error]) ([]byte, error) {
	if err := checkSize(m, input); err != nil {
		return dst, err
	}
	if kind != rawCall {
		if err := checkInput(m, input); err != nil {
			return dst, err
		}
	}
	c := h.newConv(i, m)
	fk := fCall
	switch kind {
	case rawCall:
		fk = fRaw
	case clientStreamCall:
		fk = fClient
		c.in = newFeed(items)
	}
	f, out, err, stayed := c.step(ctx, fk, 0, input, dst)
	if !stayed {
		return dst, h.interrupted(m, ctx)
	}
	c.finish()
	switch {
	case err == context.Canceled:
		return dst, h.interrupted(m, ctx)
	case err != nil:
		return dst, err
	case f.kind != fOK:
		return dst, c.unexpected(f)
	case out == nil:
		return []byte{}, nil // an empty result is empty, not nil
	}
	return out, nil
}

// workerStream runs a server or bidirectional stream in worker mode.
func (h *PluginHandle) workerStream(ctx context.Context, i int, m *MethodDesc, input []byte, items iter.Seq2[json.RawMessage, error], yield func(json.RawMessage, error) bool) {
	err := checkSize(m, input)
	if err == nil {
		err = checkInput(m, input)
	}
	if err != nil {
		yield(nil, err)
		return
	}
	c := h.newConv(i, m)
	var flags byte
	if items != nil {
		flags = 1
		c.in = newFeed(items)
	}
	f, _, err, stayed := c.step(ctx, fStream, flags, input, nil)
	if !stayed {
		yield(nil, h.interrupted(m, ctx))
		return
	}
	if err == nil && f.kind != fOK {
		err = c.unexpected(f)
	}
	var num [8]byte
	binary.LittleEndian.PutUint64(num[:], c.n)
	// The loop body may leave by a panic or runtime.Goexit (t.FailNow):
	// the stream is closed then too, as in-process, or it stays open in
	// its worker, which would never stop.
	yielding := false
	defer func() {
		if yielding {
			c.finish()
		}
	}()
	for err == nil {
		var item []byte
		f, item, err, stayed = c.step(ctx, fNext, 0, num[:], nil)
		if !stayed {
			yield(nil, h.interrupted(m, ctx))
			return
		}
		if err != nil || f.kind == fEnd {
			break
		}
		if f.kind != fItem {
			err = c.unexpected(f)
			break
		}
		if item == nil {
			item = []byte{}
		}
		yielding = true
		more := yield(item, nil)
		yielding = false
		if !more {
			c.finish()
			return
		}
	}
	c.finish()
	if err == context.Canceled {
		err = h.interrupted(m, ctx)
	}
	if err != nil {
		yield(nil, err)
	}
}

// maxFrame is the largest payload a frame carries: its length is a u32.
const maxFrame = 1<<32 - 1

// checkSize refuses input that no frame can carry (its length would wrap,
// and the plugin would get its first bytes as the whole input).
func checkSize(m *MethodDesc, input []byte) error {
	if len(input) > maxFrame {
		return fmt.Errorf("%w for method %q: %d bytes: a worker takes at most %d bytes of input", ErrInputDecode, m.Name, len(input), maxFrame)
	}
	return nil
}

// checkInput refuses typed input that is not one strict JSON value nested
// at most maxDepth levels, or that has a number too large for a float
// (which Python's json would make an infinity): nothing reaches the
// worker.
func checkInput(m *MethodDesc, input []byte) error {
	if len(input) == 0 {
		return nil
	}
	depth, deepest := 0, 0
	inString, escaped := false, false
	num, frac := -1, false // the number being read: where it starts, whether it has a fraction or exponent
	for i, b := range input {
		if num >= 0 {
			switch {
			case b >= '0' && b <= '9' || b == '+' || b == '-':
				continue
			case b == '.' || b == 'e' || b == 'E':
				frac = true
				continue
			}
			if err := checkFloat(m, input, num, i, frac); err != nil {
				return err
			}
			num = -1
		}
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case b == '\\':
				escaped = true
			case b == '"':
				inString = false
			}
		case b == '"':
			inString = true
		case b == '-' || b >= '0' && b <= '9':
			num, frac = i, false
		case b == '[' || b == '{':
			depth++
			deepest = max(deepest, depth)
		case b == ']' || b == '}':
			depth--
		}
	}
	if num >= 0 {
		if err := checkFloat(m, input, num, len(input), frac); err != nil {
			return err
		}
	}
	if deepest > maxDepth {
		return fmt.Errorf("%w for method %q: JSON nests deeper than %d levels", ErrInputDecode, m.Name, maxDepth)
	}
	if !json.Valid(input) {
		var v any
		err := json.Unmarshal(input, &v)
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			// Offset counts the bytes read, the bad one included.
			return fmt.Errorf("%w for method %q: offset %d: %v", ErrInputDecode, m.Name, syn.Offset-1, err)
		}
		return fmt.Errorf("%w for method %q: %v", ErrInputDecode, m.Name, err)
	}
	return nil
}

// checkFloat refuses the number input[start:end] if it is a float too
// large for a float64, as the in-process decoder does. Only a number with
// an exponent of three digits or more, or of over 300 characters, can
// be: the others are not parsed.
func checkFloat(m *MethodDesc, input []byte, start, end int, frac bool) error {
	tok := input[start:end]
	if !frac {
		return nil // an int: Python's are unbounded
	}
	if e := bytes.IndexAny(tok, "eE"); (e < 0 || len(tok)-e < 4) && len(tok) <= 300 {
		return nil
	}
	if v, _ := strconv.ParseFloat(string(tok), 64); math.IsInf(v, 0) {
		return fmt.Errorf("%w for method %q: offset %d: value too large to convert to float: '%s'", ErrInputDecode, m.Name, start, tok)
	}
	return nil
}

// maxDepth is how deep a value may nest, each way (FIDIUS_MAX_DEPTH).
const maxDepth = 1000
