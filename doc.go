// Package fidius hosts Python plugins in a Go program by embedding CPython
// 3.11 through cgo: no subprocess, no socket, no second deployment.
//
// A plugin is a package directory holding a package.toml, Python code and
// an optional vendor/ directory, in the format of fidius, the Rust plugin
// framework: a package written for a fidius host loads here unchanged.
// LoadPythonPlugin checks the package against an InterfaceDescriptor and
// returns a *PluginHandle whose methods are called by index, with JSON
// (CallJSON, or Call for Go values) or raw bytes (CallRaw, CallRawAppend),
// from any number of goroutines. Streaming methods are consumed with
// CallStream; LoadPythonPluginConfigured makes configured instances; Reload
// picks up edits to a loaded plugin.
//
// Packages also come as .fid archives (UnpackPackage, with limits that make
// untrusted archives safe) and may be signed (PackageDigest, SignPackage,
// VerifyPackage, compatible with fidius). A Host finds packages by name in
// search paths of directories and archives. The fidius-py command
// (cmd/fidius-py) inspects, calls, stubs, signs and verifies packages.
//
// Every call takes a context. When it ends, the call returns the
// context's error at once, whatever Python is doing; the call is stopped in
// the background at the next line of the plugin's own code (never inside
// the standard library or vendor/), after a grace period for the plugin's
// cleanup. Calls under a context that cannot end (context.Background) run
// on the caller's goroutine and pay nothing for this. At most
// SetThreadLimit OS threads are inside Python at once; other callers wait
// as goroutines.
//
// # Values
//
// Typed calls convert JSON to Python and back:
//
//	JSON                          Python               back to JSON
//	null                          None                 null
//	true, false                   bool                 true, false
//	number, no fraction/exponent  int (any size)       the exact digits
//	other number                  float                shortest round-trip form;
//	                                                   NaN and ±Inf are ErrOutputEncode
//	string                        str                  string
//	array                         list                 array (from list or tuple)
//	object                        dict                 object; keys that are not str become str(key)
//	                                                   (two keys giving one JSON key are ErrOutputEncode)
//	                              bytes, bytearray     array of byte values
//	                              dataclass instance   object of its fields
//	                              x with x.tolist()    what tolist() gives, if a list, int,
//	                                giving list, int,  float, bool or str (numpy scalars
//	                                float, bool, str   and arrays, array.array, memoryview)
//	                              x with __index__     int (operator.index(x))
//	                              x with __float__     float (Decimal, Fraction, numpy.float32)
//	                              set, frozenset       array, in iteration order
//	                              collections.abc.Mapping  object, as a dict of its items
//	                              iterator, awaitable  ErrOutputEncode (a generator streams:
//	                                                   declare the method Streaming)
//	                              anything else        str(obj), or ErrOutputEncode
//	                                                   with WithStrictValues
//
// The rows are tried in this order, by what a value does rather than its
// type: the library imports no numpy to convert numpy values.
//
// From Go, Call encodes arguments as encoding/json does, except that float
// kinds keep a fraction, so float64(2) arrives as the float 2.0 rather than
// the int 2.
//
// A JSON array input is the positional arguments; null or empty input calls
// with no arguments; any other value is the single argument. Input must be
// strict JSON (RFC 8259) in UTF-8, nested at most 1000 levels deep;
// anything else is ErrInputDecode and nothing reaches Python. Integers are
// limited only by Python's int/str conversion limit (4300 digits by default).
// A result may nest at most 1000 levels deep too, whatever Python's
// recursion limit is; a deeper one, or one that contains itself, is
// ErrOutputEncode.
//
// # Errors
//
// Every error kind has a sentinel for errors.Is (ErrManifest,
// ErrImportFailed, ErrClosed, ...). A Python exception raised by a plugin is
// a *PluginError: a fidius.PluginError keeps its code, message and details;
// any other exception has its class name as the code. SystemExit and
// KeyboardInterrupt are ordinary plugin errors: a plugin cannot end the
// host process.
//
// # The interpreter
//
// One interpreter serves the process. It starts on the first load, without
// Python's signal handlers (Go keeps its own), and is never finalized.
// Each OS thread that calls into Python gets a Python thread state once
// and keeps it; a call pins its goroutine to its thread and holds the GIL
// only while Python runs, so plugin code runs one call at a time while Go
// code around it runs in parallel.
//
// All plugins share one sys.modules. A package whose entry module has the
// name of a module already imported from elsewhere is refused with
// ErrModuleConflict, and whichever copy of the fidius SDK is imported first
// serves every plugin. The library embeds the
// SDK, found after every plugin directory, for plugins that do not vendor it.
//
// # Worker processes
//
// WithWorkers runs a plugin in child processes of a Python program (the
// linked CPython's, or the one WithInterpreter names, such as a virtual
// environment's) instead, behind the same PluginHandle: a crash,
// os._exit, a memory limit or C code past a deadline costs one call and
// a replaced worker (*WorkerCrashError, ErrWorkerCrashed), and n workers
// run n calls at once. A call then costs about ten microseconds.
package fidius
