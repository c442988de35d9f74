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

static long long now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
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

static int plugin_code(fidius_slot *s, PyCodeObject *code) {
	PyObject *file = code->co_filename;
	return PyUnicode_Check(file) && PyUnicode_Tailmatch(file, s->own, 0, PY_SSIZE_T_MAX, -1) == 1 &&
	       PyUnicode_Tailmatch(file, s->vendor, 0, PY_SSIZE_T_MAX, -1) == 0;
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

// must_raise applies the rule at a line (or jump) of code run by the
// cancelled call ctl.
static int must_raise(fidius_ctl *ctl, PyCodeObject *code) {
	if (!plugin_code(ctl->slot, code))
		return 0;
	long long now = now_ns();
	if (ctl->raised_at == 0) {
		ctl->raised_at = now;
		if (handling_cancel(ctl))
			return 0; // already cleaning up (a cancelled stream's close)
	} else if (handling_cancel(ctl) && now - ctl->raised_at < FIDIUS_GRACE_NS) {
		return 0;
	}
	// The next line of plugin code the exception reaches is a handler's
	// (except or finally), whose first line comes before exc_info shows
	// the exception on every version.
	ctl->unwinding = 1;
	return 1;
}

#if PY_VERSION_HEX < 0x030C0000

// Up to 3.11: a C trace function installed on the call's own thread state
// with _PyEval_SetTrace, which may target another thread (the canceller
// holds the GIL while the call's thread waits for it or runs C code). It
// affects no other thread.

// An arm is what the trace function is given: a capsule around this, so
// that the thread state owns it and a trace left installed by accident can
// never reach a freed ctl.
typedef struct {
	fidius_ctl *ctl;           // NULL once disarmed
	Py_tracefunc saved_func;   // the thread's own tracing (sys.settrace), chained
	PyObject *saved_obj;
} arm_state;

static void arm_free(PyObject *capsule) {
	arm_state *a = PyCapsule_GetPointer(capsule, "fidius.arm");
	if (a == NULL) {
		PyErr_Clear();
		return;
	}
	Py_XDECREF(a->saved_obj);
	PyMem_RawFree(a);
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
	if (what != PyTrace_LINE)
		return 0;
	PyCodeObject *code = PyFrame_GetCode(frame);
	int raise = must_raise(ctl, code);
	Py_DECREF(code);
	if (!raise)
		return 0;
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

int fidius_cancel_init(void) { return 0; }
void fidius_cancel_enter(fidius_ctl *ctl) { (void)ctl; }

#else

// 3.12 and later: _PyEval_SetTrace instruments the whole interpreter (all
// Python code ran about 4x slower while it was on) and 3.13 no longer
// exports it, so sys.monitoring (PEP 669) does the same work: callbacks for
// LINE and JUMP events, and EXCEPTION_HANDLED to see a handler start. The
// events are interpreter-wide, so they are enabled only while some call is
// being cancelled; the callbacks find their call through a thread-local.
// Meanwhile plugin code on other threads pays for a callback per line.

#define FIDIUS_TOOL_ID 4

static __thread fidius_ctl *tls_call;   // the call whose plugin code this thread runs
static int armed_calls;                  // GIL-protected
static PyObject *set_events;             // sys.monitoring.set_events
static long events_on;                   // LINE | JUMP | EXCEPTION_HANDLED

static PyObject *on_line(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
	fidius_ctl *ctl = tls_call;
	if (ctl != NULL && ctl->armed && nargs > 0 && PyCode_Check(args[0]) && must_raise(ctl, (PyCodeObject *)args[0])) {
		PyErr_SetNone(fidius_cancel_type);
		return NULL;
	}
	Py_RETURN_NONE;
}

static PyObject *on_handled(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
	fidius_ctl *ctl = tls_call;
	if (ctl != NULL && ctl->armed && nargs > 2)
		ctl->unwinding = is_cancel_type((PyObject *)Py_TYPE(args[2]));
	Py_RETURN_NONE;
}

static PyMethodDef on_line_def = {"fidius_on_line", (PyCFunction)(void (*)(void))on_line, METH_FASTCALL, NULL};
static PyMethodDef on_handled_def = {"fidius_on_handled", (PyCFunction)(void (*)(void))on_handled, METH_FASTCALL, NULL};

static int events(long mask) {
	PyObject *exc = fidius_err_take();
	PyObject *res = PyObject_CallFunction(set_events, "il", FIDIUS_TOOL_ID, mask);
	int rc = res == NULL ? -1 : 0;
	Py_XDECREF(res);
	PyErr_Clear();
	fidius_err_restore(exc);
	return rc;
}

static long event_bit(PyObject *names, const char *name) {
	PyObject *v = PyObject_GetAttrString(names, name);
	long bit = v ? PyLong_AsLong(v) : -1;
	Py_XDECREF(v);
	return bit;
}

// fidius_cancel_init registers the callbacks (GIL held, at start-up).
int fidius_cancel_init(void) {
	PyObject *mon = PySys_GetObject("monitoring"); // borrowed
	if (mon == NULL)
		return -1;
	PyObject *names = PyObject_GetAttrString(mon, "events");
	if (names == NULL)
		return -1;
	long line = event_bit(names, "LINE"), jump = event_bit(names, "JUMP"), handled = event_bit(names, "EXCEPTION_HANDLED");
	Py_DECREF(names);
	if (line < 0 || jump < 0 || handled < 0)
		return -1;
	events_on = line | jump | handled;
	PyObject *line_fn = PyCFunction_New(&on_line_def, NULL);
	PyObject *handled_fn = PyCFunction_New(&on_handled_def, NULL);
	PyObject *r1 = line_fn && handled_fn ? PyObject_CallMethod(mon, "use_tool_id", "is", FIDIUS_TOOL_ID, "fidius-go") : NULL;
	PyObject *r2 = r1 ? PyObject_CallMethod(mon, "register_callback", "ilO", FIDIUS_TOOL_ID, line, line_fn) : NULL;
	PyObject *r3 = r2 ? PyObject_CallMethod(mon, "register_callback", "ilO", FIDIUS_TOOL_ID, jump, line_fn) : NULL;
	PyObject *r4 = r3 ? PyObject_CallMethod(mon, "register_callback", "ilO", FIDIUS_TOOL_ID, handled, handled_fn) : NULL;
	set_events = r4 ? PyObject_GetAttrString(mon, "set_events") : NULL;
	Py_XDECREF(line_fn);
	Py_XDECREF(handled_fn);
	Py_XDECREF(r1);
	Py_XDECREF(r2);
	Py_XDECREF(r3);
	Py_XDECREF(r4);
	return set_events == NULL ? -1 : 0;
}

// fidius_cancel_enter tells this thread which call's plugin code it runs
// (NULL: none).
void fidius_cancel_enter(fidius_ctl *ctl) { tls_call = ctl; }

void fidius_arm(fidius_ctl *ctl, int cleanup) {
	if (cleanup && ctl->raised_at == 0)
		ctl->raised_at = now_ns();
	if (ctl->armed)
		return;
	if (prefixes(ctl->slot) < 0) {
		PyErr_Clear();
		return;
	}
	ctl->armed = 1;
	if (armed_calls++ == 0)
		events(events_on);
}

void fidius_disarm(fidius_ctl *ctl) {
	if (!ctl->armed)
		return;
	ctl->armed = 0;
	if (--armed_calls == 0)
		events(0);
}

#endif
void fidius_interrupt(fidius_ctl *ctl) {
	ctl->cancelled = 1;
	if (ctl->active)
		fidius_arm(ctl, 0);
}
