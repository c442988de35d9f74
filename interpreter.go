// This file owns the interpreters: starting the process's main one once,
// setting up any interpreter (the host's private Python helpers, the
// embedded copy of the fidius SDK), and the helpers the loader calls in
// each.

package fidius

/*
#cgo CFLAGS: -Wall -Wextra -Wno-unused-function -Wno-unused-parameter
#include <stdlib.h>
#include "fidius.h"
// -Wno-unused-parameter: cgo's own generated glue has unused parameters.
*/
import "C"

import (
	"embed"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"
)

//go:embed python/host.py
var hostSource string

// sdkFiles is the fidius SDK served to plugins that do not vendor it.
//
//go:embed python/fidius/*.py
var sdkFiles embed.FS

var (
	startOnce sync.Once
	startErr  error

	// shared is the main interpreter, which plugins loaded without
	// isolation share; set once started.
	shared *interp
)

// interp is an interpreter plugins run in: the main one, or an isolated
// one (isolation.go). Its helpers are objects of that interpreter, used
// only under its GIL.
type interp struct {
	rt *C.fidius_rt
	// turn serialises the imports the library starts in the interpreter;
	// see importing.
	turn chan struct{}

	// Helpers from host.py, owned as long as the interpreter lives.
	dropModules     *pyObject
	modulesUnder    *pyObject
	restoreModules  *pyObject
	foreignLocation *pyObject
	ensureSDK       *pyObject
	registeredNames *pyObject
	useVirtualEnv   *pyObject
	isolate         *pyObject
}

// withGIL runs f in the interpreter; see withGILOf.
func (in *interp) withGIL(f func()) { withGILOf(in.rt, f) }

// dropHelpers releases the helpers, before the interpreter ends. GIL held.
func (in *interp) dropHelpers() {
	for _, o := range []**pyObject{&in.dropModules, &in.modulesUnder, &in.restoreModules, &in.foreignLocation,
		&in.ensureSDK, &in.registeredNames, &in.useVirtualEnv, &in.isolate} {
		(*o).decRef()
		*o = nil
	}
}

// ensureInterpreter starts the interpreter the first time it is called;
// later calls return the first call's result. The interpreter is never
// finalized: C extensions cannot be unloaded safely, and handles may outlive
// any point where the host could say it is done.
func ensureInterpreter() error {
	startOnce.Do(func() {
		started := make(chan error)
		go pythonMainThread(started)
		startErr = <-started
	})
	return startErr
}

// startInterpreter runs on the thread that stays Python's main thread.
func startInterpreter() error {
	if C.fidius_start() != 0 {
		return fmt.Errorf("%w: cannot start the Python interpreter", ErrImportFailed)
	}
	// fidius_start returns holding the GIL; from here on the GIL is only
	// ever held for the length of a call.
	defer C.fidius_gil_release()
	in := &interp{rt: C.fidius_main_rt(), turn: make(chan struct{}, 1)}
	if err := in.setUp(); err != nil {
		return err
	}
	shared = in
	return nil
}

// setUp runs host.py in the interpreter, hands C the helpers it needs,
// keeps the ones Go calls, and installs the embedded SDK. GIL held.
func (in *interp) setUp() error {
	src := C.CString(hostSource)
	defer C.free(unsafe.Pointer(src))
	name := C.CString("<fidius-go>/host.py")
	defer C.free(unsafe.Pointer(name))
	mod := fromC(C.fidius_exec_bootstrap(src, name))
	if mod == nil {
		return takeImportError("<fidius-go>/host.py")
	}
	defer mod.decRef()

	// The helpers C needs are borrowed for the call that hands them over;
	// the ones Go calls are kept for the life of the process.
	var describe, fields, install, cancelled, mapping, hostStreamError *pyObject
	defer func() {
		describe.decRef() // nil-safe: a lookup may have failed
		fields.decRef()
		install.decRef()
		cancelled.decRef()
		mapping.decRef()
		hostStreamError.decRef()
	}()
	for _, h := range []struct {
		name string
		dst  **pyObject
	}{
		{"describe", &describe}, {"field_names", &fields}, {"install_sdk", &install}, {"CallCancelled", &cancelled}, {"Mapping", &mapping}, {"HostStreamError", &hostStreamError},
		{"drop_modules", &in.dropModules}, {"restore_modules", &in.restoreModules}, {"modules_under", &in.modulesUnder}, {"foreign_location", &in.foreignLocation},
		{"ensure_sdk", &in.ensureSDK}, {"registered_methods", &in.registeredNames}, {"use_virtual_env", &in.useVirtualEnv}, {"isolate", &in.isolate},
	} {
		if *h.dst = mod.getAttr(h.name); *h.dst == nil {
			return takeImportError("<fidius-go>/host.py")
		}
	}
	C.fidius_set_helpers(toC(describe), toC(fields), toC(cancelled), toC(mapping))
	if C.fidius_cancel_init() != 0 {
		return takeImportError("<fidius-go>/cancellation")
	}
	if C.fidius_feed_init(toC(hostStreamError)) != 0 {
		return takeImportError("<fidius-go>/host-fed streams")
	}
	if C.fidius_host_init() != 0 {
		return takeImportError("<fidius-go>/host functions")
	}

	sources, err := sdkSources()
	if err != nil {
		return err
	}
	defer sources.decRef()
	pycache := pyString(pycacheDir())
	defer pycache.decRef()
	res := install.call(sources, pycache)
	if res == nil {
		return takeImportError("fidius (embedded SDK)")
	}
	res.decRef()
	return nil
}

// pycacheDir is where Python writes bytecode caches for plugin modules,
// instead of __pycache__ directories inside packages.
func pycacheDir() string {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "fidius-go", "pycache")
}

// sdkSources builds {module name: [is_package, source]} from the embedded
// SDK files. GIL held.
func sdkSources() (*pyObject, error) {
	sources, err := sdkSourceMap()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(sources)
	if err != nil {
		return nil, fmt.Errorf("%w: embedded SDK: %v", ErrImportFailed, err)
	}
	var r C.fidius_result
	dict := fromC(C.fidius_decode_value((*C.char)(unsafe.Pointer(&b[0])), C.size_t(len(b)), &r))
	if dict == nil {
		return nil, fmt.Errorf("%w: embedded SDK: %s", ErrImportFailed, C.GoStringN(r.data, C.int(r.len)))
	}
	return dict, nil
}

// pyException is a Python exception read out of the interpreter.
type pyException struct {
	code, message string
	details       json.RawMessage
}

// readException copies a described exception out of the thread buffer.
// Call it on the thread that produced r, before unpinning.
func readException(r C.fidius_result) pyException {
	b := unsafe.Slice((*byte)(unsafe.Pointer(r.data)), int(r.len))
	n1, n2 := int(r.len1), int(r.len2)
	e := pyException{code: string(b[:n1]), message: string(b[n1 : n1+n2])}
	if len(b) > n1+n2 {
		e.details = json.RawMessage(append([]byte(nil), b[n1+n2:]...))
	}
	return e
}

// takeImportError clears the pending Python exception and returns it as an
// *ImportError for module. GIL held.
func takeImportError(module string) *ImportError {
	e := readException(C.fidius_take_error())
	var d struct {
		Traceback string `json:"traceback"`
	}
	_ = json.Unmarshal(e.details, &d)
	return &ImportError{Module: module, Type: e.code, Message: e.message, Traceback: strings.TrimRight(d.Traceback, "\n")}
}

// clearError discards the pending Python exception and returns its
// "Type: message" text. GIL held.
func clearError() string {
	e := readException(C.fidius_take_error())
	return e.code + ": " + e.message
}

// sysExecutable is sys.executable, or "" if it is not a path. GIL held.
func sysExecutable() string {
	exe := sysGet("executable") // borrowed
	if exe == nil || !exe.isStr() {
		return ""
	}
	s, _ := goPath(exe)
	return s
}
