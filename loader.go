// This file owns loading: from a package directory and an interface
// descriptor to a checked *PluginHandle, configured or not, and
// Reload, which does the same again for a loaded handle.

package fidius

/*
#include <stdlib.h>
#include "fidius.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"unsafe"

	"go.uber.org/zap"
)

// importing runs f in interpreter in, holding its import turn and its GIL,
// on a pinned thread, with the plugin code f runs (imports,
// __fidius_configure__) interrupted like a call's when ctx ends; t.slot
// names the package whose code that is.
//
// The turn serialises the imports the library starts in an interpreter:
// loads, reloads and inspections. They share one sys.modules, and an
// import gives up the GIL (a plugin's top level may sleep or read files),
// so without it a reload could drop modules another load is still
// importing, or a load could pick up a module a failed reload is about to
// put back. It is always taken before the GIL, never while holding it, and
// waiting for it ends with the waiter's context.
// finish runs right after f, still holding the GIL, with kept false when
// the caller will not receive what f made (ctx ended), so that it can undo
// it: free a table, drop half-imported modules, leave a handle as it was.
//
// importing returns ctx's error if ctx ended before f finished; the caller
// returns at once then, and f goes on in the background until the
// interrupt stops it. finish runs once whatever happens, also when f never
// ran (ctx ended while waiting for the turn or a thread): then in the
// background, so that the caller need not wait for the GIL.
func importing(ctx context.Context, in *interp, t target, f func(), finish func(kept bool)) error {
	skipped := func() {
		t.inst.hold()
		go func() {
			in.withGIL(func() { finish(false) })
			t.inst.done()
		}()
	}
	select {
	case in.turn <- struct{}{}:
	default:
		select {
		case in.turn <- struct{}{}:
		case <-ctx.Done():
			skipped()
			return ctx.Err()
		}
	}
	if ctx.Done() == nil {
		defer func() { <-in.turn }()
		in.withGIL(func() {
			f()
			finish(true)
		})
		return nil
	}
	c := newCancellation(ctx, t)
	var kept, ran bool
	stayed := c.cross(ctx, func(ctl *C.fidius_ctl) C.fidius_result {
		ran = true
		C.fidius_gil_acquire(in.rt)
		if C.fidius_load_begin(ctl, t.slot) != 0 {
			f()
		}
		C.fidius_load_end(ctl)
		// deliver keeps the caller from leaving from here on: what f made
		// is either the caller's or undone, never both.
		kept = ctl.cancelled == 0 && c.deliver()
		finish(kept)
		C.fidius_gil_release()
		return C.fidius_result{}
	}, func(C.fidius_result) {}, func() {
		if !ran {
			skipped()
		}
		<-in.turn
		c.free()
	})
	if !stayed {
		return ctx.Err()
	}
	if !ran {
		skipped() // no thread was free before ctx ended
	}
	<-in.turn
	c.free()
	if !kept {
		if err := ctx.Err(); err != nil {
			return err
		}
		return context.Canceled // cancelled, and ctx says so in a moment
	}
	return nil
}

// liveSlots counts the slots made and not yet freed (tests).
var liveSlots atomic.Int64

// newSlot makes the C slot a handle calls through, empty, for code in
// interpreter rt.
func newSlot(dir string, rt *C.fidius_rt) *C.fidius_slot {
	cdir := C.CString(dir)
	slot := C.fidius_slot_new(cdir, rt)
	C.free(unsafe.Pointer(cdir))
	if slot == nil {
		panic("fidius: out of memory allocating a handle")
	}
	liveSlots.Add(1)
	return slot
}

// freeSlot frees a slot. GIL held.
func freeSlot(slot *C.fidius_slot) {
	setBinding(slot, nil)
	C.fidius_slot_free(slot)
	liveSlots.Add(-1)
}

// LoadPythonPlugin loads the Python plugin package in packageDir and checks
// it against desc: the interpreter is started if needed, the manifest read,
// the package's vendor/ directory and the package directory put first on
// sys.path, the entry module imported, its __interface_hash__ compared with
// desc.InterfaceHash and each of desc's methods looked up as a callable
// attribute of the module. Method i of the returned handle is desc.Methods[i].
// The handle keeps its own copy of desc: changing desc afterwards does not
// change the handle.
//
// Errors match ErrManifest, ErrNotPythonRuntime, ErrMissingPythonSection,
// ErrImportFailed (an *ImportError when Python raised), ErrModuleConflict,
// ErrInterfaceHashMismatch (a *HashMismatchError), ErrMissingAttr or
// ErrMethodNotRegistered. A method name containing a NUL byte is
// ErrMethodNotRegistered before anything is imported: Python could not
// look it up.
//
// The interpreter has one sys.modules: a package whose entry module has
// the name of a module already imported from elsewhere (another package's
// entry module, say) is refused with ErrModuleConflict. For the same reason
// loads, reloads and InspectPythonPackage run one at a time.
//
// LoadPythonPlugin runs the package's top-level code with no way to stop
// it; LoadPythonPluginContext is the same load under a context.
func LoadPythonPlugin(packageDir string, desc *InterfaceDescriptor, opts ...Option) (*PluginHandle, error) {
	return load(context.Background(), packageDir, desc, opts)
}

// LoadPythonPluginContext is LoadPythonPlugin under ctx. Loading runs
// plugin code (the entry module's top level, what it imports), so a load
// can take as long as a call: when ctx ends, that code is interrupted as a
// call's would be (see Cancellation in the package documentation), the
// modules of the package it had imported are removed from sys.modules, so
// that a later load of a fixed package starts afresh, and the error
// matches ctx.Err(). The function returns as soon as ctx ends, even while
// Python is inside a long C function; the interrupted import finishes in
// the background, and the next load waits for it (or for its own ctx).
func LoadPythonPluginContext(ctx context.Context, packageDir string, desc *InterfaceDescriptor, opts ...Option) (*PluginHandle, error) {
	return load(ctx, packageDir, desc, opts)
}

// LoadPythonPluginConfigured loads a package like LoadPythonPlugin, then
// calls the entry module's __fidius_configure__ with config (converted as
// a typed call's single argument: a Go struct becomes a dict) and takes
// the methods from the object it returns. Each call makes its own
// instance, so differently configured handles of one package coexist.
//
// A module without __fidius_configure__ is ErrMissingAttr; an exception
// raised by it is an *ImportError (ErrImportFailed); a config that does not
// marshal to JSON is ErrInputDecode.
func LoadPythonPluginConfigured(packageDir string, desc *InterfaceDescriptor, config any, opts ...Option) (*PluginHandle, error) {
	return LoadPythonPluginConfiguredContext(context.Background(), packageDir, desc, config, opts...)
}

// LoadPythonPluginConfiguredContext is LoadPythonPluginConfigured under
// ctx, which interrupts the import and __fidius_configure__ as
// LoadPythonPluginContext describes.
func LoadPythonPluginConfiguredContext(ctx context.Context, packageDir string, desc *InterfaceDescriptor, config any, opts ...Option) (*PluginHandle, error) {
	return load(ctx, packageDir, desc, append(opts[:len(opts):len(opts)], WithConfig(config)))
}

func load(ctx context.Context, packageDir string, desc *InterfaceDescriptor, opts []Option) (*PluginHandle, error) {
	o := loadOptions{logger: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	var config []byte // JSON; nil for a plugin that is not configured
	if o.hasConfig {
		var err error
		if config, err = marshalArg(o.config); err != nil {
			return nil, fmt.Errorf("%w: config: %v", ErrInputDecode, err)
		}
	}
	if desc == nil {
		return nil, errors.New("fidius: nil interface descriptor")
	}
	for i, md := range desc.Methods {
		// Python's C API reads attribute names as C strings: a NUL would
		// cut the name short and resolve another attribute.
		if strings.IndexByte(md.Name, 0) >= 0 {
			return nil, fmt.Errorf("%w: method %d (%q) of interface %q: a method name cannot contain a NUL byte",
				ErrMethodNotRegistered, i, md.Name, desc.InterfaceName)
		}
		if md.ClientStreaming && md.WireRaw {
			return nil, fmt.Errorf("%w: method %q of interface %q: a method that takes a stream of inputs is typed, not raw-wire",
				ErrWireModeMismatch, md.Name, desc.InterfaceName)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, m, err := openPythonPackage(packageDir)
	if err != nil {
		return nil, err
	}
	p := &plugin{manifest: m, hosts: o.hosts, dir: dir, entry: m.Python.EntryModule, desc: desc.clone(), config: config, logger: o.logger, strict: o.strict}
	if o.workers > 0 {
		return p.loadWorkers(ctx, o)
	}
	if o.isolated > 0 {
		return p.loadIsolated(ctx, o.isolated)
	}

	in := shared
	slot := newSlot(dir, in.rt)
	if o.strict {
		slot.strict = 1
	}
	var (
		gen      *generation
		inserted []string
		before   *pyObject
	)
	ierr := importing(ctx, in, target{slot: slot}, func() {
		inserted, err = prependSysPath(dir)
		if err != nil {
			return
		}
		if before, err = p.modulesUnder(in); err != nil {
			return
		}
		gen, err = p.importTable(in)
	}, func(kept bool) {
		if err == nil && kept {
			slot.tab = gen.tab
			setBinding(slot, gen.binding)
		} else if before != nil {
			if gen != nil {
				C.fidius_table_free(gen.tab)
			}
			p.restoreModules(in, before) // a later load of the fixed package starts afresh
		}
		before.decRef()
		if slot.tab == nil {
			freeSlot(slot)
			slot = nil
		}
	})
	if ierr != nil {
		// Nothing f sets may be read: an abandoned import is still
		// running in the background.
		return nil, fmt.Errorf("loading package %s: %w", dir, ierr)
	}
	// Logged after the GIL is released: a logger's sink may block.
	for _, path := range inserted {
		p.logger.Debug("prepended to sys.path", zap.String("path", path))
	}
	if err != nil {
		return nil, err
	}
	p.logger.Info("loaded python plugin",
		zap.String("package", dir),
		zap.String("interface", p.desc.InterfaceName),
		zap.String("entry_module", p.entry))
	h := newHandle(p, slot)
	h.present.Store(&gen.present)
	return h, nil
}

// modulesUnder returns the package's modules now in sys.modules, for
// restoreModules to go back to. GIL held.
func (p *plugin) modulesUnder(in *interp) (*pyObject, error) {
	dir := pyPath(p.dir)
	if dir == nil {
		return nil, fmt.Errorf("%w: listing the modules of %s: %s", ErrImportFailed, p.dir, clearError())
	}
	defer dir.decRef()
	mods := in.modulesUnder.call(dir)
	if mods == nil {
		return nil, fmt.Errorf("%w: listing the modules of %s: %s", ErrImportFailed, p.dir, clearError())
	}
	return mods, nil
}

// restoreModules drops the package's modules from sys.modules and puts
// back the ones in saved. GIL held.
func (p *plugin) restoreModules(in *interp, saved *pyObject) {
	dir := pyPath(p.dir)
	if dir == nil {
		clearError()
		return
	}
	defer dir.decRef()
	callHelper(in.restoreModules, dir, saved)
}

// openPythonPackage starts the interpreter if needed and reads the
// manifest of a Python package, returning its absolute directory.
func openPythonPackage(packageDir string) (string, *Manifest, error) {
	if err := ensureInterpreter(); err != nil {
		return "", nil, err
	}
	dir, err := filepath.Abs(packageDir)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s: %v", ErrManifest, packageDir, err)
	}
	m, err := LoadManifest(dir)
	if err != nil {
		return "", nil, err
	}
	if rt := m.Package.RuntimeName(); rt != RuntimePython {
		return "", nil, fmt.Errorf("%w: package at %s has runtime %q, not %q", ErrNotPythonRuntime, dir, rt, RuntimePython)
	}
	return dir, m, nil
}

// importEntry imports the entry module and makes sure it is the
// package's own. GIL held.
func (p *plugin) importEntry(in *interp) (*pyObject, error) {
	callHelper(in.ensureSDK) // a plugin may have removed the embedded SDK's finder
	mod := importModule(p.entry)
	if mod == nil {
		return nil, takeImportError(p.entry)
	}
	if err := p.checkLocation(in, mod); err != nil {
		mod.decRef()
		return nil, err
	}
	return mod, nil
}

// callHelper calls one of host.py's helpers for its effect, dropping the
// result or the exception. GIL held.
func callHelper(fn *pyObject, args ...*pyObject) {
	if res := fn.call(args...); res != nil {
		res.decRef()
	} else {
		clearError()
	}
}

// generation is what one import of a plugin gives its handle.
type generation struct {
	tab     *C.fidius_table
	present []bool  // which of the descriptor's methods the plugin defines
	binding binding // the host interfaces it imports
}

// importTable imports the entry module, checks its hash, configures it if
// the plugin is configured, and resolves the descriptor's methods. GIL held.
func (p *plugin) importTable(in *interp) (*generation, error) {
	mod, err := p.importEntry(in)
	if err != nil {
		return nil, err
	}
	defer mod.decRef()
	if err := checkHash(mod, p.entry, p.desc); err != nil {
		return nil, err
	}
	bound, err := p.bind(mod)
	if err != nil {
		return nil, err
	}
	owner := mod
	if p.config != nil {
		inst, err := p.configure(mod)
		if err != nil {
			return nil, err
		}
		defer inst.decRef()
		owner = inst
	}
	present := make([]bool, len(p.desc.Methods))
	tab := C.fidius_table_new(C.Py_ssize_t(len(p.desc.Methods)), toC(owner))
	if tab == nil {
		panic("fidius: out of memory allocating a method table")
	}
	for i, md := range p.desc.Methods {
		fn := owner.getAttr(md.Name)
		if fn == nil && md.Optional {
			clearError() // left out, as an optional method may be
			continue
		}
		present[i] = true
		if fn == nil {
			clearError()
			C.fidius_table_free(tab)
			return nil, fmt.Errorf("%w: method %q of interface %q is not defined in module %q",
				ErrMethodNotRegistered, md.Name, p.desc.InterfaceName, p.entry)
		}
		if !fn.isCallable() {
			what := typeName(fn)
			fn.decRef()
			C.fidius_table_free(tab)
			return nil, fmt.Errorf("%w: method %q of interface %q in module %q is not callable (it is a %s)",
				ErrMethodNotRegistered, md.Name, p.desc.InterfaceName, p.entry, what)
		}
		C.fidius_table_set(tab, C.Py_ssize_t(i), toC(fn))
		fn.decRef()
	}
	return &generation{tab: tab, present: present, binding: bound}, nil
}

// configure calls the module's __fidius_configure__ with the plugin's
// config and returns the instance. GIL held.
func (p *plugin) configure(mod *pyObject) (*pyObject, error) {
	const attr = "__fidius_configure__"
	fn := mod.getAttr(attr)
	if fn == nil {
		clearError()
		return nil, errNoConfigure(p.entry)
	}
	defer fn.decRef()
	var r C.fidius_result
	arg := fromC(C.fidius_decode_value(bytesPtr(p.config), C.size_t(len(p.config)), &r))
	if arg == nil {
		return nil, fmt.Errorf("%w: config: %s", ErrInputDecode, C.GoStringN(r.data, C.int(r.len)))
	}
	defer arg.decRef()
	inst := fn.call(arg)
	if inst == nil {
		err := takeImportError(p.entry)
		err.Func = attr
		return nil, err
	}
	return inst, nil
}

// checkLocation makes sure the imported entry module is the package's own.
// GIL held.
func (p *plugin) checkLocation(in *interp, mod *pyObject) error {
	dir := pyPath(p.dir)
	if dir == nil {
		return fmt.Errorf("%w: locating module %q: %s", ErrImportFailed, p.entry, clearError())
	}
	defer dir.decRef()
	where := in.foreignLocation.call(mod, dir)
	if where == nil {
		return fmt.Errorf("%w: locating module %q: %s", ErrImportFailed, p.entry, clearError())
	}
	defer where.decRef()
	if where.isNone() {
		return nil
	}
	return fmt.Errorf("%w: entry module %q of package %s is %s, loaded from outside the package; plugins share one sys.modules, so give the entry module a name of its own",
		ErrModuleConflict, p.entry, p.dir, pyText(where))
}

// readHash returns the module's __interface_hash__. GIL held.
func readHash(mod *pyObject, entry string) (uint64, error) {
	attr := mod.getAttr("__interface_hash__")
	if attr == nil {
		clearError()
		return 0, errNoHash(entry)
	}
	defer attr.decRef()
	if !attr.isInt() {
		return 0, errHashNotU64(entry, "it is a "+typeName(attr))
	}
	got, ok := attr.uint64Value()
	if !ok {
		return 0, errHashNotU64(entry, reprOf(attr))
	}
	return got, nil
}

func errNoHash(entry string) error {
	return fmt.Errorf("%w: module %q has no __interface_hash__", ErrMissingAttr, entry)
}

func errHashNotU64(entry, what string) error {
	return fmt.Errorf("%w: module %q: __interface_hash__ is not an unsigned 64-bit integer: %s", ErrImportFailed, entry, what)
}

func errNoConfigure(entry string) error {
	return fmt.Errorf("%w: module %q has no __fidius_configure__, required by LoadPythonPluginConfigured", ErrMissingAttr, entry)
}

// checkHash compares the module's __interface_hash__ with the descriptor's.
// GIL held.
func checkHash(mod *pyObject, entry string, desc *InterfaceDescriptor) error {
	got, err := readHash(mod, entry)
	if err != nil {
		return err
	}
	if got != desc.InterfaceHash {
		return &HashMismatchError{Interface: desc.InterfaceName, Got: got, Expected: desc.InterfaceHash}
	}
	return nil
}

// InspectPythonPackage imports a Python package's entry module, as
// LoadPythonPlugin does, and reports what it declares, without checking it
// against a descriptor. Tools use it to build a descriptor for a package
// they know nothing about.
func InspectPythonPackage(packageDir string) (*PackageReport, error) {
	return InspectPythonPackageContext(context.Background(), packageDir)
}

// InspectPythonPackageContext is InspectPythonPackage under ctx, which
// interrupts the import as LoadPythonPluginContext describes.
func InspectPythonPackageContext(ctx context.Context, packageDir string) (*PackageReport, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, m, err := openPythonPackage(packageDir)
	if err != nil {
		return nil, err
	}
	p := &plugin{dir: dir, entry: m.Python.EntryModule}
	r := &PackageReport{Manifest: m}
	in := shared
	slot := newSlot(dir, in.rt) // only to name the code a cancellation interrupts
	var before *pyObject
	ierr := importing(ctx, in, target{slot: slot}, func() {
		if _, err = prependSysPath(dir); err != nil {
			return
		}
		if before, err = p.modulesUnder(in); err != nil {
			return
		}
		err = p.inspect(in, r)
	}, func(kept bool) {
		if (err != nil || !kept) && before != nil {
			p.restoreModules(in, before)
		}
		before.decRef()
		freeSlot(slot)
	})
	if ierr != nil {
		return nil, fmt.Errorf("inspecting package %s: %w", dir, ierr)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// inspect imports the entry module and fills in what it declares. GIL held.
func (p *plugin) inspect(in *interp, r *PackageReport) error {
	mod, err := p.importEntry(in)
	if err != nil {
		return err
	}
	defer mod.decRef()
	if r.InterfaceHash, err = readHash(mod, p.entry); err != nil {
		return err
	}
	r.Configurable = mod.hasAttr("__fidius_configure__")
	entry := pyString(p.entry)
	defer entry.decRef()
	names := in.registeredNames.call(entry)
	if names == nil {
		return fmt.Errorf("%w: listing the methods of %q: %s", ErrImportFailed, p.entry, clearError())
	}
	defer names.decRef()
	for i, n := 0, names.listLen(); i < n; i++ {
		r.Methods = append(r.Methods, pyText(names.listItem(i)))
	}
	return nil
}

// Reload imports the plugin again from disk: the entry module and every
// other module whose file lies under the package directory (vendor/
// included) are dropped from sys.modules and imported afresh, the hash and
// the methods checked again (and a configured plugin configured again with
// its config), and the handle switches to the new methods at once. Calls
// already running finish on the old code.
//
// If the reload fails, the handle keeps serving the old code, the old
// modules are put back in sys.modules, and the error is returned, as
// LoadPythonPlugin would return it.
//
// Loads and reloads run one at a time in the process. A module of the
// package that another thread is importing (a call importing a helper
// lazily) is dropped only once that import is over.
func (h *PluginHandle) Reload() error { return h.ReloadContext(context.Background()) }

// ReloadContext is Reload under ctx, which interrupts the import as
// LoadPythonPluginContext describes. An interrupted reload has failed:
// the handle keeps serving the old code.
func (h *PluginHandle) ReloadContext(ctx context.Context) error {
	if h.closed.Load() {
		return h.errClosed()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p := h.plugin
	if h.wk != nil {
		return h.reloadWorkers(ctx)
	}
	if h.pool != nil {
		return h.reloadIsolated(ctx)
	}
	in := shared
	var (
		err   error
		saved *pyObject
		gen   *generation
	)
	ierr := importing(ctx, in, target{slot: h.slot}, func() {
		saved, gen, err = p.reimport(in)
	}, func(kept bool) {
		switch {
		case err == nil && gen != nil && kept && !h.closed.Load():
			C.fidius_slot_swap(h.slot, gen.tab)
			setBinding(h.slot, gen.binding)
			h.present.Store(&gen.present)
		case err == nil:
			if gen != nil {
				C.fidius_table_free(gen.tab) // closed while importing, or the caller left
			}
			// saved is nil when the caller left before anything ran.
			if !kept && saved != nil {
				p.restoreModules(in, saved)
			}
		case saved != nil:
			p.restoreModules(in, saved)
		}
		saved.decRef()
	})
	if ierr != nil {
		return fmt.Errorf("reloading package %s: %w", p.dir, ierr)
	}
	if err != nil {
		return err
	}
	if h.closed.Load() {
		return h.errClosed()
	}
	p.logger.Info("reloaded python plugin", zap.String("package", p.dir), zap.String("entry_module", p.entry))
	return nil
}

// reimport drops the plugin's modules from the interpreter's sys.modules
// (returning them, for restoreModules) and imports it again. GIL held.
func (p *plugin) reimport(in *interp) (saved *pyObject, gen *generation, err error) {
	dir := pyPath(p.dir)
	if dir == nil {
		return nil, nil, fmt.Errorf("%w: dropping the old modules: %s", ErrImportFailed, clearError())
	}
	defer dir.decRef()
	if saved = in.dropModules.call(dir); saved == nil {
		return nil, nil, fmt.Errorf("%w: dropping the old modules: %s", ErrImportFailed, clearError())
	}
	gen, err = p.importTable(in)
	return saved, gen, err
}

// typeName returns the name of o's type. GIL held.
func typeName(o *pyObject) string {
	t := o.typeOf()
	defer t.decRef()
	n := t.getAttr("__name__")
	if n == nil {
		clearError()
		return "object"
	}
	defer n.decRef()
	return pyText(n)
}

// reprOf returns repr(o), or "?" if that fails. GIL held.
func reprOf(o *pyObject) string {
	r := o.repr()
	if r == nil {
		clearError()
		return "?"
	}
	defer r.decRef()
	return pyText(r)
}
