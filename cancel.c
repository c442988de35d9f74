// cancel.c owns stopping a call whose Go context ended. It never raises
// an exception asynchronously (PyThreadState_SetAsyncExc can land between a
// lock's acquire() and the try that releases it, inside the standard
// library, and leaves CPython's "async exception pending" state behind).
// Instead a C trace function is installed on the thread running the call,
// and raises the cancel exception at a line of the plugin's own code:
// never in the standard library, the SDK or the package's vendor/.
//
// The rule, from the first line of plugin code reached after cancellation:
//   - raise once;
//   - while the plugin is handling it (an except or finally block sees it,
//     or GeneratorExit when a cancelled stream is closed), let the plugin's
//     cleanup run for a grace period;
//   - once it has been swallowed, or the grace period is over, raise at
//     every line of plugin code.
// Nothing is installed on calls that are not cancelled, so they cost nothing.

#include "bridge.h"

#include <time.h>

// How long a plugin's cleanup may run once cancelled.
#define FIDIUS_GRACE_NS (200LL * 1000 * 1000)

PyObject *fidius_cancel_type;

// An arm is what the trace function is given: a capsule around this, so
// that the thread state owns it and a trace left installed by accident can
// never reach a freed ctl.
typedef struct {
	fidius_ctl *ctl;           // NULL once disarmed
	Py_tracefunc saved_func;   // the thread's own tracing (sys.settrace), chained
	PyObject *saved_obj;
} arm_state;

static long long now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void arm_free(PyObject *capsule) {
	arm_state *a = PyCapsule_GetPointer(capsule, "fidius.arm");
	if (a == NULL) {
		PyErr_Clear();
		return;
	}
	Py_XDECREF(a->saved_obj);
	PyMem_RawFree(a);
}

// prefixes makes the slot's "dir/" and "dir/vendor/" strings, decoded as
// Python decodes file names.
static int prefixes(fidius_slot *s) {
	if (s->own != NULL)
		return 0;
	PyObject *dir = PyUnicode_DecodeFSDefault(s->dir);
	if (dir == NULL)
		return -1;
	PyObject *own = PyUnicode_FromFormat("%U/", dir);
	Py_DECREF(dir);
	if (own == NULL)
		return -1;
	PyObject *vendor = PyUnicode_FromFormat("%Uvendor/", own);
	if (vendor == NULL) {
		Py_DECREF(own);
		return -1;
	}
	s->own = own;
	s->vendor = vendor;
	return 0;
}

static int plugin_code(fidius_slot *s, PyFrameObject *frame) {
	PyCodeObject *code = PyFrame_GetCode(frame);
	PyObject *file = code->co_filename;
	int mine = PyUnicode_Check(file) && PyUnicode_Tailmatch(file, s->own, 0, PY_SSIZE_T_MAX, -1) == 1 &&
	           PyUnicode_Tailmatch(file, s->vendor, 0, PY_SSIZE_T_MAX, -1) == 0;
	Py_DECREF(code);
	return mine;
}

static int is_cancel_type(PyObject *type) {
	return type != NULL && PyType_Check(type) &&
	       (PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)fidius_cancel_type) ||
	        PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)PyExc_GeneratorExit));
}

// handling_cancel reports whether the code running is handling the cancel
// exception (or the GeneratorExit of a cancelled stream's close): an except
// or finally block that is cleaning up. A handler's first line is reported
// before it makes the exception visible through exc_info, so an exception
// event just before counts too.
static int handling_cancel(fidius_ctl *ctl) {
	if (ctl->unwinding) {
		ctl->unwinding = 0;
		return 1;
	}
	PyObject *type, *value, *tb;
	PyErr_GetExcInfo(&type, &value, &tb);
	int yes = is_cancel_type(type);
	Py_XDECREF(type);
	Py_XDECREF(value);
	Py_XDECREF(tb);
	return yes;
}

static int cancel_trace(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg) {
	arm_state *a = PyCapsule_GetPointer(obj, "fidius.arm");
	if (a == NULL)
		return -1;
	if (a->saved_func != NULL && a->saved_func(a->saved_obj, frame, what, arg) < 0)
		return -1;
	fidius_ctl *ctl = a->ctl;
	if (ctl == NULL)
		return 0;
	if (what == PyTrace_EXCEPTION) {
		ctl->unwinding = PyTuple_Check(arg) && PyTuple_GET_SIZE(arg) > 0 && is_cancel_type(PyTuple_GET_ITEM(arg, 0));
		return 0;
	}
	// Only at lines: an exception raised at a call event unwinds the frame
	// without running its handlers, which for a resumed generator skips
	// its finally blocks. A line event follows every call at once anyway.
	if (what != PyTrace_LINE || !plugin_code(ctl->slot, frame))
		return 0;
	long long now = now_ns();
	if (ctl->raised_at == 0) {
		ctl->raised_at = now;
		if (handling_cancel(ctl))
			return 0; // already cleaning up (a cancelled stream's close)
	} else if (handling_cancel(ctl) && now - ctl->raised_at < FIDIUS_GRACE_NS) {
		return 0;
	}
	ctl->unwinding = 0;
	PyErr_SetNone(fidius_cancel_type);
	return -1;
}

void fidius_arm(fidius_ctl *ctl, int cleanup) {
	if (cleanup && ctl->raised_at == 0)
		ctl->raised_at = now_ns();
	if (ctl->arm != NULL)
		return;
	if (prefixes(ctl->slot) < 0) {
		PyErr_Clear();
		return;
	}
	arm_state *a = PyMem_RawCalloc(1, sizeof *a);
	if (a == NULL)
		return;
	PyObject *capsule = PyCapsule_New(a, "fidius.arm", arm_free);
	if (capsule == NULL) {
		PyErr_Clear();
		PyMem_RawFree(a);
		return;
	}
	PyThreadState *ts = ctl->ts;
	a->ctl = ctl;
	a->saved_func = ts->c_tracefunc;
	a->saved_obj = ts->c_traceobj;
	Py_XINCREF(a->saved_obj);
	// _PyEval_SetTrace may target another thread's state (the canceller
	// holds the GIL; the call's thread waits for it or is in C).
	if (_PyEval_SetTrace(ts, cancel_trace, capsule) < 0) {
		PyErr_Clear(); // an audit hook refused: the call is not interrupted
		Py_DECREF(capsule);
		return;
	}
	ctl->arm = capsule; // borrowed: the thread state owns it
}

void fidius_disarm(fidius_ctl *ctl) {
	PyObject *capsule = ctl->arm;
	if (capsule == NULL)
		return;
	ctl->arm = NULL;
	PyThreadState *ts = ctl->ts;
	arm_state *a = PyCapsule_GetPointer(capsule, "fidius.arm");
	a->ctl = NULL;
	// Put the thread's own tracing back, unless the plugin replaced ours.
	if (ts->c_traceobj == capsule) {
		PyObject *exc = fidius_err_take();
		if (_PyEval_SetTrace(ts, a->saved_func, a->saved_obj) < 0)
			PyErr_Clear(); // ours stays, inert: a->ctl is NULL
		fidius_err_restore(exc);
	}
}

void fidius_interrupt(fidius_ctl *ctl) {
	ctl->cancelled = 1;
	if (ctl->active)
		fidius_arm(ctl, 0);
}
