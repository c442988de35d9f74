// This file owns package.toml: reading it, checking it the way fidius
// does, and decoding the host's own [metadata] schema.

package fidius

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"github.com/BurntSushi/toml"
)

// Runtimes a package.toml may name.
const (
	RuntimeRust   = "rust"
	RuntimePython = "python"
	// RuntimeWasm packages (a WebAssembly component) are fidius's; this
	// library reads and lists them, and loads only Python ones.
	RuntimeWasm = "wasm"
)

// Manifest is a parsed package.toml.
type Manifest struct {
	// Package is the fixed [package] header.
	Package PackageHeader
	// Python is the [python] section; nil for packages of another runtime.
	Python *PythonSection
	// Wasm is the [wasm] section of a "wasm" package; nil otherwise.
	Wasm *WasmSection
	// Path is the manifest file that was read.
	Path string

	metadata toml.Primitive
	meta     toml.MetaData
}

// PackageHeader is the [package] table.
type PackageHeader struct {
	// Name is the package name, such as "py-greeter".
	Name string `toml:"name"`
	// Version is the package version.
	Version string `toml:"version"`
	// Interface names the interface the package implements.
	Interface string `toml:"interface"`
	// InterfaceVersion is the interface version the package was built for.
	InterfaceVersion uint32 `toml:"interface_version"`
	// Extension is the archive extension; empty means "fid" (see FileExtension).
	Extension string `toml:"extension"`
	// Runtime is "rust", "python", or empty for "rust" (see RuntimeName).
	Runtime string `toml:"runtime"`
}

// FileExtension returns the archive extension, "fid" unless the manifest
// names another.
func (h PackageHeader) FileExtension() string {
	if h.Extension == "" {
		return "fid"
	}
	return h.Extension
}

// RuntimeName returns the runtime, "rust" when the manifest names none.
func (h PackageHeader) RuntimeName() string {
	if h.Runtime == "" {
		return RuntimeRust
	}
	return h.Runtime
}

// PythonSection is the [python] table.
type PythonSection struct {
	// EntryModule is the dotted module the loader imports, such as "my_plugin.entry".
	EntryModule string `toml:"entry_module"`
	// Requirements is the requirements file used to vendor dependencies;
	// empty means "requirements.txt" (see RequirementsFile).
	Requirements string `toml:"requirements"`
}

// WasmSection is the [wasm] table of a fidius WebAssembly package.
type WasmSection struct {
	// Component is the component file inside the package directory.
	Component string `toml:"component"`
	// Precompiled is an optional precompiled (.cwasm) form of Component.
	Precompiled string `toml:"precompiled"`
	// Capabilities is the WASI capability allow-list.
	Capabilities []string `toml:"capabilities"`
}

// RequirementsFile returns the requirements file name, "requirements.txt"
// unless the manifest names another.
func (p PythonSection) RequirementsFile() string {
	if p.Requirements == "" {
		return "requirements.txt"
	}
	return p.Requirements
}

type rawManifest struct {
	Package  *rawHeader     `toml:"package"`
	Metadata toml.Primitive `toml:"metadata"`
	Python   *rawPython     `toml:"python"`
	Wasm     *WasmSection   `toml:"wasm"`
}

// The raw forms use pointers so that a missing required key can be told
// from an empty one.
type rawHeader struct {
	Name             *string `toml:"name"`
	Version          *string `toml:"version"`
	Interface        *string `toml:"interface"`
	InterfaceVersion *uint32 `toml:"interface_version"`
	Extension        *string `toml:"extension"`
	Runtime          *string `toml:"runtime"`
}

type rawPython struct {
	EntryModule  *string `toml:"entry_module"`
	Requirements *string `toml:"requirements"`
}

// LoadManifest reads and checks dir/package.toml. Every failure matches
// ErrManifest; syntax and type errors name the file, line and column. A
// directory or package.toml that does not exist also matches
// fs.ErrNotExist.
func LoadManifest(dir string) (*Manifest, error) {
	path := filepath.Join(dir, "package.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			msg := fmt.Sprintf("%s: no package.toml in %s", ErrManifest, dir)
			if _, derr := os.Stat(dir); errors.Is(derr, fs.ErrNotExist) {
				msg = fmt.Sprintf("%s: package directory %s does not exist", ErrManifest, dir)
			}
			return nil, &notFoundError{msg: msg, cause: err}
		}
		return nil, fmt.Errorf("%w: %w", ErrManifest, err)
	}
	return parseManifest(path, data)
}

// notFoundError is a package directory or package.toml that does not
// exist. It matches both ErrManifest and fs.ErrNotExist, so that a caller
// can tell "nothing there" (a mistyped path) from a broken package without
// reading the message.
type notFoundError struct {
	msg   string
	cause error // the *fs.PathError from reading package.toml
}

// Error names the missing directory or file.
func (e *notFoundError) Error() string { return e.msg }

// Unwrap returns ErrManifest and the underlying *fs.PathError.
func (e *notFoundError) Unwrap() []error { return []error{ErrManifest, e.cause} }

// parseManifest parses and checks the contents of the manifest at path.
func parseManifest(path string, data []byte) (*Manifest, error) {
	var raw rawManifest
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrManifest, positioned(path, data, err))
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrManifest, path, fmt.Sprintf(format, args...))
	}
	if raw.Package == nil {
		return nil, bad("missing [package] table")
	}
	for _, req := range []struct {
		key string
		set bool
	}{
		{"name", raw.Package.Name != nil},
		{"version", raw.Package.Version != nil},
		{"interface", raw.Package.Interface != nil},
		{"interface_version", raw.Package.InterfaceVersion != nil},
	} {
		if !req.set {
			return nil, bad("missing required key package.%s", req.key)
		}
	}
	if !md.IsDefined("metadata") {
		return nil, bad("missing [metadata] table")
	}
	m := &Manifest{
		Package: PackageHeader{
			Name:             *raw.Package.Name,
			Version:          *raw.Package.Version,
			Interface:        *raw.Package.Interface,
			InterfaceVersion: *raw.Package.InterfaceVersion,
			Extension:        deref(raw.Package.Extension),
			Runtime:          deref(raw.Package.Runtime),
		},
		Path:     path,
		metadata: raw.Metadata,
		meta:     md,
	}
	// A section of another runtime is refused, as fidius refuses it.
	rt := m.Package.RuntimeName()
	if raw.Python != nil && rt != RuntimePython {
		return nil, bad("[python] section is only valid with runtime = %q", RuntimePython)
	}
	if raw.Wasm != nil && rt != RuntimeWasm {
		return nil, bad("[wasm] section is only valid with runtime = %q", RuntimeWasm)
	}
	switch rt {
	case RuntimeRust:
	case RuntimeWasm:
		if raw.Wasm == nil || raw.Wasm.Component == "" {
			return nil, bad("runtime = %q requires a [wasm] section with component", RuntimeWasm)
		}
		m.Wasm = raw.Wasm
	case RuntimePython:
		if raw.Python == nil {
			// Both a manifest error and its own kind, which the
			// loader reports.
			return nil, fmt.Errorf("%w: %s: runtime is %q but %w", ErrManifest, path, RuntimePython, ErrMissingPythonSection)
		}
		if raw.Python.EntryModule == nil {
			return nil, bad("missing required key python.entry_module")
		}
		if !isDottedName(*raw.Python.EntryModule) {
			return nil, bad("python.entry_module %q is not a dotted Python module name", *raw.Python.EntryModule)
		}
		m.Python = &PythonSection{EntryModule: *raw.Python.EntryModule, Requirements: deref(raw.Python.Requirements)}
	default:
		return nil, bad("unknown runtime %q: allowed values are %q, %q and %q", m.Package.Runtime, RuntimeRust, RuntimePython, RuntimeWasm)
	}
	return m, nil
}

// typeErr matches the errors BurntSushi/toml reports for a value of the
// wrong type, which carry a line but no column.
var typeErr = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// positioned formats a TOML error as "file:line:column: message".
func positioned(path string, data []byte, err error) string {
	msg := err.Error()
	var perr toml.ParseError
	if errors.As(err, &perr) && perr.Message != "" {
		msg = perr.Message
	}
	line, col := 0, 0
	if m := typeErr.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		col = valueColumn(data, line)
		msg = m[2] + ": " + m[3]
	}
	if errors.As(err, &perr) {
		// The parser reports -1 when it failed before reading a byte.
		off := max(0, min(perr.Position.Start, len(data)))
		line, col = perr.Position.Line, off-bytes.LastIndexByte(data[:off], '\n')
	}
	if line == 0 {
		return fmt.Sprintf("%s: %s", path, msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", path, line, col, msg)
}

// valueColumn returns the 1-based column of the value on a "key = value"
// line, or 1 when the line has no '='.
func valueColumn(data []byte, line int) int {
	lines := bytes.Split(data, []byte("\n"))
	if line < 1 || line > len(lines) {
		return 1
	}
	l := lines[line-1]
	eq := bytes.IndexByte(l, '=')
	if eq < 0 {
		return 1
	}
	col := eq + 1
	for col < len(l) && (l[col] == ' ' || l[col] == '\t') {
		col++
	}
	return col + 1
}

// isDottedName reports whether s is a dotted Python module path, such as
// "plugin" or "my_plugin.entry": so that nothing but a module name is ever
// handed to the import system.
func isDottedName(s string) bool {
	if s == "" {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if part == "" {
			return false
		}
		for i, r := range part {
			if !(r == '_' || unicode.IsLetter(r) || (i > 0 && unicode.IsDigit(r))) {
				return false
			}
		}
	}
	return true
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// DecodeMetadata decodes the [metadata] table into v, the host's own
// schema (a pointer to a struct or a map). Keys v does not have are
// ignored; a value of the wrong type is an error matching ErrManifest.
func (m *Manifest) DecodeMetadata(v any) error {
	if err := m.meta.PrimitiveDecode(m.metadata, v); err != nil {
		return fmt.Errorf("%w: %s: [metadata]: %v", ErrManifest, m.Path, err)
	}
	return nil
}
