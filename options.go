// This file owns what loading takes and gives that needs no Python: the
// load options and the package report. It builds with and without cgo.

package fidius

import "go.uber.org/zap"

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

// plugin is what a handle needs to import its plugin again.
type plugin struct {
	manifest *Manifest
	dir      string // absolute and clean
	entry    string
	desc     *InterfaceDescriptor
	config   []byte // JSON; nil for a plugin that is not configured
	logger   *zap.Logger
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
