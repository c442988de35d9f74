// This file owns calling a loaded plugin: index and wire-mode checks in Go,
// then one cgo crossing that does the whole call under the GIL; handing a
// call under a context that can end to a goroutine of its own, so that its
// caller can leave; and Close.

package fidius

/*
#include <stdlib.h>
#include "fidius.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// keepBuffer is the size above which the thread's C output buffer is freed
// once a result has been copied out of it; see FIDIUS_KEEP_BUFFER.
const keepBuffer = 1 << 20

// PluginHandle is a loaded Python plugin. Its methods are safe for use by
// any number of goroutines at once; calls into Python take turns on the GIL.
type PluginHandle struct {
	plugin  *plugin
	slot    *C.fidius_slot // C memory: calls go through it, Reload and Close swap it; nil when isolated
	pool    *pool          // an isolated plugin's instances, or nil
	wk      *workers       // a plugin's worker processes, or nil
	closed  atomic.Bool
	present atomic.Pointer[[]bool] // which methods the loaded code defines; swapped by Reload
}

// newHandle makes the handle that calls through slot. The slot's memory
// is freed, and its Python references released, once the handle is
// unreachable, so a handle dropped without Close loses nothing.
func newHandle(p *plugin, slot *C.fidius_slot) *PluginHandle {
	h := &PluginHandle{plugin: p, slot: slot}
	runtime.AddCleanup(h, func(s *C.fidius_slot) {
		go withGILOf(s.rt, func() { freeSlot(s) })
	}, slot)
	return h
}

// Descriptor returns a copy of the descriptor the handle was loaded with,
// as it was at the load. The caller may change the copy; the handle keeps
// its own.
func (h *PluginHandle) Descriptor() *InterfaceDescriptor { return h.plugin.desc.clone() }

// Manifest returns the package.toml the plugin was loaded from, as read at
// the load: the package's name, version and interface are in its Package
// header. The caller must not change it.
func (h *PluginHandle) Manifest() *Manifest { return h.plugin.manifest }

// Dir returns the absolute package directory the plugin was loaded from.
func (h *PluginHandle) Dir() string { return h.plugin.dir }

// Implements reports whether the loaded plugin defines method i: always
// true for a method that is not Optional, and for an Optional one whether
// the plugin has it (as of the last load or reload). An index out of range
// is false.
func (h *PluginHandle) Implements(i int) bool {
	p := h.present.Load()
	return p != nil && i >= 0 && i < len(*p) && (*p)[i]
}

// MethodCount returns the number of methods, the bound on method indexes.
func (h *PluginHandle) MethodCount() int { return len(h.plugin.desc.Methods) }

// Close releases the handle's Python references. Calls running at the time
// finish normally; later calls return ErrClosed. An isolated plugin's
// interpreters end: before Close returns those no call uses, the others
// as soon as their calls are over, and those where threads the plugin
// started still run once those threads end. Close is idempotent and
// always returns nil.
func (h *PluginHandle) Close() error {
	if h.closed.Swap(true) {
		return nil
	}
	if h.wk != nil {
		h.closeWorkers()
		return nil
	}
	if h.pool != nil {
		h.pool.close()
		return nil
	}
	withGILOf(h.slot.rt, func() { C.fidius_slot_swap(h.slot, nil) })
	return nil
}

// target picks what a call runs through: the handle's slot, or one of an
// isolated plugin's instances, held until the call hands it back with
// t.inst.done(). ok is false when the handle is closed.
func (h *PluginHandle) target() (t target, ok bool) {
	if h.pool == nil {
		return target{slot: h.slot}, true
	}
	t = h.pool.get()
	return t, t.inst != nil
}

func (h *PluginHandle) errAbsent(m *MethodDesc) error {
	return fmt.Errorf("%w: method %q of interface %q is optional, and the plugin in %s does not define it",
		ErrMethodAbsent, m.Name, h.plugin.desc.InterfaceName, h.plugin.dir)
}

func (h *PluginHandle) errClosed() error {
	return fmt.Errorf("%w: interface %q", ErrClosed, h.plugin.desc.InterfaceName)
}

// callKind is how a call passes values; typedCall and rawCall are also
// fidius_call's raw flag.
type callKind int

const (
	typedCall callKind = iota
	rawCall
	streamCall
	clientStreamCall
	bidiCall
)

// kindOf is how method m must be called.
func kindOf(m *MethodDesc) callKind {
	switch {
	case m.ClientStreaming && m.Streaming:
		return bidiCall
	case m.ClientStreaming:
		return clientStreamCall
	case m.Streaming:
		return streamCall
	case m.WireRaw:
		return rawCall
	}
	return typedCall
}

// method checks the index and the wire mode of a call, and that it may
// still start.
func (h *PluginHandle) method(ctx context.Context, i int, kind callKind) (*MethodDesc, error) {
	d := h.plugin.desc
	if i < 0 || i >= len(d.Methods) {
		return nil, fmt.Errorf("%w: %d: interface %q has %d methods", ErrInvalidMethodIndex, i, d.InterfaceName, len(d.Methods))
	}
	m := &d.Methods[i]
	var use string
	switch want := kindOf(m); {
	case want == kind:
	case want == bidiCall:
		use = "streams its input and its results; call it with CallBidiStream"
	case want == clientStreamCall:
		use = "takes a stream of inputs; call it with CallClientStream"
	case want == streamCall:
		use = "streams its results; call it with CallStream"
	case kind != typedCall && kind != rawCall:
		use = "does not stream; call it with CallJSON or CallRaw"
	case want == rawCall:
		use = "is raw-wire; call it with CallRaw"
	default:
		use = "is typed; call it with CallJSON"
	}
	if use != "" {
		return nil, fmt.Errorf("%w: method %q of interface %q %s", ErrWireModeMismatch, m.Name, d.InterfaceName, use)
	}
	if m.Optional && !h.Implements(i) {
		return nil, h.errAbsent(m)
	}
	if h.closed.Load() {
		return nil, h.errClosed()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// CallJSON calls typed method i with JSON input and returns its result as
// JSON. A JSON array is the positional arguments; null or empty input calls
// with none; any other value is the single argument. Values convert as the
// package documentation describes.
//
// An already-cancelled ctx returns its error without running anything; a
// ctx that ends while the plugin runs interrupts it, and the error matches
// ctx.Err() with errors.Is.
func (h *PluginHandle) CallJSON(ctx context.Context, i int, input []byte) ([]byte, error) {
	return h.call(ctx, i, typedCall, nil, input)
}

// CallRaw calls raw-wire method i: input is passed as one Python bytes
// argument, and the method must return bytes or another object with the
// buffer protocol (bytearray, memoryview, a numpy array), copied in C order.
// Cancellation works as for CallJSON.
func (h *PluginHandle) CallRaw(ctx context.Context, i int, input []byte) ([]byte, error) {
	return h.call(ctx, i, rawCall, nil, input)
}

// CallRawAppend is CallRaw, but appends the result to dst and returns the
// extended slice, like strconv.AppendInt. A host that reuses dst makes no
// Go allocation per call, which matters for large payloads: a fresh result
// slice per call makes the garbage collector run in proportion to the
// bytes returned.
func (h *PluginHandle) CallRawAppend(ctx context.Context, i int, dst, input []byte) ([]byte, error) {
	return h.call(ctx, i, rawCall, dst, input)
}

// call is every unary call: checks in Go, then one crossing into C on a
// pinned thread, inside the gate.
//
// Under a context that can end, the crossing runs on a goroutine of its
// own, and the caller returns ctx's error as soon as ctx ends, whatever
// Python is doing: waiting for the GIL, in a long C function, or in plugin
// code that takes its time to stop. The call goes on in the background
// until it stops (see cancel.c), and its result is dropped.
func (h *PluginHandle) call(ctx context.Context, i int, kind callKind, dst, input []byte) ([]byte, error) {
	m, err := h.method(ctx, i, kind)
	if err != nil {
		return dst, err
	}
	if h.wk != nil {
		return h.workerCall(ctx, i, m, kind, dst, input, nil)
	}
	t, ok := h.target()
	if !ok {
		return dst, h.errClosed()
	}
	if ctx.Done() == nil {
		if !gate.tryEnter() {
			gate.enter(nil)
		}
		runtime.LockOSThread()
		r := C.fidius_call(t.slot, C.Py_ssize_t(i), C.int(kind), bytesPtr(input), C.size_t(len(input)), nil)
		out, err := h.result(ctx, m, r, dst)
		runtime.UnlockOSThread()
		gate.leave()
		t.inst.done()
		runtime.KeepAlive(input)
		return out, err
	}
	return h.cross(ctx, t, m, dst, func(ctl *C.fidius_ctl) C.fidius_result {
		r := C.fidius_call(t.slot, C.Py_ssize_t(i), C.int(kind), bytesPtr(input), C.size_t(len(input)), ctl)
		runtime.KeepAlive(input)
		return r
	}, nil)
}

// cross makes a call's crossing through t, as call does: on the caller's
// goroutine under a context that cannot end, else on a goroutine of its
// own that the caller can leave. after, if not nil, runs once the
// crossing has returned or is sure never to run (ctx ended while it
// waited for a thread), whether or not the caller stayed; then t's
// instance is handed back.
func (h *PluginHandle) cross(ctx context.Context, t target, m *MethodDesc, dst []byte, crossing func(*C.fidius_ctl) C.fidius_result, after func()) ([]byte, error) {
	if t.inst != nil {
		if after == nil {
			after = t.inst.done
		} else {
			f := after
			after = func() {
				f()
				t.inst.done()
			}
		}
	}
	if ctx.Done() == nil {
		gate.enter(nil)
		runtime.LockOSThread()
		out, err := h.result(ctx, m, crossing(nil), dst)
		runtime.UnlockOSThread()
		gate.leave()
		if after != nil {
			after()
		}
		return out, err
	}
	c := newCancellation(ctx, t)
	var (
		out  []byte
		cerr error // not err: a variable the closure shares moves to the heap on every path
	)
	orphan := c.free
	if after != nil {
		orphan = func() {
			c.free()
			after()
		}
	}
	stayed := c.cross(ctx, crossing, func(r C.fidius_result) {
		out, cerr = h.result(ctx, m, r, dst)
	}, orphan)
	if !stayed {
		return dst, h.interrupted(m, ctx)
	}
	c.free()
	if after != nil {
		after()
	}
	return out, cerr
}

func (h *PluginHandle) interrupted(m *MethodDesc, ctx context.Context) error {
	return fmt.Errorf("method %q of interface %q interrupted: %w", m.Name, h.plugin.desc.InterfaceName, ctx.Err())
}

// discard releases what a call produced for a caller who has left. It runs
// on the thread that made the call.
func discard(r C.fidius_result) {
	if r.pending != 0 {
		C.fidius_release_pending()
	}
	if r.obj != nil {
		C.fidius_stream_close(nil, r.obj, nil, nil)
	}
	trimBuffer(r)
}

// trimBuffer frees the thread's C output buffer after a large result or
// error message has been copied out of it, so that one large message does
// not stay allocated on every thread it happened to run on.
func trimBuffer(r C.fidius_result) {
	if r.pending == 0 && r.len > keepBuffer {
		C.fidius_trim_buffer()
	}
}

func bytesPtr(b []byte) *C.char {
	if len(b) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(&b[0]))
}

// result turns a dispatch result into Go values, appending a successful
// result to dst. It runs on the thread that made the call, whose buffer
// holds the data.
func (h *PluginHandle) result(ctx context.Context, m *MethodDesc, r C.fidius_result, dst []byte) ([]byte, error) {
	switch r.status {
	case C.FIDIUS_OK:
		if dst == nil {
			dst = []byte{} // an empty result is empty, not nil
		}
		// append allocates without zeroing the part it copies over.
		out := append(dst, unsafe.Slice((*byte)(unsafe.Pointer(r.data)), int(r.len))...)
		if r.pending != 0 {
			C.fidius_release_pending()
		}
		trimBuffer(r)
		return out, nil
	case C.FIDIUS_CLOSED:
		return dst, h.errClosed()
	case C.FIDIUS_ABSENT:
		return dst, h.errAbsent(m)
	case C.FIDIUS_CANCELLED:
		return dst, h.interrupted(m, ctx)
	case C.FIDIUS_PLUGIN:
		e := readException(r)
		trimBuffer(r)
		return dst, &PluginError{Code: e.code, Message: e.message, Details: e.details}
	}
	msg := C.GoStringN(r.data, C.int(r.len))
	trimBuffer(r)
	if r.status == C.FIDIUS_INPUT {
		return dst, fmt.Errorf("%w for method %q: %s", ErrInputDecode, m.Name, msg)
	}
	return dst, fmt.Errorf("%w from method %q: %s", ErrOutputEncode, m.Name, msg)
}

// threadBufferCap is the capacity of this OS thread's C output buffer;
// tests use it to check that a large message does not stay allocated.
func threadBufferCap() int { return int(C.fidius_buffer_cap()) }

// sideBufferCap is the capacity of this OS thread's C buffers for host
// answers and host-fed items (tests).
func sideBufferCap() int { return int(C.fidius_side_buffer_cap()) }
