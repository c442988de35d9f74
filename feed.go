// This file owns the host's side of calls that stream their input: the Go
// iterator a client-streaming or bidirectional method reads as a Python
// iterator, pulled one item at a time from C while the GIL is released.

package fidius

/*
#include "fidius.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"runtime"
	"sync"
)

// hostStreamErrorCode is the class name of the exception a plugin sees at
// next() when the host's iterator fails (python/host.py).
const hostStreamErrorCode = "HostStreamError"

// feed is one call's input: the host's iterator, pulled by C one item at a
// time. The iterator runs on a goroutine of its own, started by the first
// pull, which hands over one item per request. A coroutine (iter.Pull2)
// would be cheaper, but the pulls come from C callbacks on locked
// threads, and Go ends the process when a coroutine meets another one or
// a change of thread locking, which an ordinary iterator (another
// stream's output, an adapter over iter.Pull, one that locks its thread)
// may do. The goroutines hand items over through one-slot channels, each
// side spinning briefly before it sleeps, so that a steady stream costs
// no wake-up of a sleeping thread per item.
//
// Calls from C may come from any thread that runs the plugin's next(), so
// every use is under mu; after finish, the feed gives the end.
type feed struct {
	mu    sync.Mutex
	items iter.Seq2[json.RawMessage, error]
	done  bool  // the end, an error, or stopped: nothing more is pulled
	err   error // what the host's iterator failed with, if it did
	id    uintptr

	started bool
	req     chan struct{} // the next item, please (one slot)
	resp    chan feedItem // one slot
	quit    chan struct{} // closed on stop: the iterator's yield returns false
	exited  chan struct{} // closed when the iterator has returned
}

type feedItem struct {
	item json.RawMessage
	err  error
	end  bool
}

// feeds maps the ids C holds to their feeds: C never holds a Go pointer,
// and an id whose feed is gone reads as the end.
var feeds = struct {
	sync.Mutex
	m    map[uintptr]*feed
	last uintptr
}{m: map[uintptr]*feed{}}

func newFeed(items iter.Seq2[json.RawMessage, error]) *feed {
	f := &feed{items: items, req: make(chan struct{}, 1), resp: make(chan feedItem, 1), quit: make(chan struct{}), exited: make(chan struct{})}
	feeds.Lock()
	feeds.last++
	f.id = feeds.last
	feeds.m[f.id] = f
	feeds.Unlock()
	return f
}

func lookupFeed(id C.uintptr_t) *feed {
	feeds.Lock()
	defer feeds.Unlock()
	return feeds.m[uintptr(id)]
}

// forget drops the feed from the registry once C has ended it (which
// stopped the host's iterator, see fidiusFeedStop) or never made it.
func (f *feed) forget() {
	feeds.Lock()
	delete(feeds.m, f.id)
	feeds.Unlock()
}

// failure is the host iterator's error, if it gave one.
func (f *feed) failure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// finish marks the feed done and stops the host's iterator, so that its
// cleanup (deferred calls, the end of a range over a channel) has run when
// finish returns, whether or not the plugin read it to the end. mu held.
func (f *feed) finish() {
	if f.done {
		return
	}
	f.done = true
	close(f.quit)
	if f.started {
		<-f.exited
	}
}

// pull returns the host's next item. mu held.
func (f *feed) pull() feedItem {
	if !f.started {
		f.started = true
		go f.produce()
	} else {
		f.req <- struct{}{} // never blocks: the producer took the last request
	}
	it, _ := receive(f.resp, nil)
	return it
}

// spins is how many times a side of the hand-off looks for the other's
// message before it sleeps: a few microseconds, about the time Python
// takes to ask for the next item.
const spins = 2000

// receive waits for a value on ch, spinning first, or gives up (false)
// once quit, if not nil, is closed.
func receive[T any](ch chan T, quit chan struct{}) (T, bool) {
	var zero T
	for i := 0; i < spins; i++ {
		select {
		case v := <-ch:
			return v, true
		case <-quit:
			return zero, false
		default:
		}
		if i >= 16 && quit != nil {
			// The producer lets others run while it waits. The puller
			// does not: it is a locked thread, and a locked goroutine
			// that yields waits for its thread to be woken, the very
			// cost the spinning avoids.
			runtime.Gosched()
		}
	}
	select {
	case v := <-ch:
		return v, true
	case <-quit:
		return zero, false
	}
}

// produce ranges over the host's iterator, one item per request.
func (f *feed) produce() {
	defer close(f.exited)
	defer func() {
		if p := recover(); p != nil {
			// Nobody waits for an item once the feed is stopped (or has
			// had its error): an iterator that goes on after yield said
			// false panics here, in its cleanup or in the range loop's
			// own check, and that must not hold up finish.
			select {
			case f.resp <- feedItem{err: fmt.Errorf("the host's input iterator panicked: %v", p)}:
			case <-f.quit:
			}
		}
	}()
	for item, err := range f.items {
		f.resp <- feedItem{item: item, err: err} // one slot, emptied by the pull that asked
		if err != nil {
			return
		}
		select {
		case <-f.quit:
			return
		default:
		}
		if _, asked := receive(f.req, f.quit); !asked {
			return
		}
	}
	f.resp <- feedItem{end: true}
}

//export fidiusFeedNext
func fidiusFeedNext(id C.uintptr_t) C.int {
	f := lookupFeed(id)
	if f == nil {
		return 0
	}
	item, status := f.next()
	if status != 0 {
		C.fidius_feed_put(bytesPtr(item), C.size_t(len(item)))
	}
	return C.int(status)
}

// next gives the plugin the host's next item: the item and 1, nothing and
// 0 at the end, or the host's error message and -1.
func (f *feed) next() (item []byte, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return nil, 0
	}
	fail := func(err error) ([]byte, int) {
		f.err = err
		f.finish()
		return []byte(err.Error()), -1
	}
	defer func() {
		// A panic must not unwind through C: it becomes the host's error.
		if p := recover(); p != nil {
			item, status = fail(fmt.Errorf("the host's input iterator panicked: %v", p))
		}
	}()
	it := f.pull()
	switch {
	case it.end:
		f.finish()
		return nil, 0
	case it.err != nil:
		return fail(it.err)
	}
	return it.item, 1
}

// stop stops the host's iterator, if it still runs.
func (f *feed) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() { recover() }() // a panic in the iterator's cleanup has nowhere to go
	f.finish()
}

//export fidiusFeedStop
func fidiusFeedStop(id C.uintptr_t) {
	if f := lookupFeed(id); f != nil {
		f.stop()
	}
}

// hostError turns a plugin error that came from the host's own iterator
// back into the host's error, so that errors.Is finds it.
func (f *feed) hostError(m *MethodDesc, err error) error {
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != hostStreamErrorCode {
		return err
	}
	if herr := f.failure(); herr != nil {
		return fmt.Errorf("method %q: the host's input stream failed: %w", m.Name, herr)
	}
	return fmt.Errorf("%w for method %q: %s", ErrInputDecode, m.Name, perr.Message)
}

// CallClientStream calls client-streaming method i: the plugin's method
// gets items as an iterator, its first argument, followed by args (JSON,
// as CallJSON's input: an array is the positional arguments, null or empty
// none, any other value one argument). It returns the method's result as
// JSON.
//
// Items are pulled lazily: each next() in Python asks items for one item,
// with the GIL released while Go produces it, so a slow producer never
// holds up other calls, and an unbounded iterator works. Each item must be
// one JSON value; it converts as a typed argument. An error from items
// reaches the plugin as a HostStreamError at its next(); if the plugin
// lets it propagate, the call returns an error wrapping the host's error
// (errors.Is finds it). When the call returns, items is stopped, so its
// cleanup runs even if the plugin stopped reading early.
//
// items is an iter.Seq2 with an error, rather than an iter.Seq, because a
// real producer (a file, a query, a network stream) can fail part way, and
// the plugin should see that failure where it reads, not a short stream.
//
// items runs on a goroutine of its own, so it may be any iterator: another
// stream's output, an adapter over iter.Pull, one that locks its thread.
// Only the call itself may read the stream: a plugin thread, or a call
// nested in it, that calls next() gets a RuntimeError. Once ctx ends the
// plugin gets no more items; an items that blocks should watch ctx
// itself, since the interrupted call cannot end before items hands over
// the item it is producing.
func (h *PluginHandle) CallClientStream(ctx context.Context, i int, items iter.Seq2[json.RawMessage, error], args []byte) ([]byte, error) {
	m, err := h.method(ctx, i, clientStreamCall)
	if err != nil {
		return nil, err
	}
	if h.wk != nil {
		return h.workerCall(ctx, i, m, clientStreamCall, nil, args, items)
	}
	t, ok := h.target()
	if !ok {
		return nil, h.errClosed()
	}
	f := newFeed(items)
	out, err := h.cross(ctx, t, m, nil, func(ctl *C.fidius_ctl) C.fidius_result {
		r := C.fidius_call_fed(t.slot, C.Py_ssize_t(i), C.uintptr_t(f.id), bytesPtr(args), C.size_t(len(args)), ctl)
		runtime.KeepAlive(args)
		return r
	}, f.forget) // also when the crossing never ran: C never saw the feed
	return out, f.hostError(m, err)
}

// CallBidiStream calls bidirectional method i: the method gets items as
// its first argument, as CallClientStream describes, and returns an
// iterator whose results arrive as CallStream's do. Pulling a result runs
// the plugin until it yields, which pulls inputs as it asks for them: a
// method that yields one output per input never holds more than one.
// Leaving the loop early closes the generator (its finally blocks run) and
// then stops items. Each range over the returned iterator calls the method
// again, with the same items. items runs as for CallClientStream.
func (h *PluginHandle) CallBidiStream(ctx context.Context, i int, items iter.Seq2[json.RawMessage, error], args []byte) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		m, err := h.method(ctx, i, bidiCall)
		if err != nil {
			yield(nil, err)
			return
		}
		if h.wk != nil {
			h.workerStream(ctx, i, m, args, items, yield)
			return
		}
		s := &stream{h: h, m: m}
		if !s.use(yield) {
			return
		}
		f := newFeed(items)
		s.in = f
		s.run(ctx, func(ctl *C.fidius_ctl) C.fidius_result {
			r := C.fidius_stream_start_fed(s.t.slot, C.Py_ssize_t(i), C.uintptr_t(f.id), bytesPtr(args), C.size_t(len(args)), ctl, &s.fed)
			runtime.KeepAlive(args)
			return r
		}, yield)
	}
}
