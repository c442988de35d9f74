// bridge.h is what the library's C files (bridge.c, json.c, cancel.c)
// share and Go never calls: the JSON codec's internals, the thread's output
// buffer, exception helpers, and the cancellation machinery's inner steps.

#ifndef FIDIUS_BRIDGE_H
#define FIDIUS_BRIDGE_H

#include "fidius.h"

#include <stdlib.h>

// fidius_rt is one interpreter plugins run in (interp.c): its state, and
// the library's helper objects made in it, which belong to it and are
// used only under its GIL.
struct fidius_rt {
	PyInterpreterState *is;
	uint64_t id;                 // never reused
	struct fidius_rt *next;      // the registry of isolated interpreters
	PyObject *describe;          // host.py describe(exc, structured) -> (bytes, bytes, details)
	PyObject *fields;            // host.py field_names(obj) -> tuple of str (json.c)
	PyObject *mapping;           // collections.abc.Mapping (json.c)
	PyObject *cancel_type;       // host.py CallCancelled (cancel.c, feed.c)
	PyObject *host_stream_error; // host.py HostStreamError (feed.c)
	PyObject *feed_type;         // the HostStream type (feed.c)
	PyObject *set_events;        // 3.12+: sys.monitoring.set_events (cancel.c)
	long events_on;              // 3.12+: the events a cancellation needs
	int armed_calls;             // 3.12+: calls being cancelled, which need them
	PyThreadState **ts;          // thread states made for it, under the registry's lock
	int nts, capts;
};

// fidius_rt_current is the interpreter of the running thread state (GIL
// held); fidius_call_rt that of the last call begun on this thread
// (fidius_call_began), where what a call leaves behind is released.
fidius_rt *fidius_rt_current(void);
void fidius_call_began(fidius_rt *rt);
fidius_rt *fidius_call_rt(void);

// fidius_gilstate_main makes main, this thread's main-interpreter state,
// its gilstate state again, in place of from (NULL: none), an isolated
// interpreter's state it has just detached (gilstate.c; 3.12+).
void fidius_gilstate_main(PyThreadState *from, PyThreadState *main);

void fidius_arm(fidius_ctl *ctl, int cleanup);   // GIL held; cleanup: the grace period starts now
void fidius_disarm(fidius_ctl *ctl);             // GIL held, on the call's own thread
void fidius_cancel_enter(fidius_ctl *ctl);       // the call's own thread: whose code runs here (NULL: none)

// Host-fed streams (feed.c), GIL held: a new feed reading Go's iterator
// feed_id for the call ctl (may be NULL), owned by this thread; claiming
// it for this thread (a later step of a bidirectional stream); and ending
// it, after which its next() reaches neither Go nor the call.
PyObject *fidius_feed_new(uintptr_t feed_id, fidius_ctl *ctl);
void fidius_feed_claim(PyObject *feed);
void fidius_feed_end(PyObject *feed);

// fidius_current_slot is the slot of the innermost call running on this
// thread, or NULL (GIL held).
fidius_slot *fidius_current_slot(void);
// fidius_call_depth is how many calls are running on this thread, one
// inside another (through host functions).
int fidius_call_depth(void);

// JSON codec (GIL held), used by dispatch and the loader.
PyObject *fidius_json_decode(const char *in, size_t n, char *err, size_t errlen);
// fidius_json_encode appends o's JSON to the thread buffer; -1 with a
// Python error set. strict refuses values that would become their str().
int fidius_json_encode(PyObject *o, int strict);

// fidius_err_take removes the pending exception (NULL if none) and returns
// it with its traceback; fidius_err_restore sets it again (NULL: nothing).
static inline PyObject *fidius_err_take(void) {
#if PY_VERSION_HEX >= 0x030C0000
	return PyErr_GetRaisedException();
#else
	PyObject *type, *value, *tb;
	PyErr_Fetch(&type, &value, &tb);
	if (type == NULL)
		return NULL;
	PyErr_NormalizeException(&type, &value, &tb);
	if (value != NULL && tb != NULL)
		PyException_SetTraceback(value, tb);
	Py_XDECREF(type);
	Py_XDECREF(tb);
	return value;
#endif
}

static inline void fidius_err_restore(PyObject *exc) {
#if PY_VERSION_HEX >= 0x030C0000
	PyErr_SetRaisedException(exc);
#else
	if (exc != NULL)
		PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

// The per-thread output buffer (internal to the C files).
typedef struct {
	char *p;
	size_t len;
	size_t cap;
} fidius_buf;
fidius_buf *fidius_tls_buf(void);
int fidius_buf_grow(fidius_buf *b, size_t extra);

// A thread buffer is freed after a result (or host answer, or input item)
// larger than this, so that one large value does not stay allocated on
// every thread it passed through.
#define FIDIUS_KEEP_BUFFER (1024 * 1024)

static inline void fidius_buf_trim(fidius_buf *b) {
	if (b->cap > FIDIUS_KEEP_BUFFER) {
		free(b->p);
		*b = (fidius_buf){0};
	}
}

// fidius_buf_stash sets aside what the thread buffer holds (a result or
// error part written) before a callback into Go, which may run another
// call on this thread: that call takes the buffer as its own, from the
// start, and may free it. fidius_buf_unstash frees what the callback left
// and puts the buffer back.
static inline fidius_buf fidius_buf_stash(void) {
	fidius_buf *b = fidius_tls_buf(), saved = *b;
	if (saved.len == 0)
		return (fidius_buf){0}; // nothing to keep: the buffer may be reused
	*b = (fidius_buf){0};
	return saved;
}

static inline void fidius_buf_unstash(fidius_buf saved) {
	fidius_buf *b = fidius_tls_buf();
	if (saved.len == 0) {
		b->len = 0;
		fidius_buf_trim(b); // large arguments of a host call, say
		return;
	}
	free(b->p);
	*b = saved;
}

static inline int fidius_buf_put(fidius_buf *b, const char *s, size_t n) {
	if (b->cap - b->len < n && fidius_buf_grow(b, n) < 0)
		return -1;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

static inline int fidius_buf_putc(fidius_buf *b, char c) {
	if (b->len == b->cap && fidius_buf_grow(b, 1) < 0)
		return -1;
	b->p[b->len++] = c;
	return 0;
}

#endif
