// bridge.c owns dispatch: a call takes the GIL, converts, calls,
// converts back and releases the GIL in one crossing from Go.

#include "bridge.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

// A bytes result up to this size is copied into the thread buffer; a larger
// one is handed to Go in place and released after Go has copied it, so big
// payloads are copied once.
#define FIDIUS_SMALL_RESULT (64 * 1024)

static __thread fidius_buf tls_buf;
static __thread PyObject *tls_pending;

fidius_buf *fidius_tls_buf(void) { return &tls_buf; }

size_t fidius_buffer_cap(void) { return tls_buf.cap; }

int fidius_buf_grow(fidius_buf *b, size_t extra) {
	size_t want = b->len + extra;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < want) {
		if (cap > ((size_t)-1) / 2) {
			PyErr_NoMemory();
			return -1;
		}
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (p == NULL) {
		PyErr_NoMemory();
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

void fidius_trim_buffer(void) {
	if (tls_buf.cap > FIDIUS_KEEP_BUFFER) {
		free(tls_buf.p);
		tls_buf.p = NULL;
		tls_buf.cap = 0;
		tls_buf.len = 0;
	}
}

// fidius_exec_bootstrap runs the host's private Python helpers in a module
// that is not registered in sys.modules, so plugins cannot replace it.
PyObject *fidius_exec_bootstrap(const char *src, const char *filename) {
	PyObject *mod = PyModule_New("_fidius_host");
	if (mod == NULL)
		return NULL;
	PyObject *dict = PyModule_GetDict(mod);
	PyObject *builtins = PyImport_ImportModule("builtins");
	int rc = builtins == NULL ? -1 : PyDict_SetItemString(dict, "__builtins__", builtins);
	Py_XDECREF(builtins);
	if (rc < 0)
		goto fail;
	PyObject *code = Py_CompileString(src, filename, Py_file_input);
	if (code == NULL)
		goto fail;
	PyObject *res = PyEval_EvalCode(code, dict, dict);
	Py_DECREF(code);
	if (res == NULL)
		goto fail;
	Py_DECREF(res);
	return mod;
fail:
	Py_DECREF(mod);
	return NULL;
}

fidius_table *fidius_table_new(Py_ssize_t n, PyObject *owner) {
	fidius_table *t = calloc(1, sizeof(fidius_table) + (size_t)n * sizeof(PyObject *));
	if (t == NULL)
		return NULL;
	t->n = n;
	Py_XINCREF(owner);
	t->owner = owner;
	return t;
}

void fidius_table_set(fidius_table *t, Py_ssize_t i, PyObject *fn) {
	Py_XINCREF(fn);
	Py_XSETREF(t->fns[i], fn);
}

void fidius_table_free(fidius_table *t) {
	if (t == NULL)
		return;
	for (Py_ssize_t i = 0; i < t->n; i++)
		Py_CLEAR(t->fns[i]);
	Py_CLEAR(t->owner);
	free(t);
}

void fidius_slot_swap(fidius_slot *s, fidius_table *t) {
	fidius_table *old = s->tab;
	s->tab = t;
	fidius_table_free(old);
}

fidius_slot *fidius_slot_new(const char *dir, fidius_rt *rt) {
	fidius_slot *s = calloc(1, sizeof *s);
	if (s == NULL)
		return NULL;
	s->rt = rt;
	s->dir = strdup(dir);
	if (s->dir == NULL) {
		free(s);
		return NULL;
	}
	return s;
}

void fidius_slot_free(fidius_slot *s) {
	fidius_slot_swap(s, NULL);
	Py_CLEAR(s->own);
	Py_CLEAR(s->vendor);
	free(s->dir);
	free(s);
}

static void put_bytes_obj(fidius_buf *b, PyObject *o, size_t *n) {
	size_t before = b->len;
	if (o != NULL && PyBytes_Check(o))
		fidius_buf_put(b, PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
	*n = b->len - before;
}

// describe_error turns the pending Python exception into code, message and
// details in the thread buffer. It never prints the exception: PyErr_Print
// would end the process on SystemExit.
static void describe_error(fidius_result *r, int structured) {
	PyObject *value = fidius_err_take();
	fidius_buf *b = &tls_buf;
	b->len = 0;
	PyObject *desc = NULL;
	fidius_rt *rt = fidius_rt_current();
	if (rt != NULL && rt->describe != NULL && value != NULL)
		desc = PyObject_CallFunctionObjArgs(rt->describe, value, structured ? Py_True : Py_False, NULL);
	if (desc != NULL && PyTuple_Check(desc) && PyTuple_GET_SIZE(desc) == 3) {
		put_bytes_obj(b, PyTuple_GET_ITEM(desc, 0), &r->len1);
		put_bytes_obj(b, PyTuple_GET_ITEM(desc, 1), &r->len2);
		PyObject *details = PyTuple_GET_ITEM(desc, 2);
		size_t mark = b->len;
		if (details != Py_None && fidius_json_encode(details, 0) < 0) {
			// Details that do not encode are dropped rather than
			// replacing the plugin's own error with an encoding one.
			PyErr_Clear();
			b->len = mark;
		}
	} else {
		PyErr_Clear();
		const char *name = value != NULL ? Py_TYPE(value)->tp_name : "SystemError";
		const char *dot = strrchr(name, '.');
		if (dot != NULL)
			name = dot + 1;
		const char *msg = "<exception could not be described>";
		fidius_buf_put(b, name, strlen(name));
		r->len1 = strlen(name);
		fidius_buf_put(b, msg, strlen(msg));
		r->len2 = strlen(msg);
	}
	Py_XDECREF(desc);
	Py_XDECREF(value);
	r->status = FIDIUS_PLUGIN;
	r->data = b->p;
	r->len = b->len;
}

fidius_result fidius_take_error(void) {
	fidius_result r = {0};
	describe_error(&r, 0);
	return r;
}

// message_error reports the pending Python exception (or msg alone when none
// is set) as "msg: Type: text" with the given status.
static void message_error(fidius_result *r, int status, const char *msg) {
	fidius_buf *b = &tls_buf;
	b->len = 0;
	fidius_buf_put(b, msg, strlen(msg));
	if (PyErr_Occurred()) {
		PyObject *value = fidius_err_take();
		const char *name = Py_TYPE(value)->tp_name;
		fidius_buf_put(b, ": ", 2);
		fidius_buf_put(b, name, strlen(name));
		// Lone surrogates in the text have no UTF-8 form: escaped, the
		// rest of the message survives.
		PyObject *s = value ? PyObject_Str(value) : NULL;
		PyObject *text = s ? PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace") : NULL;
		if (text != NULL && PyBytes_GET_SIZE(text) > 0) {
			fidius_buf_put(b, ": ", 2);
			fidius_buf_put(b, PyBytes_AS_STRING(text), (size_t)PyBytes_GET_SIZE(text));
		}
		PyErr_Clear();
		Py_XDECREF(text);
		Py_XDECREF(s);
		Py_DECREF(value);
	}
	r->status = status;
	r->data = b->p;
	r->len = b->len;
}

fidius_result fidius_encode_value(PyObject *o) {
	fidius_result r = {0};
	tls_buf.len = 0;
	if (fidius_json_encode(o, 1) < 0) {
		message_error(&r, FIDIUS_OUTPUT, "no JSON form");
		return r;
	}
	r.data = tls_buf.p;
	r.len = tls_buf.len;
	return r;
}

PyObject *fidius_decode_value(const char *in, size_t n, fidius_result *r) {
	char err[256];
	PyObject *o = fidius_json_decode(in, n, err, sizeof err);
	if (o == NULL)
		message_error(r, FIDIUS_INPUT, err); // the decoder leaves no exception set
	return o;
}

// The slots of the calls running on this thread, innermost last: a host
// function may call another plugin, whose call nests inside. Host calls
// (hostcall.c) go to the innermost call's host interfaces.
#define FIDIUS_MAX_NESTING 64
static __thread fidius_slot *tls_slots[FIDIUS_MAX_NESTING];
static __thread int tls_depth;

static void push_slot(fidius_slot *s) {
	if (tls_depth < FIDIUS_MAX_NESTING)
		tls_slots[tls_depth] = s;
	tls_depth++;
}

static void pop_slot(void) {
	if (tls_depth > 0)
		tls_depth--;
}

fidius_slot *fidius_current_slot(void) {
	return tls_depth > 0 && tls_depth <= FIDIUS_MAX_NESTING ? tls_slots[tls_depth - 1] : NULL;
}

int fidius_call_depth(void) { return tls_depth; }

// begin takes the GIL for a call through slot s. It returns 0 when the
// call must not run: cancelled, or abandoned by its caller before it
// began. The caller must end with leave, whatever happens.
static int begin(fidius_slot *s, fidius_ctl *ctl) {
	fidius_gil_acquire(s->rt);
	fidius_call_began(s->rt);
	tls_buf.len = 0;
	push_slot(s);
	if (ctl == NULL)
		return 1;
	ctl->ts = PyThreadState_Get();
	ctl->slot = s;
	int waiting = FIDIUS_WAITING;
	if (!ctl->cancelled &&
	    __atomic_compare_exchange_n(&ctl->state, &waiting, FIDIUS_READING, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
		return 1;
	ctl->cancelled = 1;
	return 0;
}

// run marks the point where the call's input has been read and plugin code
// starts: from here the caller may leave, and a cancellation interrupts.
static void run(fidius_ctl *ctl) {
	if (ctl == NULL)
		return;
	int reading = FIDIUS_READING;
	__atomic_compare_exchange_n(&ctl->state, &reading, FIDIUS_RUNNING, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	ctl->active = 1;
	fidius_cancel_enter(ctl);
	if (ctl->cancelled)
		fidius_arm(ctl, 0);
}

// settle ends the part of a call that may be interrupted (leave does it).
static void settle(fidius_ctl *ctl) {
	if (ctl == NULL)
		return;
	ctl->active = 0;
	fidius_disarm(ctl);
	fidius_cancel_enter(NULL);
}

// fidius_load_begin marks the plugin code a load runs (its imports, its
// __fidius_configure__) as interruptible through ctl, as a call's is. It
// returns 0 if the loader's caller has already left: then nothing may run.
int fidius_load_begin(fidius_ctl *ctl, fidius_slot *s) {
	ctl->ts = PyThreadState_Get();
	ctl->slot = s;
	int waiting = FIDIUS_WAITING;
	if (ctl->cancelled ||
	    !__atomic_compare_exchange_n(&ctl->state, &waiting, FIDIUS_RUNNING, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
		ctl->cancelled = 1;
		return 0;
	}
	ctl->active = 1;
	fidius_cancel_enter(ctl);
	return 1;
}

void fidius_load_end(fidius_ctl *ctl) { settle(ctl); }

// enter begins a call and returns a new reference to method i of the
// slot's current table, or NULL with FIDIUS_CLOSED (or cancelled).
static PyObject *enter(fidius_slot *s, Py_ssize_t i, fidius_ctl *ctl, fidius_result *r) {
	if (!begin(s, ctl))
		return NULL;
	if (s->tab == NULL) {
		r->status = FIDIUS_CLOSED;
		return NULL;
	}
	PyObject *fn = s->tab->fns[i];
	if (fn == NULL) {
		r->status = FIDIUS_ABSENT; // an optional method this generation lacks
		return NULL;
	}
	Py_INCREF(fn);
	return fn;
}

// leave ends a call. A call that was cancelled reports so, whatever else
// it did, and what it produced is dropped.
static void leave(fidius_ctl *ctl, fidius_result *r) {
	pop_slot();
	if (ctl != NULL) {
		settle(ctl);
		if (ctl->cancelled) {
			if (r->pending) {
				Py_CLEAR(tls_pending);
				r->pending = 0;
			}
			Py_CLEAR(r->obj);
			r->status = FIDIUS_CANCELLED;
			r->len = 0;
		}
	}
	fidius_gil_release();
}

// call_led calls fn with lead (a host-fed stream) and then the JSON input
// as its arguments, as call_json does. Kept apart from call_json, whose
// path every typed call takes.
static PyObject *call_led(PyObject *fn, PyObject *lead, const char *in, size_t n, fidius_ctl *ctl, fidius_result *r) {
	PyObject *arg = n == 0 ? Py_NewRef(Py_None) : fidius_decode_value(in, n, r);
	if (arg == NULL)
		return NULL;
	PyObject *args = NULL;
	if (PyList_CheckExact(arg)) {
		Py_ssize_t k = PyList_GET_SIZE(arg);
		if ((args = PyTuple_New(k + 1)) != NULL) {
			PyTuple_SET_ITEM(args, 0, Py_NewRef(lead));
			for (Py_ssize_t j = 0; j < k; j++)
				PyTuple_SET_ITEM(args, j + 1, Py_NewRef(PyList_GET_ITEM(arg, j)));
		}
	} else if (arg == Py_None) {
		args = PyTuple_Pack(1, lead);
	} else {
		args = PyTuple_Pack(2, lead, arg);
	}
	Py_DECREF(arg);
	if (args == NULL)
		return NULL;
	run(ctl);
	PyObject *res = PyObject_Call(fn, args, NULL);
	Py_DECREF(args);
	return res;
}

// call_json calls fn with the JSON input as its arguments: an array is the
// positional arguments, null or nothing means none, anything else is the
// single argument. NULL with r->status set on bad input, NULL with a Python
// error set if the call raised.
static PyObject *call_json(PyObject *fn, const char *in, size_t n, fidius_ctl *ctl, fidius_result *r) {
	if (n == 0) {
		run(ctl);
		return PyObject_CallNoArgs(fn);
	}
	PyObject *arg = fidius_decode_value(in, n, r);
	if (arg == NULL)
		return NULL;
	run(ctl);
	PyObject *res;
	if (PyList_CheckExact(arg)) {
		// The list is ours and the callee never sees it, so its item
		// array can serve as the argument vector without a tuple.
		res = PyObject_Vectorcall(fn, ((PyListObject *)arg)->ob_item, PyList_GET_SIZE(arg), NULL);
	} else if (arg == Py_None) {
		res = PyObject_CallNoArgs(fn);
	} else {
		res = PyObject_CallOneArg(fn, arg);
	}
	Py_DECREF(arg);
	return res;
}

// encode_result writes a typed result as JSON into the thread buffer.
static void encode_result(fidius_slot *s, PyObject *res, fidius_result *r) {
	fidius_buf *b = &tls_buf;
	b->len = 0;
	if (fidius_json_encode(res, s->strict) < 0) {
		message_error(r, FIDIUS_OUTPUT, "return value cannot be encoded as JSON");
		return;
	}
	r->data = b->p;
	r->len = b->len;
}

// enter_json enters a call of method i with JSON input and returns its
// result, or NULL with r describing why there is none.
static PyObject *enter_json(fidius_slot *s, Py_ssize_t i, const char *in, size_t n, fidius_ctl *ctl, fidius_result *r) {
	PyObject *fn = enter(s, i, ctl, r);
	if (fn == NULL)
		return NULL;
	PyObject *res = call_json(fn, in, n, ctl, r);
	Py_DECREF(fn);
	if (res == NULL && r->status == FIDIUS_OK)
		describe_error(r, 1);
	return res;
}

// enter_raw enters a call of raw method i with one bytes argument and
// returns its result, or NULL with r describing why there is none.
static PyObject *enter_raw(fidius_slot *s, Py_ssize_t i, const char *in, size_t n, fidius_ctl *ctl, fidius_result *r) {
	PyObject *fn = enter(s, i, ctl, r);
	if (fn == NULL)
		return NULL;
	PyObject *arg = PyBytes_FromStringAndSize(in, (Py_ssize_t)n);
	PyObject *res = NULL;
	if (arg == NULL) {
		message_error(r, FIDIUS_INPUT, "input cannot be passed as bytes");
	} else {
		run(ctl);
		res = PyObject_CallOneArg(fn, arg);
	}
	Py_XDECREF(arg);
	Py_DECREF(fn);
	if (res == NULL && r->status == FIDIUS_OK)
		describe_error(r, 1);
	return res;
}

// raw_result hands a raw result to Go: small ones in the thread buffer,
// large bytes in place (pending), other buffers copied under the GIL.
static void raw_result(PyObject *res, fidius_result *r) {
	fidius_buf *b = &tls_buf;
	b->len = 0;
	if (PyBytes_Check(res)) {
		Py_ssize_t size = PyBytes_GET_SIZE(res);
		if (size > FIDIUS_SMALL_RESULT) {
			// Immutable: Go may copy it after the GIL is released.
			Py_INCREF(res);
			tls_pending = res;
			r->pending = 1;
			r->data = PyBytes_AS_STRING(res);
			r->len = (size_t)size;
			return;
		}
		if (fidius_buf_put(b, PyBytes_AS_STRING(res), (size_t)size) < 0) {
			message_error(r, FIDIUS_OUTPUT, "raw result cannot be copied");
			return;
		}
	} else if (PyObject_CheckBuffer(res)) {
		// Mutable or borrowed memory (bytearray, memoryview, a numpy
		// array, array.array): copy it, in C order, while the GIL is held.
		Py_buffer view;
		if (PyObject_GetBuffer(res, &view, PyBUF_FULL_RO) < 0) {
			message_error(r, FIDIUS_OUTPUT, "raw result buffer cannot be read");
			return;
		}
		int rc = fidius_buf_grow(b, (size_t)view.len) < 0 ? -1 : PyBuffer_ToContiguous(b->p, &view, view.len, 'C');
		if (rc == 0)
			b->len = (size_t)view.len;
		PyBuffer_Release(&view);
		if (rc < 0) {
			message_error(r, FIDIUS_OUTPUT, "raw result cannot be copied");
			return;
		}
	} else {
		char msg[300];
		snprintf(msg, sizeof msg, "raw method must return bytes or another object with the buffer protocol (bytearray, memoryview, a numpy array), not %.100s",
		         Py_TYPE(res)->tp_name);
		message_error(r, FIDIUS_OUTPUT, msg);
		return;
	}
	r->data = b->p;
	r->len = b->len;
}

fidius_result fidius_call(fidius_slot *s, Py_ssize_t i, int raw, const char *in, size_t n, fidius_ctl *ctl) {
	fidius_result r = {0};
	PyObject *res = raw ? enter_raw(s, i, in, n, ctl, &r) : enter_json(s, i, in, n, ctl, &r);
	if (res != NULL) {
		// Still interruptible: encoding runs plugin code (__str__, a
		// dataclass's properties), and a cancelled call's result is
		// dropped anyway.
		if (raw)
			raw_result(res, &r);
		else
			encode_result(s, res, &r);
		Py_DECREF(res);
	}
	leave(ctl, &r);
	return r;
}

void fidius_release_pending(void) {
	if (tls_pending == NULL)
		return;
	fidius_gil_acquire(fidius_call_rt());
	Py_CLEAR(tls_pending);
	fidius_gil_release();
}

// defines_iter reports whether o's type has an __iter__ of its own (one
// set to None, which Python reads as "not iterable", does not count). The
// pending exception is kept.
static int defines_iter(PyObject *o) {
	if (Py_TYPE(o)->tp_iter == NULL)
		return 0;
	PyObject *exc = fidius_err_take();
	PyObject *fn = PyObject_GetAttrString((PyObject *)Py_TYPE(o), "__iter__");
	int defined = fn != NULL && fn != Py_None;
	Py_XDECREF(fn);
	PyErr_Clear();
	fidius_err_restore(exc);
	return defined;
}

// stream_start calls streaming method i and takes an iterator of its
// result. With a feed_id, a host-fed stream made for the call goes before
// the arguments, and *feed gets a reference to it.
static fidius_result stream_start(fidius_slot *s, Py_ssize_t i, uintptr_t feed_id, const char *in, size_t n, fidius_ctl *ctl, PyObject **feed) {
	fidius_result r = {0};
	PyObject *fn = enter(s, i, ctl, &r), *res = NULL, *lead = NULL;
	if (fn != NULL) {
		if (feed_id != 0 && (lead = fidius_feed_new(feed_id, ctl)) == NULL) {
			describe_error(&r, 0);
		} else {
			res = lead != NULL ? call_led(fn, lead, in, n, ctl, &r) : call_json(fn, in, n, ctl, &r);
			if (res == NULL && r.status == FIDIUS_OK)
				describe_error(&r, 1);
		}
		Py_DECREF(fn);
	}
	if (lead != NULL)
		*feed = lead;
	if (res != NULL) {
		r.obj = PyObject_GetIter(res);
		settle(ctl);
		if (r.obj == NULL && PyErr_ExceptionMatches(PyExc_TypeError) && !defines_iter(res)) {
			char msg[200];
			snprintf(msg, sizeof msg, "streaming method must return an iterable, not %.100s",
			         Py_TYPE(res)->tp_name);
			PyErr_Clear();
			message_error(&r, FIDIUS_OUTPUT, msg);
		} else if (r.obj == NULL) {
			// The result's own __iter__ raised: that is the plugin's error,
			// a fidius.PluginError included.
			describe_error(&r, 1);
		}
		Py_DECREF(res);
	}
	leave(ctl, &r);
	return r;
}

fidius_result fidius_stream_start(fidius_slot *s, Py_ssize_t i, const char *in, size_t n, fidius_ctl *ctl) {
	return stream_start(s, i, 0, in, n, ctl, NULL);
}

fidius_result fidius_stream_start_fed(fidius_slot *s, Py_ssize_t i, uintptr_t feed_id, const char *in, size_t n, fidius_ctl *ctl, PyObject **feed) {
	*feed = NULL;
	return stream_start(s, i, feed_id, in, n, ctl, feed);
}

// The feed made here belongs to the call, and ends with it.
fidius_result fidius_call_fed(fidius_slot *s, Py_ssize_t i, uintptr_t feed_id, const char *in, size_t n, fidius_ctl *ctl) {
	fidius_result r = {0};
	PyObject *fn = enter(s, i, ctl, &r), *res = NULL;
	if (fn != NULL) {
		PyObject *feed = fidius_feed_new(feed_id, ctl);
		if (feed == NULL) {
			describe_error(&r, 0);
		} else {
			res = call_led(fn, feed, in, n, ctl, &r);
			if (res == NULL && r.status == FIDIUS_OK)
				describe_error(&r, 1);
			fidius_feed_end(feed);
			Py_DECREF(feed);
		}
		Py_DECREF(fn);
	}
	if (res != NULL) {
		encode_result(s, res, &r);
		Py_DECREF(res);
	}
	leave(ctl, &r);
	return r;
}

fidius_result fidius_stream_next(fidius_slot *s, PyObject *it, PyObject *feed, fidius_ctl *ctl) {
	fidius_result r = {0};
	if (begin(s, ctl)) {
		if (feed != NULL)
			fidius_feed_claim(feed); // this step's thread pulls the inputs
		run(ctl);
		PyObject *item = PyIter_Next(it);
		if (item != NULL) {
			encode_result(s, item, &r);
			Py_DECREF(item);
		} else if (PyErr_Occurred()) {
			describe_error(&r, 1);
		} else {
			r.status = FIDIUS_END;
		}
	}
	leave(ctl, &r);
	return r;
}

void fidius_stream_close(fidius_slot *s, PyObject *it, PyObject *feed, fidius_ctl *ctl) {
	// Without a slot: the stream a caller left as it started, on the
	// thread that started it.
	fidius_gil_acquire(s != NULL ? s->rt : fidius_call_rt());
	push_slot(s); // finally blocks may call host functions
	if (ctl != NULL) {
		// A cancelled stream's generator gets the grace period for its
		// finally blocks, then is stopped like a cancelled call.
		ctl->ts = PyThreadState_Get();
		ctl->slot = s;
		ctl->active = 1;
		fidius_cancel_enter(ctl);
		if (ctl->cancelled)
			fidius_arm(ctl, 1);
	}
	if (feed != NULL)
		fidius_feed_claim(feed); // finally blocks may read it
	PyObject *close = it != NULL ? PyObject_GetAttrString(it, "close") : NULL;
	if (close != NULL) {
		// Runs the generator's finally blocks. What they raise has no
		// caller left to receive it.
		PyObject *res = PyObject_CallNoArgs(close);
		Py_XDECREF(res);
		Py_DECREF(close);
	}
	settle(ctl);
	PyErr_Clear();
	Py_XDECREF(it);
	if (feed != NULL) {
		fidius_feed_end(feed);
		Py_DECREF(feed);
	}
	pop_slot();
	fidius_gil_release();
}
