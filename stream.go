// This file owns streaming calls: a method that returns a Python iterator
// or generator, consumed from Go one item at a time (SPEC section 9).

package fidius

/*
#include "bridge.h"
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
// that error, after the items already produced. Leaving the loop early,
// or cancelling ctx, calls the generator's close(), so its finally blocks
// run. Nothing is called until the loop starts, and each range over the
// returned iterator calls the method again.
func (h *PluginHandle) CallStream(ctx context.Context, i int, input []byte) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		m, err := h.method(ctx, i, streamCall)
		if err != nil {
			yield(nil, err)
			return
		}
		ctl, stop := interruptible(ctx)
		if stop != nil {
			defer stop()
		}
		runtime.LockOSThread()
		r := C.fidius_stream_start(h.slot, C.Py_ssize_t(i), bytesPtr(input), C.size_t(len(input)), ctl)
		if r.status != C.FIDIUS_OK {
			_, err := h.result(ctx, m, r, nil)
			runtime.UnlockOSThread()
			yield(nil, err)
			return
		}
		runtime.UnlockOSThread()
		runtime.KeepAlive(input)
		it := r.obj
		defer C.fidius_stream_close(it)
		for {
			if err := ctx.Err(); err != nil {
				yield(nil, err)
				return
			}
			runtime.LockOSThread()
			r := C.fidius_stream_next(it, ctl)
			if r.status == C.FIDIUS_END {
				runtime.UnlockOSThread()
				return
			}
			item, err := h.result(ctx, m, r, nil)
			runtime.UnlockOSThread()
			if err != nil {
				yield(nil, err)
				return
			}
			if !yield(item, nil) {
				return
			}
		}
	}
}
