// interp.c owns the interpreters plugins run in: the main one, started
// once and shared, and isolated ones (CPython 3.12 and later), each with
// its own GIL, sys.modules and helper objects; and the Python thread state
// each OS thread keeps for each interpreter it has run code in. The paths
// of isolated interpreters use no PyGILState_*: it knows one thread state
// per thread, which is wrong as soon as a thread runs code in two
// interpreters. (The main interpreter's adopts a state PyGILState made, on
// a thread where another part of the process did.)
//
// CPython 3.12 and 3.13 still keep, per OS thread, the "gilstate" thread
// state PyGILState_* uses, and move it to whichever state the thread
// attaches, clearing a flag in the one it had before. Extension modules'
// callbacks (sqlite3, ctypes, _ssl) call PyGILState_Ensure inside a call,
// so while an isolated call runs it must be that call's state, as CPython
// makes it. But a state of an isolated interpreter is deleted when the
// interpreter ends, from another thread, and the next attach on its own
// thread would then write to freed memory. So each time a thread lets go
// of an isolated interpreter's GIL, its gilstate state goes back to its
// main-interpreter one (gilstate.c, through CPython's internal key).

#include "bridge.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fidius_rt main_rt;

// The isolated interpreters alive, under reg_mu. reg_version changes when
// one ends, so that a thread's cached lookup is made again.
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static fidius_rt *reg_head;
#if PY_VERSION_HEX >= 0x030C0000
static uint64_t reg_next_id = 1;
#endif
static unsigned reg_version; // atomic

// This thread's state in the main interpreter, made when first needed and
// kept as long as the thread lives (deleted by ts_destroy when Go ends the
// thread).
static pthread_key_t ts_key;
static __thread PyThreadState *tls_ts;

// This thread's states in isolated interpreters, by interpreter id. They
// belong to their interpreter, which deletes them when it ends; an entry
// of an interpreter that has ended is never matched again (ids are not
// reused) and is dropped the next time one is added.
typedef struct {
	uint64_t id;
	PyThreadState *ts;
} sub_state;
static __thread sub_state *tls_subs;
static __thread int tls_nsubs, tls_capsubs;

// The interpreter the last fidius_rt_current lookup found, for the next.
static __thread PyInterpreterState *tls_cur_is;
static __thread fidius_rt *tls_cur_rt;
static __thread unsigned tls_cur_version;

// The interpreter of the last call that began on this thread: what is
// released after the call (a large result, a stream a caller left) lives
// there.
static __thread fidius_rt *tls_call_rt;

fidius_rt *fidius_main_rt(void) { return &main_rt; }

static void ts_destroy(void *p) {
	PyThreadState *ts = p;
	PyEval_RestoreThread(ts);
	PyThreadState_Clear(ts);
	PyThreadState_DeleteCurrent();
	tls_ts = NULL;
	fidius_buf *b = fidius_tls_buf();
	free(b->p);
	*b = (fidius_buf){0};
	free(tls_subs);
	tls_subs = NULL;
	tls_nsubs = tls_capsubs = 0;
}

int fidius_start(void) {
	if (Py_IsInitialized()) {
		// Another part of the process started Python. Take a thread state
		// the PyGILState way and keep it: its counter never drops to zero.
		PyGILState_Ensure();
	} else {
		Py_InitializeEx(0);
	}
	main_rt.is = PyInterpreterState_Main();
	tls_ts = PyThreadState_Get();
	if (pthread_key_create(&ts_key, ts_destroy) != 0)
		return -1;
	return 0;
}

// main_ts returns this thread's main-interpreter state, making it if
// needed. The first state made on a thread is the one PyGILState_* and
// CPython's own C code find for it, so it must be the main interpreter's.
static PyThreadState *main_ts(void) {
	if (tls_ts == NULL) {
		PyThreadState *ts = PyThreadState_New(main_rt.is);
		pthread_setspecific(ts_key, ts);
		tls_ts = ts;
	}
	return tls_ts;
}

static int rt_alive(uint64_t id) { // reg_mu held
	for (fidius_rt *rt = reg_head; rt != NULL; rt = rt->next)
		if (rt->id == id)
			return 1;
	return 0;
}

// remember records ts as this thread's state in rt, and as rt's to delete
// when it ends. Entries of interpreters that ended are dropped.
static void remember(fidius_rt *rt, PyThreadState *ts) {
	pthread_mutex_lock(&reg_mu);
	int n = 0;
	for (int i = 0; i < tls_nsubs; i++)
		if (rt_alive(tls_subs[i].id))
			tls_subs[n++] = tls_subs[i];
	tls_nsubs = n;
	if (tls_nsubs == tls_capsubs) {
		int cap = tls_capsubs ? 2 * tls_capsubs : 4;
		sub_state *p = realloc(tls_subs, (size_t)cap * sizeof *p);
		if (p == NULL)
			Py_FatalError("fidius: out of memory keeping a thread state");
		tls_subs = p;
		tls_capsubs = cap;
	}
	tls_subs[tls_nsubs++] = (sub_state){rt->id, ts};
	if (rt->nts == rt->capts) {
		int cap = rt->capts ? 2 * rt->capts : 8;
		PyThreadState **p = realloc(rt->ts, (size_t)cap * sizeof *p);
		if (p == NULL)
			Py_FatalError("fidius: out of memory keeping a thread state");
		rt->ts = p;
		rt->capts = cap;
	}
	rt->ts[rt->nts++] = ts;
	pthread_mutex_unlock(&reg_mu);
}

static PyThreadState *sub_ts(fidius_rt *rt) {
	for (int i = 0; i < tls_nsubs; i++)
		if (tls_subs[i].id == rt->id)
			return tls_subs[i].ts;
	main_ts();
	PyThreadState *ts = PyThreadState_New(rt->is);
	if (ts == NULL)
		Py_FatalError("fidius: cannot make a thread state");
	remember(rt, ts);
	return ts;
}

void fidius_gil_acquire(fidius_rt *rt) {
	if (rt == &main_rt) {
		PyThreadState *ts = tls_ts;
		if (ts == NULL) {
			// A thread that has a state of the main interpreter made by
			// someone else (the one that started Python) keeps using it.
			ts = PyGILState_GetThisThreadState();
			if (ts == NULL || ts->interp != main_rt.is)
				ts = main_ts();
			tls_ts = ts;
		}
		PyEval_RestoreThread(ts);
		return;
	}
	PyEval_RestoreThread(sub_ts(rt));
}

void fidius_gil_release(void) {
	PyThreadState *ts = PyEval_SaveThread();
	if (ts->interp != main_rt.is)
		fidius_gilstate_main(ts, tls_ts);
}

void fidius_call_began(fidius_rt *rt) { tls_call_rt = rt; }

fidius_rt *fidius_call_rt(void) { return tls_call_rt != NULL ? tls_call_rt : &main_rt; }

fidius_rt *fidius_rt_current(void) {
	PyInterpreterState *is = PyInterpreterState_Get();
	if (is == main_rt.is)
		return &main_rt;
	unsigned v = __atomic_load_n(&reg_version, __ATOMIC_ACQUIRE);
	if (is == tls_cur_is && v == tls_cur_version)
		return tls_cur_rt;
	fidius_rt *found = NULL;
	pthread_mutex_lock(&reg_mu);
	for (fidius_rt *rt = reg_head; rt != NULL; rt = rt->next)
		if (rt->is == is)
			found = rt;
	v = reg_version;
	pthread_mutex_unlock(&reg_mu);
	tls_cur_is = is;
	tls_cur_rt = found;
	tls_cur_version = v;
	return found;
}

void fidius_set_helpers(PyObject *describe, PyObject *fields, PyObject *cancel, PyObject *mapping) {
	fidius_rt *rt = fidius_rt_current();
	rt->describe = Py_NewRef(describe);
	rt->fields = Py_NewRef(fields);
	rt->cancel_type = Py_NewRef(cancel);
	rt->mapping = Py_NewRef(mapping);
}

static fidius_result rt_error(const char *fmt, const char *detail) {
	fidius_buf *b = fidius_tls_buf();
	char msg[512];
	snprintf(msg, sizeof msg, fmt, detail);
	b->len = 0;
	fidius_buf_put(b, msg, strlen(msg));
	return (fidius_result){.status = FIDIUS_PLUGIN, .data = b->p, .len = b->len};
}

#if PY_VERSION_HEX >= 0x030C0000

// CPython 3.12 before 3.12.FIXME, when it refuses to make an interpreter,
// makes the caller's thread state current again without taking back the
// GIL it gave up for the new interpreter's; the next release of that GIL
// ends the process ("drop_gil: GIL is not locked").
static int lost_gil_on_refusal(void) { return Py_Version >= 0x030C0000 && Py_Version < 0x030D0000; }

fidius_rt *fidius_rt_new(int refused, fidius_result *r) {
	fidius_rt *rt = calloc(1, sizeof *rt);
	if (rt == NULL) {
		*r = rt_error("%s", "out of memory");
		return NULL;
	}
	fidius_gil_acquire(&main_rt);
	PyThreadState *caller = PyThreadState_Get();
	// A new interpreter does not write bytecode; it writes it when the
	// main one does, to the same sys.pycache_prefix (set up in each).
	PyObject *flag = PySys_GetObject("dont_write_bytecode"); // borrowed
	int no_bytecode = flag != NULL && PyObject_IsTrue(flag) == 1;
	PyErr_Clear();
	// An interpreter of its own: its own GIL and allocator, no fork or
	// exec, threads but not daemon threads (it could not end while one
	// runs), and only extension modules that support it.
	PyInterpreterConfig config = {
		.use_main_obmalloc = 0,
		.allow_fork = 0,
		.allow_exec = 0,
		.allow_threads = 1,
		.allow_daemon_threads = 0,
		.check_multi_interp_extensions = !refused, // refused: only tests ask, to see the host survive it
		.gil = PyInterpreterConfig_OWN_GIL,
	};
	PyThreadState *ts = NULL;
	PyStatus st = Py_NewInterpreterFromConfig(&ts, &config);
	if (PyStatus_Exception(st)) {
		if (lost_gil_on_refusal())
			PyEval_RestoreThread(caller);
		*r = rt_error("CPython refused to make an isolated interpreter: %s", st.err_msg ? st.err_msg : "no reason given");
		fidius_gil_release();
		free(rt);
		return NULL;
	}
	rt->is = PyThreadState_GetInterpreter(ts);
	if (PySys_SetObject("dont_write_bytecode", no_bytecode ? Py_True : Py_False) < 0)
		PyErr_Clear();
	pthread_mutex_lock(&reg_mu);
	rt->id = reg_next_id++;
	rt->next = reg_head;
	reg_head = rt;
	pthread_mutex_unlock(&reg_mu);
	remember(rt, ts);
	*r = (fidius_result){0};
	return rt;
}

int fidius_rt_busy(fidius_rt *rt) {
	// The plugin's atexit functions are dropped, not run: Py_EndInterpreter
	// would run them after its last wait for threads, so one that starts a
	// thread would end the process, and one that never returns would hang
	// Close. The shared interpreter never runs them either.
	PyObject *atexit = PyImport_ImportModule("atexit");
	PyObject *res = atexit != NULL ? PyObject_CallMethod(atexit, "_clear", NULL) : NULL;
	Py_XDECREF(res);
	Py_XDECREF(atexit);
	PyErr_Clear();
	int n = 0;
	pthread_mutex_lock(&reg_mu);
	for (PyThreadState *t = PyInterpreterState_ThreadHead(rt->is); t != NULL; t = PyThreadState_Next(t)) {
		int ours = 0;
		for (int i = 0; i < rt->nts && !ours; i++)
			ours = rt->ts[i] == t;
		n += !ours;
	}
	pthread_mutex_unlock(&reg_mu);
	return n;
}

// fidius_rt_end ends rt from a thread holding its GIL, when nothing runs
// in it (calls, streams, cancellations are over). Its helpers are
// released, the thread states made for it deleted, then the interpreter
// itself; afterwards this thread holds no GIL.
void fidius_rt_end(fidius_rt *rt) {
	PyThreadState *self = PyThreadState_Get();
	Py_CLEAR(rt->describe);
	Py_CLEAR(rt->fields);
	Py_CLEAR(rt->mapping);
	Py_CLEAR(rt->cancel_type);
	Py_CLEAR(rt->feed_type);
	Py_CLEAR(rt->host_stream_error);
	Py_CLEAR(rt->set_events);
	pthread_mutex_lock(&reg_mu);
	for (fidius_rt **p = &reg_head; *p != NULL; p = &(*p)->next)
		if (*p == rt) {
			*p = rt->next;
			break;
		}
	__atomic_add_fetch(&reg_version, 1, __ATOMIC_RELEASE);
	PyThreadState **states = rt->ts;
	int n = rt->nts;
	rt->ts = NULL;
	rt->nts = rt->capts = 0;
	pthread_mutex_unlock(&reg_mu);
	for (int i = 0; i < n; i++) {
		if (states[i] == self)
			continue; // this thread's gilstate state: Py_EndInterpreter unbinds it
		states[i]->_status.bound_gilstate = 0; // no thread's, since every release moves it back
		PyThreadState_Clear(states[i]);
		PyThreadState_Delete(states[i]);
	}
	free(states);
	Py_EndInterpreter(self);
	fidius_gilstate_main(NULL, main_ts());
	free(rt);
}

#else

int fidius_rt_busy(fidius_rt *rt) {
	(void)rt;
	return 0;
}

fidius_rt *fidius_rt_new(int refused, fidius_result *r) {
	(void)refused;
	*r = rt_error("%s", "isolated interpreters need CPython 3.12 or later");
	return NULL;
}

void fidius_rt_end(fidius_rt *rt) { (void)rt; }

#endif
