// This file owns what loading takes and gives that needs no Python: the
// load options and the package report. It builds with and without cgo.

package fidius

import (
	"encoding/json"

	"go.uber.org/zap"
)

// DefaultThreadLimit is how many OS threads may be inside Python for the
// library at once unless SetThreadLimit says otherwise.
const DefaultThreadLimit = 16

// Option configures LoadPythonPlugin.
type Option func(*loadOptions)

type loadOptions struct {
	logger    *zap.Logger
	strict    bool
	config    any
	hasConfig bool
	hosts     map[string]*HostInterface
	isolated  int // instances, each in an interpreter of its own; 0: the shared interpreter
	workers   int // worker processes; 0: in this process
	python    string
	memory    int64
}

// HostFunc is a function a host offers its plugins. args is the JSON array
// of the arguments the plugin passed; the result is encoded as Call
// encodes arguments (a json.RawMessage as it is). An error that is a
// *PluginError reaches the plugin as a fidius.PluginError with its code,
// message and details; any other error as one with code "HOST_ERROR".
//
// A HostFunc runs on the thread running the plugin's call, with the GIL
// released, so it may take its time and may call into any plugin,
// this one included; it must be safe for concurrent use, as calls are.
type HostFunc func(args json.RawMessage) (any, error)

// HostInterface is a set of functions a host offers its plugins, under a
// name, a version and a hash, as fidius's host interfaces are. A plugin
// declares what it imports with a module attribute:
//
//	__fidius_host_imports__ = {"SlotHost": {"version": 1, "hash": 0x8F3C...}}
//
// and calls a function with fidius.host("SlotHost").free_slots(). The
// load refuses a plugin that imports an interface the host does not
// offer, or offers with another version or hash (ErrHostImport).
type HostInterface struct {
	// Name is the interface's name, as plugins import it.
	Name string
	// Version is the interface version.
	Version uint32
	// Hash is InterfaceHash of the functions' signatures, computed as for
	// plugin interfaces.
	Hash uint64
	// Funcs are the functions, by the name plugins call them by.
	Funcs map[string]HostFunc
}

// WithHostInterface offers hi to the plugin: while one of its methods
// runs, a plugin that imports hi can call its functions. Give it once per
// interface; a later one of the same name replaces an earlier one.
func WithHostInterface(hi *HostInterface) Option {
	return func(o *loadOptions) {
		if o.hosts == nil {
			o.hosts = map[string]*HostInterface{}
		}
		o.hosts[hi.Name] = hi
	}
}

// WithLogger sends the library's log lines to l: Info when a plugin loads
// or reloads, Debug for each sys.path insertion. Without it the library
// logs nothing.
func WithLogger(l *zap.Logger) Option {
	return func(o *loadOptions) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithConfig loads the plugin configured with config, as
// LoadPythonPluginConfigured does. It is how a configured package is
// loaded through an API that takes options, such as Host.Load.
// LoadPythonPluginConfigured's own config argument takes precedence.
func WithConfig(config any) Option {
	return func(o *loadOptions) { o.config, o.hasConfig = config, true }
}

// WithStrictValues makes a typed result (or streamed item) that has no
// JSON form of its own an error matching ErrOutputEncode, naming its
// type, instead of the JSON string of its str(). The value table in the
// package documentation lists what converts; with this option, anything
// that would fall through to str() is refused. A str() that arrives where
// a list or a number was meant is how bugs hide; hosts that would rather
// see them fail use this option.
func WithStrictValues() Option {
	return func(o *loadOptions) { o.strict = true }
}

// WithIsolation runs the plugin in n isolated interpreters (n < 1 means
// 1) instead of the shared one: each is a CPython sub-interpreter with its
// own GIL, its own sys.modules and its own copy of the plugin, imported
// (and configured) separately. Calls on the handle go to the least busy
// instance, so n instances run n calls at once on n cores, and packages
// with the same module names, or different versions of one library, load
// side by side. Isolation needs CPython 3.12 or later, and extension
// modules that support it; a plugin that imports one that does not fails
// to load with ErrNotIsolatable. Each instance costs memory and start-up
// time of its own: see Isolation in the README.
func WithIsolation(n int) Option {
	return func(o *loadOptions) { o.isolated = max(n, 1) }
}

// WithWorkers runs the plugin in n worker processes (n < 1 means 1)
// instead of this one: each is a Python interpreter of its own, started
// with the embedded worker program (standard library only), which imports
// the package as LoadPythonPlugin would. The handle is the same: every
// call, stream, Reload and Close works as in-process, and a call goes to
// a free worker, so n workers run n calls at once on n cores.
//
// A worker that crashes, calls os._exit, runs out of its memory limit or
// does not stop after its call's context ended is replaced, and only the
// call it was running fails, with a *WorkerCrashError. A call costs tens
// of microseconds rather than nanoseconds: see Worker processes in the
// README. The Python is the one WithInterpreter names, or by default the
// python3 of the linked CPython (its sys.executable). WithIsolation has no
// effect with it: each worker is a process of its own.
func WithWorkers(n int) Option {
	return func(o *loadOptions) { o.workers = max(n, 1) }
}

// WithInterpreter names the Python program that WithWorkers runs, such as
// a virtual environment's bin/python: its version and installed packages
// are the plugin's, whatever CPython this program is linked with. Without
// WithWorkers it has no effect.
func WithInterpreter(python string) Option {
	return func(o *loadOptions) { o.python = python }
}

// WithWorkerMemoryLimit limits each worker process's address space to
// bytes (RLIMIT_AS), set before the plugin is imported. A plugin that
// needs more gets a MemoryError, and its worker is replaced (the call's
// error is a *WorkerCrashError); a crash of C code short of memory is a
// crash like any other. Without WithWorkers it has no effect.
func WithWorkerMemoryLimit(bytes int64) Option {
	return func(o *loadOptions) { o.memory = bytes }
}

// plugin is what a handle needs to import its plugin again.
type plugin struct {
	manifest *Manifest
	hosts    map[string]*HostInterface // offered at the load
	dir      string                    // absolute and clean
	entry    string
	desc     *InterfaceDescriptor
	config   []byte // JSON; nil for a plugin that is not configured
	logger   *zap.Logger
	strict   bool // WithStrictValues
}

// PackageReport is what a Python plugin package declares about itself.
type PackageReport struct {
	// Manifest is the package's package.toml.
	Manifest *Manifest
	// InterfaceHash is the entry module's __interface_hash__.
	InterfaceHash uint64
	// Methods are the names registered with fidius.method by the entry
	// module or its submodules, sorted.
	Methods []string
	// Configurable says whether the entry module defines
	// __fidius_configure__: the package is meant to be loaded with
	// LoadPythonPluginConfigured.
	Configurable bool
}
