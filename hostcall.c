// hostcall.c owns the plugin's way back to the host: the _fidius_host
// module whose call() runs a Go function of the host interface bound to
// the handle whose call is running on this thread, with the GIL released
// while Go runs.

#include "bridge.h"
#include "_cgo_export.h"

// The host's answer, copied here by Go (fidius_host_put) before its
// callback returns.
static __thread fidius_buf tls_answer;

size_t fidius_feed_item_cap(void); // feed.c

size_t fidius_side_buffer_cap(void) { return tls_answer.cap + fidius_feed_item_cap(); }

void fidius_host_put(const char *p, size_t n) {
	tls_answer.len = 0;
	fidius_buf_put(&tls_answer, p, n);
}

// call(name, method, args) -> (True, value) or (False, (code, message,
// details)). The SDK's fidius.host() turns the second into its own
// PluginError, so that plugins catch the class they imported.
static PyObject *host_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
	if (nargs != 3 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1]) || !PyTuple_Check(args[2])) {
		PyErr_SetString(PyExc_TypeError, "call(name: str, method: str, args: tuple)");
		return NULL;
	}
	fidius_slot *s = fidius_current_slot();
	if (s == NULL || s->host == 0)
		return Py_BuildValue("(O(ssO))", Py_False, "HOST_UNBOUND",
		                     "no host interface is bound here: host functions work while a method of a plugin "
		                     "loaded with host interfaces runs, on the thread running it",
		                     Py_None);
	Py_ssize_t name_len, method_len;
	const char *name = PyUnicode_AsUTF8AndSize(args[0], &name_len);
	const char *method = name != NULL ? PyUnicode_AsUTF8AndSize(args[1], &method_len) : NULL;
	if (method == NULL)
		return NULL;
	// The arguments as a JSON array, in the thread buffer, whose contents
	// (a result being encoded, when str() of a value calls the host) are
	// set aside: the host function may call a plugin on this thread. Go
	// copies the arguments before anything else can run here.
	fidius_buf outer = fidius_buf_stash();
	fidius_buf *b = fidius_tls_buf();
	if (fidius_json_encode(args[2], 1) < 0) {
		fidius_buf_unstash(outer);
		return NULL; // a TypeError naming the value that has no JSON form
	}
	uintptr_t binding = s->host;
	PyThreadState *ts = PyEval_SaveThread();
	int rc = fidiusHostCall(binding, (char *)name, (size_t)name_len, (char *)method, (size_t)method_len, b->p, b->len);
	PyEval_RestoreThread(ts);
	fidius_buf_unstash(outer);
	char err[256];
	PyObject *answer = fidius_json_decode(tls_answer.p, tls_answer.len, err, sizeof err);
	fidius_buf_trim(&tls_answer);
	if (answer == NULL) {
		PyErr_Format(PyExc_RuntimeError, "the host's answer is not JSON: %s", err);
		return NULL;
	}
	if (rc == 1) {
		PyObject *res = PyTuple_Pack(2, Py_True, answer);
		Py_DECREF(answer);
		return res;
	}
	// An error: {"code": ..., "message": ..., "details": ...}.
	PyObject *code = PyDict_Check(answer) ? PyDict_GetItemString(answer, "code") : NULL;
	PyObject *msg = PyDict_Check(answer) ? PyDict_GetItemString(answer, "message") : NULL;
	PyObject *details = PyDict_Check(answer) ? PyDict_GetItemString(answer, "details") : NULL;
	PyObject *res = Py_BuildValue("(O(OOO))", Py_False, code ? code : Py_None, msg ? msg : Py_None,
	                              details ? details : Py_None);
	Py_DECREF(answer);
	return res;
}

static PyMethodDef host_methods[] = {
	{"call", (PyCFunction)(void (*)(void))host_call, METH_FASTCALL,
	 "call(name, method, args): run a function of a host interface bound to the running call."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef host_module = {
	PyModuleDef_HEAD_INIT, "_fidius_host",
	"The host side of fidius.host(): functions the Go host offers its plugins.", -1, host_methods,
	NULL, NULL, NULL, NULL,
};

int fidius_host_init(void) {
	PyObject *m = PyModule_Create(&host_module);
	if (m == NULL)
		return -1;
	PyObject *modules = PyImport_GetModuleDict();
	int rc = PyDict_SetItemString(modules, "_fidius_host", m);
	Py_DECREF(m);
	return rc;
}
