// cancel.c owns stopping a call whose Go context ended. It never raises
// an exception asynchronously (PyThreadState_SetAsyncExc can land between a
// lock's acquire() and the try that releases it, inside the standard
// library, and leaves CPython's "async exception pending" state behind).
// Instead a C trace function is installed on the thread running the call,
// and raises the cancel exception at a line of the plugin's own code:
// never in the standard library, the SDK or the package's vendor/.
//
// The exception is raised only at a safe point of the plugin's own code:
// a loop's back-edge, or the first line of a plugin function (not a
// generator's resumption). Never at the exit of a with block, in a finally
// block on the normal path, or at a handler's entry: raised there, it would
// skip the __exit__ or the release that follows. Any plugin code that runs
// long passes safe points: it loops or calls.
//
// The rule, at each safe point once the call is cancelled:
//   - raise once;
//   - while the plugin is handling it (an except or finally block sees it,
//     or GeneratorExit when a cancelled stream is closed), let the plugin's
//     cleanup run for a grace period;
//   - once it has been swallowed, or the grace period is over, raise at
//     every safe point.
// Nothing is installed on calls that are not cancelled, so they cost nothing.

#include "bridge.h"

#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h> // f_lasti
#endif
#include <time.h>

// How long a plugin's cleanup may run once cancelled.
#define FIDIUS_GRACE_NS (200LL * 1000 * 1000)

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
	       (PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)fidius_rt_current()->cancel_type) ||
	        PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)PyExc_GeneratorExit));
}

// handling_cancel reports whether the code running is handling the cancel
// exception (or the GeneratorExit of a cancelled stream's close): an except
// or finally block that is cleaning up.
static int handling_cancel(void) {
	PyObject *type, *value, *tb;
	PyErr_GetExcInfo(&type, &value, &tb);
	int yes = is_cancel_type(type);
	Py_XDECREF(type);
	Py_XDECREF(value);
	Py_XDECREF(tb);
	return yes;
}

// must_raise applies the rule at a safe point in code run by the cancelled
// call ctl.
static int must_raise(fidius_ctl *ctl, PyCodeObject *code) {
	if (!plugin_code(ctl->slot, code))
		return 0;
	long long now = now_ns();
	if (ctl->raised_at == 0) {
		ctl->raised_at = now;
		return !handling_cancel(); // a cancelled stream's close is already cleaning up
	}
	return !(handling_cancel() && now - ctl->raised_at < FIDIUS_GRACE_NS);
}

static int is_generator_code(PyCodeObject *code) {
	return (code->co_flags & (CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR | CO_ITERABLE_COROUTINE)) != 0;
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

static int frame_offset(PyFrameObject *frame) {
#if PY_VERSION_HEX >= 0x030B0000
	return PyFrame_GetLasti(frame);
#else
	return frame->f_lasti;
#endif
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
	PyCodeObject *code = PyFrame_GetCode(frame);
	int raise = 0;
	if (what == PyTrace_CALL) {
		// A call event of a function (not a generator's resumption): its
		// first line is a safe point. Raising at the call event itself
		// would unwind the frame without its handlers.
		if (!is_generator_code(code))
			ctl->entry = frame;
	} else if (what == PyTrace_RETURN) {
		if (ctl->entry == frame)
			ctl->entry = NULL;
		if (ctl->last_frame == frame)
			ctl->last_frame = NULL;
	} else if (what == PyTrace_LINE && plugin_code(ctl->slot, code)) {
		// Within one frame, a line event at an offset that does not
		// advance follows a backward jump: a loop's back-edge.
		int at = frame_offset(frame);
		int safe = frame == ctl->entry || (frame == ctl->last_frame && at <= ctl->last_offset);
		if (frame == ctl->entry)
			ctl->entry = NULL;
		ctl->last_frame = frame;
		ctl->last_offset = at;
		raise = safe && must_raise(ctl, code);
	}
	Py_DECREF(code);
	if (!raise)
		return 0;
	PyErr_SetNone(fidius_rt_current()->cancel_type);
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
	// Ours too, released at disarm: the plugin may replace the trace
	// (sys.settrace), which drops the thread state's reference.
	ctl->arm = capsule;
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
	Py_DECREF(capsule);
}

int fidius_cancel_init(void) { return 0; }
void fidius_cancel_enter(fidius_ctl *ctl) { (void)ctl; }

#else

// 3.12 and later: _PyEval_SetTrace instruments the whole interpreter (all
// Python code ran about 4x slower while it was on) and 3.13 no longer
// exports it, so sys.monitoring (PEP 669) does the same work: PY_START and
// LINE events find a function's first line, JUMP and BRANCH events a
// backward jump. The events are interpreter-wide, so they are enabled only while some call is
// being cancelled; the callbacks find their call through a thread-local.
// Each interpreter has its own sys.monitoring: the callbacks are
// registered, and the events counted, in each (fidius_rt).
// Meanwhile plugin code on other threads pays for a callback per line.

#define FIDIUS_TOOL_ID 4

static __thread fidius_ctl *tls_call;   // the call whose plugin code this thread runs

static PyObject *raise_if(fidius_ctl *ctl, PyCodeObject *code) {
	if (must_raise(ctl, code)) {
		PyErr_SetNone(ctl->slot->rt->cancel_type);
		return NULL;
	}
	Py_RETURN_NONE;
}

// PY_START (code, offset): a function (or a generator's first run) starts;
// its first line is a safe point.
static PyObject *on_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
	(void)self;
	fidius_ctl *ctl = tls_call;
	if (ctl != NULL && ctl->armed && nargs > 0)
		ctl->entry = args[0];
	Py_RETURN_NONE;
}

// LINE (code, line): raise at the first line of a starting function, or
// at the line a backward jump led to.
static PyObject *on_line(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
	(void)self;
	fidius_ctl *ctl = tls_call;
	if (ctl == NULL || !ctl->armed || nargs < 1 || args[0] != ctl->entry || !PyCode_Check(args[0]))
		Py_RETURN_NONE;
	ctl->entry = NULL;
	return raise_if(ctl, (PyCodeObject *)args[0]);
}

// JUMP and BRANCH (code, from, to): a backward jump, a loop's back-edge,
// makes the next line of that code a safe point. Not the jump itself: an
// exception raised from a jump's callback skips the finally blocks around
// it (seen on 3.12.1 and 3.13.0).
static PyObject *on_jump(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
	(void)self;
	fidius_ctl *ctl = tls_call;
	if (ctl != NULL && ctl->armed && nargs >= 3 && PyLong_AsLong(args[2]) <= PyLong_AsLong(args[1]))
		ctl->entry = args[0];
	PyErr_Clear();
	Py_RETURN_NONE;
}

static PyMethodDef on_start_def = {"fidius_on_start", (PyCFunction)(void (*)(void))on_start, METH_FASTCALL, NULL};
static PyMethodDef on_line_def = {"fidius_on_line", (PyCFunction)(void (*)(void))on_line, METH_FASTCALL, NULL};
static PyMethodDef on_jump_def = {"fidius_on_jump", (PyCFunction)(void (*)(void))on_jump, METH_FASTCALL, NULL};

static int events(fidius_rt *rt, long mask) {
	PyObject *exc = fidius_err_take();
	PyObject *res = PyObject_CallFunction(rt->set_events, "il", FIDIUS_TOOL_ID, mask);
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

static int register_callback(fidius_rt *rt, PyObject *mon, const char *event, PyMethodDef *def, PyObject *names) {
	long bit = event_bit(names, event);
	PyObject *fn = bit < 0 ? NULL : PyCFunction_New(def, NULL);
	PyObject *res = fn ? PyObject_CallMethod(mon, "register_callback", "ilO", FIDIUS_TOOL_ID, bit, fn) : NULL;
	Py_XDECREF(fn);
	Py_XDECREF(res);
	rt->events_on |= bit;
	return res == NULL ? -1 : 0;
}

// fidius_cancel_init registers the callbacks (GIL held, at start-up).
int fidius_cancel_init(void) {
	fidius_rt *rt = fidius_rt_current();
	PyObject *mon = PySys_GetObject("monitoring"); // borrowed
	if (mon == NULL)
		return -1;
	PyObject *names = PyObject_GetAttrString(mon, "events");
	if (names == NULL)
		return -1;
	PyObject *r = PyObject_CallMethod(mon, "use_tool_id", "is", FIDIUS_TOOL_ID, "fidius-go");
	int rc = r == NULL || register_callback(rt, mon, "PY_START", &on_start_def, names) < 0 ||
	                 register_callback(rt, mon, "LINE", &on_line_def, names) < 0 ||
	                 register_callback(rt, mon, "JUMP", &on_jump_def, names) < 0 ||
	                 register_callback(rt, mon, "BRANCH", &on_jump_def, names) < 0
	             ? -1
	             : 0;
	Py_XDECREF(r);
	Py_DECREF(names);
	if (rc == 0)
		rt->set_events = PyObject_GetAttrString(mon, "set_events");
	return rt->set_events == NULL ? -1 : 0;
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
	fidius_rt *rt = ctl->slot->rt;
	if (rt->armed_calls++ == 0)
		events(rt, rt->events_on);
}

void fidius_disarm(fidius_ctl *ctl) {
	if (!ctl->armed)
		return;
	ctl->armed = 0;
	fidius_rt *rt = ctl->slot->rt;
	if (--rt->armed_calls == 0)
		events(rt, 0);
}

#endif
int fidius_rearm(fidius_ctl *ctl) {
	if (!ctl->active || !ctl->cancelled)
		return 0;
#if PY_VERSION_HEX < 0x030C0000
	if (ctl->arm != NULL && ctl->ts->c_traceobj != ctl->arm)
		fidius_disarm(ctl); // the plugin replaced our trace: ours goes, theirs is chained
#else
	if (ctl->armed)
		events(ctl->slot->rt, ctl->slot->rt->events_on); // the plugin may have turned the events off
#endif
	fidius_arm(ctl, 0);
	return 1;
}

void fidius_interrupt(fidius_ctl *ctl) {
	ctl->cancelled = 1;
	if (ctl->active)
		fidius_arm(ctl, 0);
}
