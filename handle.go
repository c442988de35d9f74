// This file owns calling a loaded plugin: index and wire-mode checks in Go,
// then one cgo crossing that does the whole call under the GIL (SPEC
// section 3), and Close.

package fidius

/*
#include <stdlib.h>
#include "bridge.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	cpy "go.nhat.io/cpy/v3"
)

// keepBuffer is the size above which the thread's C output buffer is freed
// once a result has been copied out of it; see FIDIUS_KEEP_BUFFER.
const keepBuffer = 1 << 20

// PluginHandle is a loaded Python plugin. Its methods are safe for use by
// any number of goroutines at once; calls into Python take turns on the GIL.
type PluginHandle struct {
	desc   *InterfaceDescriptor
	tab    *C.fidius_table // C memory, so no Go pointer is stored by C
	closed atomic.Bool
}

// newHandle takes its own references to owner and fns. GIL held.
func newHandle(desc *InterfaceDescriptor, owner *cpy.PyObject, fns []*cpy.PyObject) *PluginHandle {
	tab := C.fidius_table_new(C.Py_ssize_t(len(fns)), toC(owner))
	if tab == nil {
		panic("fidius: out of memory allocating a method table")
	}
	for i, fn := range fns {
		C.fidius_table_set(tab, C.Py_ssize_t(i), toC(fn))
	}
	h := &PluginHandle{desc: desc, tab: tab}
	// A handle dropped without Close still gives its references back.
	runtime.AddCleanup(h, func(t *C.fidius_table) {
		go func() {
			withGIL(func() { C.fidius_table_clear(t) })
			C.free(unsafe.Pointer(t))
		}()
	}, tab)
	return h
}

// Descriptor returns the descriptor the handle was loaded with.
func (h *PluginHandle) Descriptor() *InterfaceDescriptor { return h.desc }

// MethodCount returns the number of methods, the bound on method indexes.
func (h *PluginHandle) MethodCount() int { return len(h.desc.Methods) }

// Close releases the handle's Python references. Calls running at the time
// finish normally; later calls return ErrClosed. Close is idempotent and
// always returns nil.
func (h *PluginHandle) Close() error {
	if h.closed.Swap(true) {
		return nil
	}
	withGIL(func() { C.fidius_table_clear(h.tab) })
	return nil
}

func (h *PluginHandle) errClosed() error {
	return fmt.Errorf("%w: interface %q", ErrClosed, h.desc.InterfaceName)
}

// method checks the index and the wire mode of a call.
func (h *PluginHandle) method(ctx context.Context, i int, raw bool) (*MethodDesc, error) {
	if i < 0 || i >= len(h.desc.Methods) {
		return nil, fmt.Errorf("%w: %d: interface %q has %d methods", ErrInvalidMethodIndex, i, h.desc.InterfaceName, len(h.desc.Methods))
	}
	m := &h.desc.Methods[i]
	switch {
	case m.Streaming:
		return nil, fmt.Errorf("%w: method %q of interface %q streams its results; it cannot be called as a unary method",
			ErrWireModeMismatch, m.Name, h.desc.InterfaceName)
	case m.WireRaw && !raw:
		return nil, fmt.Errorf("%w: method %q of interface %q is raw-wire; call it with CallRaw",
			ErrWireModeMismatch, m.Name, h.desc.InterfaceName)
	case !m.WireRaw && raw:
		return nil, fmt.Errorf("%w: method %q of interface %q is typed; call it with CallJSON",
			ErrWireModeMismatch, m.Name, h.desc.InterfaceName)
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
// An already-cancelled ctx returns its error without running anything.
func (h *PluginHandle) CallJSON(ctx context.Context, i int, input []byte) ([]byte, error) {
	m, err := h.method(ctx, i, false)
	if err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	r := C.fidius_call_json(h.tab, C.Py_ssize_t(i), bytesPtr(input), C.size_t(len(input)))
	out, err := h.result(m, r, nil)
	runtime.UnlockOSThread()
	runtime.KeepAlive(h)
	runtime.KeepAlive(input)
	return out, err
}

// CallRaw calls raw-wire method i: input is passed as one Python bytes
// argument, and the method must return bytes, bytearray or memoryview.
//
// An already-cancelled ctx returns its error without running anything.
func (h *PluginHandle) CallRaw(ctx context.Context, i int, input []byte) ([]byte, error) {
	return h.CallRawAppend(ctx, i, nil, input)
}

// CallRawAppend is CallRaw, but appends the result to dst and returns the
// extended slice, like strconv.AppendInt. A host that reuses dst makes no
// Go allocation per call, which matters for large payloads: a fresh result
// slice per call makes the garbage collector run in proportion to the
// bytes returned.
func (h *PluginHandle) CallRawAppend(ctx context.Context, i int, dst, input []byte) ([]byte, error) {
	m, err := h.method(ctx, i, true)
	if err != nil {
		return dst, err
	}
	runtime.LockOSThread()
	r := C.fidius_call_raw(h.tab, C.Py_ssize_t(i), bytesPtr(input), C.size_t(len(input)))
	out, err := h.result(m, r, dst)
	runtime.UnlockOSThread()
	runtime.KeepAlive(h)
	runtime.KeepAlive(input)
	return out, err
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
func (h *PluginHandle) result(m *MethodDesc, r C.fidius_result, dst []byte) ([]byte, error) {
	switch r.status {
	case C.FIDIUS_OK:
		if dst == nil {
			dst = []byte{} // an empty result is empty, not nil
		}
		// append allocates without zeroing the part it copies over.
		out := append(dst, unsafe.Slice((*byte)(unsafe.Pointer(r.data)), int(r.len))...)
		if r.pending != 0 {
			C.fidius_release_pending()
		} else if r.len > keepBuffer {
			C.fidius_trim_buffer()
		}
		return out, nil
	case C.FIDIUS_CLOSED:
		return dst, h.errClosed()
	case C.FIDIUS_PLUGIN:
		e := readException(r)
		return dst, &PluginError{Code: e.code, Message: e.message, Details: e.details}
	}
	msg := C.GoStringN(r.data, C.int(r.len))
	if r.status == C.FIDIUS_INPUT {
		return dst, fmt.Errorf("%w for method %q: %s", ErrInputDecode, m.Name, msg)
	}
	return dst, fmt.Errorf("%w from method %q: %s", ErrOutputEncode, m.Name, msg)
}
