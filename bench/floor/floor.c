// floor.c is the CPython floor of the benchmark: the same interpreter
// calling the same Python functions from C, with the GIL released and
// re-taken around every call and the arguments and results converted
// directly with the C API. Nothing a Go host does can be cheaper.
//
// usage: floor PLUGIN_DIR MODULE SECONDS_PER_ROW
// prints "name ns_per_call" lines.

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static PyObject *fn(PyObject *mod, const char *name) {
	PyObject *f = PyObject_GetAttrString(mod, name);
	if (f == NULL) {
		PyErr_Print();
		exit(1);
	}
	return f;
}

static char *out;  // results are copied out, as a host must

// Each call_* does one call the way a C host would, GIL released between calls.
static void call_noop(PyObject *f, const char *in, size_t n, PyThreadState **ts) {
	PyEval_RestoreThread(*ts);
	PyObject *r = PyObject_CallNoArgs(f);
	if (r == NULL) { PyErr_Print(); exit(1); }
	Py_DECREF(r);
	*ts = PyEval_SaveThread();
}

static void call_greet(PyObject *f, const char *in, size_t n, PyThreadState **ts) {
	PyEval_RestoreThread(*ts);
	PyObject *a = PyUnicode_FromStringAndSize(in, (Py_ssize_t)n);
	PyObject *r = PyObject_CallOneArg(f, a);
	if (r == NULL) { PyErr_Print(); exit(1); }
	Py_ssize_t len;
	const char *s = PyUnicode_AsUTF8AndSize(r, &len);
	memcpy(out, s, (size_t)len);
	Py_DECREF(r);
	Py_DECREF(a);
	*ts = PyEval_SaveThread();
}

static void call_echo(PyObject *f, const char *in, size_t n, PyThreadState **ts) {
	PyEval_RestoreThread(*ts);
	PyObject *a = PyBytes_FromStringAndSize(in, (Py_ssize_t)n);
	PyObject *r = PyObject_CallOneArg(f, a);
	if (r == NULL) { PyErr_Print(); exit(1); }
	memcpy(out, PyBytes_AS_STRING(r), (size_t)PyBytes_GET_SIZE(r));
	Py_DECREF(r);
	Py_DECREF(a);
	*ts = PyEval_SaveThread();
}

static void call_crunch(PyObject *f, const char *in, size_t n, PyThreadState **ts) {
	PyEval_RestoreThread(*ts);
	PyObject *a = PyLong_FromLong(10000);
	PyObject *r = PyObject_CallOneArg(f, a);
	if (r == NULL) { PyErr_Print(); exit(1); }
	Py_DECREF(r);
	Py_DECREF(a);
	*ts = PyEval_SaveThread();
}

typedef void (*caller)(PyObject *, const char *, size_t, PyThreadState **);

// measure runs batches until the time is spent and reports the best batch:
// the floor is the least the machine can do.
static double measure(caller c, PyObject *f, const char *in, size_t n, double seconds, PyThreadState **ts) {
	long batch = 1000;
	for (int i = 0; i < batch; i++)
		c(f, in, n, ts);
	double best = 1e30, end = now() + seconds;
	do {
		double t0 = now();
		for (long i = 0; i < batch; i++)
			c(f, in, n, ts);
		double per = (now() - t0) / batch * 1e9;
		if (per < best)
			best = per;
		if (per * batch < 2e6 && batch < 10000000)
			batch *= 2;
	} while (now() < end);
	return best;
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: floor PLUGIN_DIR MODULE SECONDS_PER_ROW\n");
		return 2;
	}
	double seconds = atof(argv[3]);
	Py_InitializeEx(0);
	PyObject *path = PySys_GetObject("path");
	PyObject *dir = PyUnicode_FromString(argv[1]);
	PyList_Insert(path, 0, dir);
	Py_DECREF(dir);
	PyObject *mod = PyImport_ImportModule(argv[2]);
	if (mod == NULL) {
		PyErr_Print();
		return 1;
	}
	PyObject *noop = fn(mod, "noop"), *greet = fn(mod, "greet"), *echo = fn(mod, "echo"), *crunch = fn(mod, "crunch");
	size_t big = 1 << 20;
	char *in = calloc(1, big);
	out = malloc(big);
	PyThreadState *ts = PyEval_SaveThread();
	printf("noop %.1f\n", measure(call_noop, noop, NULL, 0, seconds, &ts));
	printf("greet %.1f\n", measure(call_greet, greet, "World", 5, seconds, &ts));
	printf("echo64 %.1f\n", measure(call_echo, echo, in, 64, seconds, &ts));
	printf("echo1m %.1f\n", measure(call_echo, echo, in, big, seconds, &ts));
	printf("crunch %.1f\n", measure(call_crunch, crunch, NULL, 0, seconds, &ts));
	return 0;
}
