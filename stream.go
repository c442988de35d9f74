// This file owns streaming calls: a method that returns a Python iterator
// or generator, consumed from Go one item at a time.

package fidius

/*
#include "fidius.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"iter"
	"runtime"
)

// CallStream calls streaming method i with JSON input (as CallJSON) and
// returns its results as an iterator for a range loop. Each item is the
// JSON of one value the Python iterator produced, converted like a typed
// result; the GIL is held only while Python computes an item.
//
//	for item, err := range h.CallStream(ctx, i, input) {
//		if err != nil {
//			return err // the loop ends after an error
//		}
//		use(item)
//	}
//
// The end of the Python iterator ends the loop. An exception ends it with
// that error, after the items already produced. Leaving the loop early
// calls the generator's close(), so its finally blocks run before the loop
// returns. When ctx ends, the loop ends at once with an error matching
// ctx.Err(); the generator is cancelled and closed in the background, with
// the same grace period for its finally blocks as a cancelled call.
// Nothing is called until the loop starts, and each range over the
// returned iterator calls the method again.
func (h *PluginHandle) CallStream(ctx context.Context, i int, input []byte) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		m, err := h.method(ctx, i, streamCall)
		if err != nil {
			yield(nil, err)
			return
		}
		if h.wk != nil {
			h.workerStream(ctx, i, m, input, nil, yield)
			return
		}
		s := &stream{h: h, m: m}
		if !s.use(yield) {
			return
		}
		s.run(ctx, func(ctl *C.fidius_ctl) C.fidius_result {
			r := C.fidius_stream_start(s.t.slot, C.Py_ssize_t(i), bytesPtr(input), C.size_t(len(input)), ctl)
			runtime.KeepAlive(input)
			return r
		}, yield)
	}
}

// stream is one running CallStream or CallBidiStream: the Python iterator
// and, under a context that can end, the control block its steps share.
type stream struct {
	h  *PluginHandle
	m  *MethodDesc
	t  target        // held from use until finish
	c  *cancellation // nil when ctx can never end
	it *C.PyObject   // the iterator, once started; a reference owned here
	in *feed         // a bidirectional call's input, or nil
	// fed is the Python side of in, once started: a reference owned here.
	fed *C.PyObject
	// orphaned: a step was left running when ctx ended, and finishes the
	// stream in the background; the caller's goroutine touches it no more.
	orphaned bool
}

// use picks what the stream runs through, or yields ErrClosed.
func (s *stream) use(yield func(json.RawMessage, error) bool) bool {
	t, ok := s.h.target()
	if !ok {
		yield(nil, s.h.errClosed())
		return false
	}
	s.t = t
	return true
}

// run starts the stream with the crossing start, then hands each item to
// yield until the iterator ends, fails, or yield asks to stop.
func (s *stream) run(ctx context.Context, start func(*C.fidius_ctl) C.fidius_result, yield func(json.RawMessage, error) bool) {
	h, m := s.h, s.m
	if ctx.Done() != nil {
		s.c = newCancellation(ctx, s.t)
	}
	var err error
	if !s.step(ctx, start, func(r C.fidius_result) {
		if r.status == C.FIDIUS_OK {
			s.it = r.obj
		} else {
			_, err = h.result(ctx, m, r, nil)
		}
	}) {
		yield(nil, h.interrupted(m, ctx))
		return
	}
	defer s.close(ctx)
	if err != nil {
		yield(nil, s.failed(err))
		return
	}
	for {
		var (
			item json.RawMessage
			end  bool
		)
		if !s.step(ctx, func(ctl *C.fidius_ctl) C.fidius_result {
			return C.fidius_stream_next(s.t.slot, s.it, s.fed, ctl)
		}, func(r C.fidius_result) {
			if end = r.status == C.FIDIUS_END; !end {
				item, err = h.result(ctx, m, r, nil)
			}
		}) {
			yield(nil, h.interrupted(m, ctx))
			return
		}
		if end {
			return
		}
		if err != nil {
			yield(nil, s.failed(err))
			return
		}
		if !yield(item, nil) {
			return
		}
	}
}

// failed is the error a stream ends with: the host's own, when the host's
// input iterator failed and the plugin let that through.
func (s *stream) failed(err error) error {
	if s.in != nil {
		return s.in.hostError(s.m, err)
	}
	return err
}

// step makes one crossing into C and hands its result to keep on the
// thread that made it. It returns false when ctx ended first: the caller
// has left, and the stream is closed in the background.
func (s *stream) step(ctx context.Context, crossing func(*C.fidius_ctl) C.fidius_result, keep func(C.fidius_result)) bool {
	if s.c == nil {
		gate.enter(nil)
		runtime.LockOSThread()
		keep(crossing(nil))
		runtime.UnlockOSThread()
		gate.leave()
		return true
	}
	s.c.nextStep()
	s.orphaned = !s.c.cross(ctx, crossing, keep, s.finish)
	return !s.orphaned
}

// close ends the stream for a caller leaving the loop: the generator's
// finally blocks run before close returns, unless ctx ends first.
func (s *stream) close(ctx context.Context) {
	if s.orphaned {
		return
	}
	if s.c == nil {
		s.finish()
		return
	}
	done := make(chan struct{})
	go func() {
		s.finish()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// finish closes the iterator and the input feed, if there are any, and
// frees the control block.
func (s *stream) finish() {
	if s.it != nil || s.fed != nil {
		var ctl *C.fidius_ctl
		if s.c != nil {
			ctl = s.c.ctl
		}
		gate.enter(nil)
		runtime.LockOSThread()
		C.fidius_stream_close(s.t.slot, s.it, s.fed, ctl)
		runtime.UnlockOSThread()
		gate.leave()
		s.it, s.fed = nil, nil
	}
	if s.in != nil {
		s.in.forget()
	}
	if s.c != nil {
		s.c.free()
	}
	s.t.inst.done()
	runtime.KeepAlive(s.h)
}
