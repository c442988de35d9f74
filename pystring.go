// This file owns turning Python strings into Go strings and back where
// either side may hold text the other cannot represent: a str with lone
// surrogates has no UTF-8 form, and a file-system path need not be UTF-8.

package fidius

/*
#include "fidius.h"

// Escapes what UTF-8 cannot hold (lone surrogates) instead of failing.
static PyObject *fidius_text_bytes(PyObject *s) {
	return PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace");
}
*/
import "C"

import (
	"unsafe"
)

// pyText returns str(o) as UTF-8 for messages, with characters UTF-8
// cannot hold written as backslash escapes (\udcff), or "?" if o has no
// str at all. It leaves no exception set: a message must never leave the
// thread with a pending exception that the next call would trip over.
// GIL held.
func pyText(o *pyObject) string {
	s := o
	if !o.isStr() {
		if s = o.str(); s == nil {
			C.PyErr_Clear()
			return "?"
		}
		defer s.decRef()
	}
	b := fromC(C.fidius_text_bytes(toC(s)))
	if b == nil {
		C.PyErr_Clear()
		return "?"
	}
	defer b.decRef()
	return bytesText(b)
}

// bytesText copies a Python bytes object's contents. GIL held.
func bytesText(b *pyObject) string {
	var p *C.char
	var n C.Py_ssize_t
	if C.PyBytes_AsStringAndSize(toC(b), &p, &n) < 0 {
		C.PyErr_Clear()
		return "?"
	}
	return C.GoStringN(p, C.int(n))
}

// pyPath returns a file-system path as a Python str, decoded as Python
// decodes paths (the file-system encoding with surrogateescape), so a
// path that is not valid UTF-8 still names the same file. Nil, with an
// exception set, only when memory runs out. GIL held.
func pyPath(p string) *pyObject {
	b := []byte(p)
	if len(b) == 0 {
		return pyString("")
	}
	return fromC(C.PyUnicode_DecodeFSDefaultAndSize((*C.char)(unsafe.Pointer(&b[0])), C.Py_ssize_t(len(b))))
}

// goPath returns the bytes of the path a Python str names (the inverse of
// pyPath), and false for a str that names no path. It leaves no exception
// set. GIL held.
func goPath(s *pyObject) (string, bool) {
	b := fromC(C.PyUnicode_EncodeFSDefault(toC(s)))
	if b == nil {
		C.PyErr_Clear()
		return "", false
	}
	defer b.decRef()
	return bytesText(b), true
}
