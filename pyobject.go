// This file owns the Go view of Python objects for code that drives Python
// step by step (loading, reloading, start-up): a reference type and the few
// C API calls such code needs. Calls on the hot path do not come here; they
// are one crossing into bridge.c. Everything here needs the GIL.

package fidius

/*
#include "fidius.h"

// Macros in the C API, as functions cgo can call.
static int fidius_is_str(PyObject *o) { return PyUnicode_Check(o); }
static int fidius_is_list(PyObject *o) { return PyList_Check(o); }
static int fidius_is_int(PyObject *o) { return PyLong_Check(o) && !PyBool_Check(o); }
static int fidius_is_none(PyObject *o) { return o == Py_None; }
*/
import "C"

import "unsafe"

// pyObject is a Python object. A *pyObject that a function returns is a
// new reference the caller owns and releases with decRef, unless its doc
// says it is borrowed. A nil *pyObject means a Python error is set.
type pyObject C.PyObject

func fromC(p *C.PyObject) *pyObject { return (*pyObject)(p) }
func toC(o *pyObject) *C.PyObject   { return (*C.PyObject)(o) }

// decRef releases a reference; nil is allowed.
func (o *pyObject) decRef() {
	if o != nil {
		C.Py_DecRef(toC(o))
	}
}

// getAttr returns o.name.
func (o *pyObject) getAttr(name string) *pyObject {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	return fromC(C.PyObject_GetAttrString(toC(o), cs))
}

// hasAttr reports whether o.name exists; any error looking it up counts
// as no.
func (o *pyObject) hasAttr(name string) bool {
	v := o.getAttr(name)
	if v == nil {
		clearError()
		return false
	}
	v.decRef()
	return true
}

// call calls o with positional arguments.
func (o *pyObject) call(args ...*pyObject) *pyObject {
	if len(args) == 0 {
		return fromC(C.PyObject_CallNoArgs(toC(o)))
	}
	// A Go array of C pointers: C may read it during the call.
	return fromC(C.PyObject_Vectorcall(toC(o), (**C.PyObject)(unsafe.Pointer(&args[0])), C.size_t(len(args)), nil))
}

func (o *pyObject) repr() *pyObject   { return fromC(C.PyObject_Repr(toC(o))) }
func (o *pyObject) str() *pyObject    { return fromC(C.PyObject_Str(toC(o))) }
func (o *pyObject) typeOf() *pyObject { return fromC(C.PyObject_Type(toC(o))) }

func (o *pyObject) isStr() bool      { return C.fidius_is_str(toC(o)) != 0 }
func (o *pyObject) isList() bool     { return C.fidius_is_list(toC(o)) != 0 }
func (o *pyObject) isInt() bool      { return C.fidius_is_int(toC(o)) != 0 } // bool excluded
func (o *pyObject) isNone() bool     { return C.fidius_is_none(toC(o)) != 0 }
func (o *pyObject) isCallable() bool { return C.PyCallable_Check(toC(o)) != 0 }

// listLen and listItem read a list; listItem's result is borrowed.
func (o *pyObject) listLen() int             { return int(C.PyList_Size(toC(o))) }
func (o *pyObject) listItem(i int) *pyObject { return fromC(C.PyList_GetItem(toC(o), C.Py_ssize_t(i))) }

// uint64Value converts an int; ok is false, with no error left set, when
// it does not fit.
func (o *pyObject) uint64Value() (v uint64, ok bool) {
	v = uint64(C.PyLong_AsUnsignedLongLong(toC(o)))
	if C.PyErr_Occurred() != nil {
		C.PyErr_Clear()
		return 0, false
	}
	return v, true
}

// pyString makes a str from Go text.
func pyString(s string) *pyObject {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return fromC(C.PyUnicode_FromStringAndSize(cs, C.Py_ssize_t(len(s))))
}

// importModule imports a module by its dotted name.
func importModule(name string) *pyObject {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	return fromC(C.PyImport_ImportModule(cs))
}

// sysGet returns sys.<name>, borrowed, or nil without an error set.
func sysGet(name string) *pyObject {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	return fromC(C.PySys_GetObject(cs))
}

// sysSet sets sys.<name>; false with an error set when it fails.
func sysSet(name string, v *pyObject) bool {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	return C.PySys_SetObject(cs, toC(v)) == 0
}
