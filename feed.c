// feed.c owns the host-fed input of client-streaming and bidirectional
// calls: a Python iterator whose next() asks Go for the host's next item,
// with the GIL released while Go produces it.

#include "bridge.h"
#include "_cgo_export.h"

// The thread's copy of the item Go just produced: Go copies it here
// (fidius_feed_put) before its callback returns, so C keeps no Go memory.
static __thread fidius_buf tls_item;


typedef struct {
	PyObject_HEAD
	uintptr_t id;    // Go's handle for the host's iterator; 0 once the call has ended
	fidius_ctl *ctl; // the call's control block, or NULL
	int busy;        // a next() is waiting for Go
	long long count; // items produced so far, for messages
	unsigned long thread; // the thread running the call: the only one that may pull
	int depth;            // and the call's nesting on that thread (fidius_call_depth)
} feed_object;

size_t fidius_feed_item_cap(void) { return tls_item.cap; }

void fidius_feed_put(const char *p, size_t n) {
	tls_item.len = 0;
	fidius_buf_put(&tls_item, p, n);
}

static PyObject *feed_next(PyObject *self) {
	feed_object *f = (feed_object *)self;
	if (f->id == 0)
		return NULL; // StopIteration: the host's input ended, or the call did
	if (f->ctl != NULL && f->ctl->cancelled) {
		PyErr_SetString(fidius_rt_current()->cancel_type, "the call was cancelled");
		return NULL;
	}
	if (f->busy || PyThread_get_thread_ident() != f->thread || fidius_call_depth() != f->depth) {
		// The stream belongs to the call: reads from a plugin thread, or
		// from a call nested in it (a host function that calls the plugin
		// back), would race it or find it half-way through an item.
		PyErr_SetString(PyExc_RuntimeError, "the host's input stream can only be read by the thread running the call");
		return NULL;
	}
	f->busy = 1;
	uintptr_t id = f->id;
	// The host's iterator may call a plugin on this thread, which takes the
	// thread buffer; next() may be running while a result is encoded.
	fidius_buf outer = fidius_buf_stash();
	PyThreadState *ts = PyEval_SaveThread();
	int rc = fidiusFeedNext(id);
	PyEval_RestoreThread(ts);
	fidius_buf_unstash(outer);
	f->busy = 0;
	if (rc == 0) {
		f->id = 0; // the end: later next() calls need not ask Go again
		return NULL;
	}
	if (rc < 0) {
		// tls_item holds the host's error message.
		PyObject *msg = PyUnicode_DecodeUTF8(tls_item.p, (Py_ssize_t)tls_item.len, "replace");
		fidius_buf_trim(&tls_item);
		if (msg != NULL) {
			PyErr_SetObject(fidius_rt_current()->host_stream_error, msg);
			Py_DECREF(msg);
		}
		return NULL;
	}
	f->count++;
	char err[256];
	PyObject *item = fidius_json_decode(tls_item.p, tls_item.len, err, sizeof err);
	fidius_buf_trim(&tls_item);
	if (item == NULL)
		PyErr_Format(fidius_rt_current()->host_stream_error, "item %lld of the host's input stream is not valid JSON: %s", f->count, err);
	return item;
}

static PyType_Slot feed_slots[] = {
	{Py_tp_iter, (void *)PyObject_SelfIter},
	{Py_tp_iternext, (void *)feed_next},
	{Py_tp_doc, (void *)"The host's input stream of a client-streaming or bidirectional call."},
	{0, NULL},
};

static PyType_Spec feed_spec = {
	.name = "fidius_host.HostStream",
	.basicsize = sizeof(feed_object),
	.flags = Py_TPFLAGS_DEFAULT,
	.slots = feed_slots,
};

int fidius_feed_init(PyObject *host_stream_error) {
	fidius_rt *rt = fidius_rt_current();
	rt->host_stream_error = Py_NewRef(host_stream_error);
	rt->feed_type = PyType_FromSpec(&feed_spec);
	return rt->feed_type == NULL ? -1 : 0;
}

PyObject *fidius_feed_new(uintptr_t id, fidius_ctl *ctl) {
	feed_object *f = PyObject_New(feed_object, (PyTypeObject *)fidius_rt_current()->feed_type);
	if (f == NULL)
		return NULL;
	f->id = id;
	f->ctl = ctl;
	f->busy = 0;
	f->count = 0;
	f->thread = PyThread_get_thread_ident();
	f->depth = fidius_call_depth();
	return (PyObject *)f;
}

void fidius_feed_claim(PyObject *feed) {
	feed_object *f = (feed_object *)feed;
	f->thread = PyThread_get_thread_ident();
	f->depth = fidius_call_depth();
}

// fidius_feed_end detaches the feed from Go and from the call, and has Go
// stop the host's iterator, with the GIL released: its cleanup is Go code
// that may take its time. The plugin may keep the object, but its next()
// reaches neither Go nor the call any more (GIL held, on the call's
// thread).
void fidius_feed_end(PyObject *feed) {
	feed_object *f = (feed_object *)feed;
	uintptr_t id = f->id;
	f->id = 0;
	f->ctl = NULL;
	if (id != 0) {
		PyThreadState *ts = PyEval_SaveThread();
		fidiusFeedStop(id);
		PyEval_RestoreThread(ts);
	}
}
