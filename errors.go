// This file owns the error kinds: one sentinel per kind for errors.Is, and
// the structured errors that carry what a caller may want to inspect.

package fidius

import (
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
)

// Sentinel errors, one per kind, for errors.Is. Every error the library
// returns matches one of them, except *PluginError, which carries a
// plugin's own error and is reached with errors.As. A Python package
// without [python] matches both ErrManifest and ErrMissingPythonSection.
var (
	// ErrManifest reports a package.toml that is missing, unreadable,
	// malformed or inconsistent.
	ErrManifest = errors.New("invalid package manifest")
	// ErrNotPythonRuntime reports a package whose runtime is not "python".
	ErrNotPythonRuntime = errors.New("not a Python plugin package")
	// ErrMissingPythonSection reports a Python package without [python].
	ErrMissingPythonSection = errors.New("package.toml has no [python] section")
	// ErrImportFailed reports an entry module that could not be imported,
	// or an __interface_hash__ that is not an unsigned 64-bit integer.
	ErrImportFailed = errors.New("entry module import failed")
	// ErrModuleConflict reports an entry module that is not the package's
	// own: all plugins share one sys.modules, and another package's module
	// of the same name (or a module elsewhere on sys.path) was found first.
	ErrModuleConflict = errors.New("entry module belongs to another package")
	// ErrInterfaceHashMismatch reports a plugin built for another version
	// of the interface. The error is also a *HashMismatchError.
	ErrInterfaceHashMismatch = errors.New("interface hash mismatch")
	// ErrMissingAttr reports an entry module without a required attribute
	// such as __interface_hash__.
	ErrMissingAttr = errors.New("entry module is missing a required attribute")
	// ErrMethodNotRegistered reports an interface method the entry module
	// does not define, or defines as something that is not callable, or a
	// descriptor method name with a NUL byte, which Python cannot look up.
	ErrMethodNotRegistered = errors.New("method not registered")
	// ErrHostImport reports a plugin that imports a host interface the
	// host does not offer, or offers with another version or hash, or
	// whose __fidius_host_imports__ is malformed.
	ErrHostImport = errors.New("host interface import mismatch")
	// ErrMethodAbsent reports a call of an Optional method that the
	// loaded plugin does not define (PluginHandle.Implements is false).
	ErrMethodAbsent = errors.New("optional method not implemented by the plugin")
	// ErrNotIsolatable reports a plugin loaded WithIsolation that cannot
	// run in an isolated interpreter: it imports an extension module that
	// does not support one (the error names it), or the linked CPython is
	// older than 3.12. Such a plugin runs in the shared interpreter.
	ErrNotIsolatable = errors.New("plugin cannot run in an isolated interpreter")
	// ErrWorkerCrashed reports a plugin loaded WithWorkers whose worker
	// process ended before it answered: it crashed, called os._exit, ran
	// out of its memory limit or was killed after its call's context
	// ended. The error is a *WorkerCrashError; the worker is replaced.
	// It is also the error of a worker that cannot be started.
	ErrWorkerCrashed = errors.New("plugin worker process ended")
	// ErrInvalidMethodIndex reports a method index outside [0, MethodCount()).
	ErrInvalidMethodIndex = errors.New("invalid method index")
	// ErrWireModeMismatch reports a raw method called typed, a typed method
	// called raw, or a streaming method called as a unary one.
	ErrWireModeMismatch = errors.New("wire mode mismatch")
	// ErrInputDecode reports call input that cannot become Python arguments.
	// Nothing reached the plugin.
	ErrInputDecode = errors.New("cannot decode call input")
	// ErrOutputEncode reports a plugin result that cannot be returned: a
	// typed result with no JSON form (NaN, infinity, a cycle), a raw result
	// that is not bytes, or a result that does not decode into Call's type.
	ErrOutputEncode = errors.New("cannot encode call output")
	// ErrClosed reports a call on a handle after Close.
	ErrClosed = errors.New("plugin handle is closed")
	// ErrCgoRequired is what every function that runs Python returns in a
	// program built without cgo (CGO_ENABLED=0): manifests, digests,
	// signatures, archives and discovery work there, plugins do not.
	ErrCgoRequired = errors.New("running Python plugins needs cgo and CPython: this program was built with CGO_ENABLED=0")
	// ErrVirtualEnv means UseVirtualEnv was given a directory that is not a
	// virtual environment of the Python this program runs.
	ErrVirtualEnv = errors.New("not a virtual environment of the embedded Python")
)

// Archive rejections, one kind each. Every one is also an ErrArchive.
var (
	// ErrArchive reports an archive that cannot be unpacked: unreadable,
	// not bzip2 or tar, without a package.toml, or rejected by one of the
	// kinds below.
	ErrArchive = errors.New("invalid package archive")
	// ErrArchivePathTraversal reports an entry with a ".." component.
	ErrArchivePathTraversal = errors.New("archive entry escapes the destination")
	// ErrArchiveAbsolutePath reports an entry with an absolute path.
	ErrArchiveAbsolutePath = errors.New("archive entry has an absolute path")
	// ErrArchiveSymlink reports a symbolic link entry.
	ErrArchiveSymlink = errors.New("archive entry is a symbolic link")
	// ErrArchiveHardlink reports a hard link entry.
	ErrArchiveHardlink = errors.New("archive entry is a hard link")
	// ErrArchiveTooLarge reports entries whose sizes add up past MaxSize.
	ErrArchiveTooLarge = errors.New("archive unpacks to more than its size limit")
	// ErrArchiveRatio reports entries whose sizes add up past MaxRatio
	// times the archive's compressed size.
	ErrArchiveRatio = errors.New("archive unpacks to more than its ratio limit")
	// ErrArchiveTooManyEntries reports more entries than MaxEntries.
	ErrArchiveTooManyEntries = errors.New("archive has more entries than its limit")
)

// Signature errors.
var (
	// ErrSignatureMissing reports a package without package.sig.
	ErrSignatureMissing = errors.New("package is not signed")
	// ErrSignatureInvalid reports a package.sig that no trusted key
	// verifies: the package changed since it was signed, or was signed by
	// another key.
	ErrSignatureInvalid = errors.New("package signature is invalid")
)

// ErrPackageNotFound reports a package name that no Host search path holds.
var ErrPackageNotFound = errors.New("package not found")

// PluginError is an exception raised by plugin code. A fidius.PluginError
// arrives with its code, message and details as raised; any other exception
// has its class name as Code, str(exc) as Message and
// {"traceback": "..."} as Details.
type PluginError struct {
	// Code is the error code the plugin chose, or the exception class name.
	Code string
	// Message is the human-readable message.
	Message string
	// Details is JSON, or nil when the plugin gave no details.
	Details json.RawMessage
}

// Error returns the code and the message.
func (e *PluginError) Error() string {
	return fmt.Sprintf("plugin error %s: %s", e.Code, e.Message)
}

// HashMismatchError is the error for ErrInterfaceHashMismatch: the package
// declares one interface hash and the host expects another.
type HashMismatchError struct {
	// Interface is the descriptor's interface name.
	Interface string
	// Got is the module's __interface_hash__.
	Got uint64
	// Expected is the descriptor's hash.
	Expected uint64
}

// Error names the interface and shows both hashes.
func (e *HashMismatchError) Error() string {
	return fmt.Sprintf("%s for interface %q: package declares 0x%016x, host expects 0x%016x",
		ErrInterfaceHashMismatch, e.Interface, e.Got, e.Expected)
}

// Unwrap returns ErrInterfaceHashMismatch.
func (e *HashMismatchError) Unwrap() error { return ErrInterfaceHashMismatch }

// ImportError is the error for ErrImportFailed when Python raised: it
// carries the exception as Python reported it.
type ImportError struct {
	// Module is the entry module being imported.
	Module string
	// Func is the module function that raised, such as
	// "__fidius_configure__"; empty when the import itself failed.
	Func string
	// Type is the exception class name, such as "ModuleNotFoundError".
	Type string
	// Message is str(exception).
	Message string
	// Traceback is the formatted stack of the exception.
	Traceback string
}

// Error names the module and the exception, followed by the traceback.
func (e *ImportError) Error() string {
	s := fmt.Sprintf("%s: module %q: %s: %s", ErrImportFailed, e.Module, e.Type, e.Message)
	if e.Func != "" {
		s = fmt.Sprintf("%s: module %q: %s raised %s: %s", ErrImportFailed, e.Module, e.Func, e.Type, e.Message)
	}
	if e.Traceback != "" {
		s += "\n" + e.Traceback
	}
	return s
}

// Unwrap returns ErrImportFailed.
func (e *ImportError) Unwrap() error { return ErrImportFailed }

// WorkerCrashError is the error of a call whose worker process ended
// before answering: it crashed, called os._exit, ran out of its memory
// limit, or was killed by the library (a call that did not stop after
// its context ended). It matches ErrWorkerCrashed. The worker is replaced;
// other calls and later calls are not affected.
type WorkerCrashError struct {
	// Pid is the worker's process id.
	Pid int
	// ExitCode is the process's exit status, or -1 if a signal ended it.
	ExitCode int
	// Signal is the signal that ended the process, or 0.
	Signal syscall.Signal
	// Reason says why the process ended when the library knows: the
	// library killed it, or it exceeded its memory limit.
	Reason string
	// Stderr is the last lines the process wrote to stderr (a Python
	// traceback, a fatal error), which also went to the logger.
	Stderr string
}

// Error names the process and how it ended.
func (e *WorkerCrashError) Error() string {
	how := fmt.Sprintf("exited with status %d", e.ExitCode)
	if e.Signal != 0 {
		how = fmt.Sprintf("was killed by signal %d (%s)", int(e.Signal), e.Signal)
	}
	s := fmt.Sprintf("%s: worker process %d %s", ErrWorkerCrashed, e.Pid, how)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.Stderr != "" {
		s += "; its stderr ended with:\n" + e.Stderr
	}
	return s
}

// Unwrap returns ErrWorkerCrashed.
func (e *WorkerCrashError) Unwrap() error { return ErrWorkerCrashed }
