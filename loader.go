// This file owns loading: from a package directory and an interface
// descriptor to a checked *PluginHandle (SPEC section 2).

package fidius

/*
#include "bridge.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unicode"

	cpy "go.nhat.io/cpy/v3"
	"go.uber.org/zap"
)

// Option configures LoadPythonPlugin.
type Option func(*loadOptions)

type loadOptions struct {
	logger *zap.Logger
}

// WithLogger sends the library's log lines to l: Info when a plugin loads,
// Debug for each sys.path insertion. Without it the library logs nothing.
func WithLogger(l *zap.Logger) Option {
	return func(o *loadOptions) {
		if l != nil {
			o.logger = l
		}
	}
}

// LoadPythonPlugin loads the Python plugin package in packageDir and checks
// it against desc: the interpreter is started if needed, the manifest read,
// the package's vendor/ directory and the package directory put first on
// sys.path, the entry module imported, its __interface_hash__ compared with
// desc.InterfaceHash and each of desc's methods looked up as a callable
// attribute of the module. Method i of the returned handle is desc.Methods[i].
//
// Errors match ErrManifest, ErrNotPythonRuntime, ErrMissingPythonSection,
// ErrImportFailed (an *ImportError when Python raised),
// ErrInterfaceHashMismatch (a *HashMismatchError), ErrMissingAttr or
// ErrMethodNotRegistered.
//
// The interpreter has one sys.modules: two packages whose entry modules
// share a name get the module that was imported first.
func LoadPythonPlugin(packageDir string, desc *InterfaceDescriptor, opts ...Option) (*PluginHandle, error) {
	o := loadOptions{logger: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	if desc == nil {
		return nil, errors.New("fidius: LoadPythonPlugin: nil interface descriptor")
	}
	if err := ensureInterpreter(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(packageDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, packageDir, err)
	}
	m, err := LoadManifest(dir)
	if err != nil {
		return nil, err
	}
	if rt := m.Package.RuntimeName(); rt != RuntimePython {
		return nil, fmt.Errorf("%w: package at %s has runtime %q, not %q", ErrNotPythonRuntime, dir, rt, RuntimePython)
	}
	entry := m.Python.EntryModule
	if !isDottedName(entry) {
		return nil, fmt.Errorf("%w: %s: python.entry_module %q is not a dotted Python module name", ErrManifest, m.Path, entry)
	}

	var (
		h        *PluginHandle
		inserted []string
	)
	withGIL(func() {
		inserted, err = prependSysPath(dir)
		if err == nil {
			h, err = importPlugin(entry, desc)
		}
	})
	// Logged after the GIL is released: a logger's sink may block.
	for _, p := range inserted {
		o.logger.Debug("prepended to sys.path", zap.String("path", p))
	}
	if err != nil {
		return nil, err
	}
	o.logger.Info("loaded python plugin",
		zap.String("package", dir),
		zap.String("interface", desc.InterfaceName),
		zap.String("entry_module", entry))
	return h, nil
}

// importPlugin imports the entry module, checks its hash and resolves the
// descriptor's methods. GIL held.
func importPlugin(entry string, desc *InterfaceDescriptor) (*PluginHandle, error) {
	mod := cpy.PyImport_ImportModule(entry)
	if mod == nil {
		return nil, takeImportError(entry)
	}
	defer mod.DecRef()
	if err := checkHash(mod, entry, desc); err != nil {
		return nil, err
	}
	fns := make([]*cpy.PyObject, len(desc.Methods))
	defer func() {
		for _, fn := range fns {
			fn.DecRef() // nil-safe
		}
	}()
	for i, md := range desc.Methods {
		fn := mod.GetAttrString(md.Name)
		if fn == nil {
			clearError()
			return nil, fmt.Errorf("%w: method %q of interface %q is not defined in module %q",
				ErrMethodNotRegistered, md.Name, desc.InterfaceName, entry)
		}
		fns[i] = fn
		if !cpy.PyCallable_Check(fn) {
			return nil, fmt.Errorf("%w: method %q of interface %q in module %q is not callable (it is a %s)",
				ErrMethodNotRegistered, md.Name, desc.InterfaceName, entry, typeName(fn))
		}
	}
	return newHandle(desc, mod, fns), nil
}

// checkHash compares the module's __interface_hash__ with the descriptor's.
// GIL held.
func checkHash(mod *cpy.PyObject, entry string, desc *InterfaceDescriptor) error {
	attr := mod.GetAttrString("__interface_hash__")
	if attr == nil {
		clearError()
		return fmt.Errorf("%w: module %q has no __interface_hash__", ErrMissingAttr, entry)
	}
	defer attr.DecRef()
	notU64 := func(what string) error {
		return fmt.Errorf("%w: module %q: __interface_hash__ is not an unsigned 64-bit integer: %s", ErrImportFailed, entry, what)
	}
	if !cpy.PyLong_Check(attr) || cpy.PyBool_Check(attr) {
		return notU64("it is a " + typeName(attr))
	}
	got := cpy.PyLong_AsUnsignedLongLong(attr)
	if cpy.PyErr_Occurred() != nil {
		clearError()
		return notU64(reprOf(attr))
	}
	if got != desc.InterfaceHash {
		return &HashMismatchError{Interface: desc.InterfaceName, Got: got, Expected: desc.InterfaceHash}
	}
	return nil
}

// typeName returns the name of o's type. GIL held.
func typeName(o *cpy.PyObject) string {
	t := o.Type()
	defer t.DecRef()
	n := t.GetAttrString("__name__")
	if n == nil {
		clearError()
		return "object"
	}
	defer n.DecRef()
	return cpy.PyUnicode_AsUTF8(n)
}

// reprOf returns repr(o), or "?" if that fails. GIL held.
func reprOf(o *cpy.PyObject) string {
	r := o.Repr()
	if r == nil {
		clearError()
		return "?"
	}
	defer r.DecRef()
	return cpy.PyUnicode_AsUTF8(r)
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
			ok := r == '_' || unicode.IsLetter(r) || (i > 0 && unicode.IsDigit(r))
			if !ok {
				return false
			}
		}
	}
	return true
}
