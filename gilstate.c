// gilstate.c owns the one place the library reaches into CPython's
// internals: the key of the per-thread "gilstate" state, which CPython
// 3.12 and 3.13 move to each state a thread attaches and which the
// library must move back after an isolated call (see interp.c). It is
// compiled with CPython's internal headers, alone, so that nothing else
// sees them.

#include <patchlevel.h>

#if PY_VERSION_HEX >= 0x030C0000

#define Py_BUILD_CORE 1
#include <Python.h>
#include <internal/pycore_runtime.h>

void fidius_gilstate_main(PyThreadState *from, PyThreadState *main);

void fidius_gilstate_main(PyThreadState *from, PyThreadState *main) {
	if (from != NULL)
		from->_status.bound_gilstate = 0;
	main->_status.bound_gilstate = 1;
	PyThread_tss_set(&_PyRuntime.autoTSSkey, main);
}

#else

#include <Python.h>

void fidius_gilstate_main(PyThreadState *from, PyThreadState *main);

void fidius_gilstate_main(PyThreadState *from, PyThreadState *main) {
	(void)from;
	(void)main;
}

#endif
