// fidius.h is the C layer as Go sees it: the kept per-thread Python thread
// state, one-crossing dispatch, cancellation, and what loading needs.
// Everything that touches Python on a call happens inside one of these
// functions, so a call costs one cgo crossing. What only the C files share
// is in bridge.h.

#ifndef FIDIUS_H
#define FIDIUS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

// Result status of a dispatch. Details live in the calling thread's buffer.
enum {
	FIDIUS_OK = 0,
	FIDIUS_CLOSED = 1,      // the handle's table was cleared by Close
	FIDIUS_INPUT = 2,       // input could not be decoded; buffer holds the message
	FIDIUS_PLUGIN = 3,      // plugin raised; buffer holds code, message, details
	FIDIUS_OUTPUT = 4,      // return value could not be encoded; buffer holds the message
	FIDIUS_CANCELLED = 5,   // the call was interrupted through its fidius_ctl
	FIDIUS_END = 6,         // a stream has no more items
	FIDIUS_ABSENT = 7,      // an optional method the plugin does not define
};

// fidius_result is returned by value so that Go passes no pointer to C.
// data/len is the payload (or the message); for FIDIUS_PLUGIN the buffer is
// code (len1 bytes), message (len2 bytes), details JSON (the rest).
// pending is set when data points into a Python object that Go must release
// with fidius_release_pending after copying.
typedef struct {
	int status;
	int pending;
	const char *data;
	size_t len;
	size_t len1;
	size_t len2;
	PyObject *obj;   // fidius_stream_start: the iterator, a new reference
} fidius_result;

// fidius_table holds one generation of a handle's Python references; an
// optional method the plugin does not define is NULL.
typedef struct {
	Py_ssize_t n;
	PyObject *owner;   // the module (or configured instance) the methods came from
	PyObject *fns[];
} fidius_table;

// fidius_slot is what a handle calls through. tab is read and replaced only
// under the GIL, so Reload and Close can swap it while calls run: a call
// holds its own reference to the function it runs. NULL means closed. dir
// is the package directory: code from files under it, outside its vendor/
// directory, is the plugin's own and the only code a cancellation
// interrupts. The slot is freed by Go once the handle is unreachable.
// fidius_rt is an interpreter plugins run in: the main one, or an
// isolated one (interp.c).
typedef struct fidius_rt fidius_rt;

typedef struct {
	fidius_table *tab;
	fidius_rt *rt;      // the interpreter the table's functions live in
	char *dir;          // malloc'd, bytes as the file system spells them
	PyObject *own;      // str: dir + "/", made when first needed
	PyObject *vendor;   // str: dir + "/vendor/"
	int strict;         // typed results that would become their str() are errors
	uintptr_t host;     // Go's id of the host interfaces bound to the plugin, or 0
} fidius_slot;

// States of fidius_ctl.state, the handshake between a cancellable call's
// caller and the thread running it. The caller may leave (ABANDONED) while
// the call waits for the GIL or runs plugin code, never while C reads its
// input (READING) or Go copies its result into the caller's memory
// (DELIVERING).
enum {
	FIDIUS_WAITING = 0,
	FIDIUS_READING = 1,
	FIDIUS_RUNNING = 2,
	FIDIUS_DELIVERING = 3,
	FIDIUS_ABANDONED = 4,
};

// fidius_ctl lets another thread cancel a running call. It is C memory,
// made and freed by Go; C reads and writes it only under the GIL, except
// state, which is atomic.
typedef struct {
	fidius_slot *slot;   // the call's handle, for what counts as plugin code
	PyThreadState *ts;   // the thread state running the call
	int active;          // plugin code of the call may be running
	int cancelled;       // the context ended: nothing more may run
	int state;           // FIDIUS_WAITING...; atomic
	long long raised_at; // when the cancel exception was first raised (ns), 0 before
	void *entry;         // the frame (3.12+: code) whose first line is next: a safe point
	void *last_frame;    // up to 3.11: the plugin frame of the last line event, and
	int last_offset;     // its instruction offset, to see backward jumps
	PyObject *arm;       // up to 3.11: the trace installed on ts while cancelling (owned), or NULL
	int armed;           // 3.12+: the monitoring events serve this call
} fidius_ctl;

// Interpreters and their GILs (interp.c).
int fidius_start(void);                   // Py_InitializeEx(0) once; returns with the main GIL held
fidius_rt *fidius_main_rt(void);
void fidius_gil_acquire(fidius_rt *rt);   // takes rt's GIL with this OS thread's kept state in rt
void fidius_gil_release(void);            // releases the GIL this thread holds
// fidius_rt_new makes an isolated interpreter (3.12+) with its own GIL,
// from a thread holding no GIL, and returns holding the new GIL; NULL with
// the reason in *r (data/len). refused asks for a configuration CPython
// refuses (tests). fidius_rt_end ends one, holding its GIL, once nothing
// runs in it; the thread holds no GIL afterwards.
fidius_rt *fidius_rt_new(int refused, fidius_result *r);
void fidius_rt_end(fidius_rt *rt);
// fidius_rt_busy drops the plugin's atexit functions, then counts the
// threads running in rt that the library did not make: the plugin's own,
// which ending rt waits for (its GIL held).
int fidius_rt_busy(fidius_rt *rt);

// Helpers from the bootstrap module, set once in each interpreter (its GIL
// held): the exception describer, the dataclass field lister, the exception type
// raised into interrupted calls, and collections.abc.Mapping.
void fidius_set_helpers(PyObject *describe, PyObject *fields, PyObject *cancel, PyObject *mapping);
PyObject *fidius_exec_bootstrap(const char *src, const char *filename);

// Dispatch: one crossing each; they take and release the GIL themselves.
// fidius_call calls method i with JSON input and a JSON result, or with
// raw set, one bytes argument and a bytes-like result. ctl may be NULL for
// a call that cannot be cancelled.
fidius_result fidius_call(fidius_slot *s, Py_ssize_t i, int raw, const char *in, size_t n, fidius_ctl *ctl);
void fidius_release_pending(void);   // takes the GIL
void fidius_trim_buffer(void);       // no GIL needed

// Streams: start calls the method and takes an iterator of its result;
// next encodes one item (FIDIUS_END after the last); close calls the
// iterator's close() if it has one and releases it, then ends and
// releases the feed of a bidirectional stream. it or feed may be NULL.
fidius_result fidius_stream_start(fidius_slot *s, Py_ssize_t i, const char *in, size_t n, fidius_ctl *ctl);
fidius_result fidius_stream_next(fidius_slot *s, PyObject *it, PyObject *feed, fidius_ctl *ctl);
void fidius_stream_close(fidius_slot *s, PyObject *it, PyObject *feed, fidius_ctl *ctl);

// Host-fed streams (feed.c, bridge.c). A client-streaming or bidirectional
// method gets, before its JSON arguments, an iterator whose next() calls
// Go's fidiusFeedNext(feed_id) with the GIL released; Go answers with
// fidius_feed_put (the item's JSON, or the host's error message) and 1
// (an item), 0 (the end) or -1 (an error). Ending a feed calls Go's
// fidiusFeedStop(feed_id), on the same thread. fidius_call_fed makes the
// feed, calls the method, ends the feed and encodes the result, in one
// crossing. fidius_stream_start_fed starts a bidirectional call and hands
// the feed to Go in *feed, to pass to each fidius_stream_next and to
// fidius_stream_close, which ends it.
fidius_result fidius_call_fed(fidius_slot *s, Py_ssize_t i, uintptr_t feed_id, const char *in, size_t n, fidius_ctl *ctl);
fidius_result fidius_stream_start_fed(fidius_slot *s, Py_ssize_t i, uintptr_t feed_id, const char *in, size_t n, fidius_ctl *ctl, PyObject **feed);
void fidius_feed_put(const char *p, size_t n);
int fidius_feed_init(PyObject *host_stream_error);   // GIL held, once in each interpreter

// Host functions (hostcall.c): the _fidius_host module, made once at
// start-up (GIL held). Its call() runs Go's fidiusHostCall(slot->host, ...)
// for the innermost call on the thread, with the GIL released; Go answers
// with fidius_host_put (the result's JSON, or {"code", "message",
// "details"}) and 1 or -1.
int fidius_host_init(void);   // GIL held, once in each interpreter
void fidius_host_put(const char *p, size_t n);

// Cancellation (cancel.c). fidius_interrupt marks ctl's call cancelled and,
// if plugin code of it is running, arms the thread running it so that the
// cancel exception is raised at the next line of plugin code (GIL held).
void fidius_interrupt(fidius_ctl *ctl);
// fidius_rearm puts the interrupt back if the plugin removed it, and
// returns 0 once ctl's call no longer runs plugin code (GIL held).
int fidius_rearm(fidius_ctl *ctl);
// fidius_load_begin and fidius_load_end bracket the plugin code a load
// runs, so that ctl interrupts it as it would a call (GIL held). Begin
// returns 0 when the load's caller has already left: nothing may run.
int fidius_load_begin(fidius_ctl *ctl, fidius_slot *s);
void fidius_load_end(fidius_ctl *ctl);
int fidius_cancel_init(void);                    // GIL held, once in each interpreter

// Tables and slots (GIL held by the caller).
fidius_table *fidius_table_new(Py_ssize_t n, PyObject *owner);
void fidius_table_set(fidius_table *t, Py_ssize_t i, PyObject *fn);
void fidius_table_free(fidius_table *t);
void fidius_slot_swap(fidius_slot *s, fidius_table *t);   // frees the old table; t may be NULL
fidius_slot *fidius_slot_new(const char *dir, fidius_rt *rt); // no GIL needed; NULL when out of memory
void fidius_slot_free(fidius_slot *s);                   // GIL held

// Errors outside dispatch (GIL held): describes and clears the pending
// exception into the thread's buffer, as for FIDIUS_PLUGIN, with the class
// name as the code (fidius.PluginError fields are a call's business).
fidius_result fidius_take_error(void);

// fidius_encode_value encodes o as JSON (strictly: no str() fallback)
// into the thread's buffer: FIDIUS_OK with data/len, or FIDIUS_OUTPUT with
// the message (GIL held).
fidius_result fidius_encode_value(PyObject *o);

// fidius_decode_value decodes JSON into a new reference; NULL with
// FIDIUS_INPUT in *r (message in the thread buffer) on bad input.
PyObject *fidius_decode_value(const char *in, size_t n, fidius_result *r);

// fidius_buffer_cap is the capacity of this thread's output buffer (tests);
// fidius_side_buffer_cap that of its buffers for host answers and
// host-fed items.
size_t fidius_buffer_cap(void);
size_t fidius_side_buffer_cap(void);

#endif
