// This file owns turning Python strings into Go strings where the str may
// hold text UTF-8 cannot represent (lone surrogates).

package fidius

/*
#include "bridge.h"

// Escapes what UTF-8 cannot hold (lone surrogates) instead of failing.
static PyObject *fidius_text_bytes(PyObject *s) {
	return PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace");
}
*/
import "C"

import cpy "go.nhat.io/cpy/v3"

// pyText returns str(o) as UTF-8 for messages, with characters UTF-8
// cannot hold written as backslash escapes (\udcff), or "?" if o has no
// str at all. It leaves no exception set: a message must never leave the
// thread with a pending exception that the next call would trip over.
// GIL held.
func pyText(o *cpy.PyObject) string {
	s := o
	if !cpy.PyUnicode_Check(o) {
		if s = o.Str(); s == nil {
			cpy.PyErr_Clear()
			return "?"
		}
		defer s.DecRef()
	}
	b := fromC(C.fidius_text_bytes(toC(s)))
	if b == nil {
		cpy.PyErr_Clear()
		return "?"
	}
	defer b.DecRef()
	return bytesText(b)
}

// bytesText copies a Python bytes object's contents. GIL held.
func bytesText(b *cpy.PyObject) string {
	var p *C.char
	var n C.Py_ssize_t
	if C.PyBytes_AsStringAndSize(toC(b), &p, &n) < 0 {
		cpy.PyErr_Clear()
		return "?"
	}
	return C.GoStringN(p, C.int(n))
}
