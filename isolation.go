// This file owns isolated plugins: an interpreter of its own for each
// instance of a plugin (CPython 3.12 and later, with its own GIL), the
// pool of instances a handle spreads its calls over, and ending an
// interpreter once nothing uses it.

package fidius

/*
#include "fidius.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"
)

// target is what one call runs through: a slot, and for an isolated
// plugin the instance the call holds until it is over.
type target struct {
	slot *C.fidius_slot
	inst *instance // nil for the shared interpreter
}

// instance is one copy of a plugin in an interpreter of its own.
type instance struct {
	in   *interp
	slot *C.fidius_slot
	// refs counts who may still use the interpreter: the pool (until a
	// reload replaces the instance, or Close), and each call, stream or
	// cancellation running in it. The last to let go ends it.
	refs atomic.Int64
}

// liveInstances counts the isolated interpreters not yet ended (tests).
var liveInstances atomic.Int64

// hold adds a use for someone who holds one already. nil-safe.
func (i *instance) hold() {
	if i != nil {
		i.refs.Add(1)
	}
}

// tryHold adds a use unless the instance has ended.
func (i *instance) tryHold() bool {
	for {
		n := i.refs.Load()
		if n <= 0 {
			return false
		}
		if i.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// done gives a use back; the last one ends the interpreter, in the
// background: it may be a call's, whose caller should not wait for it.
// nil-safe.
func (i *instance) done() {
	if i != nil && i.refs.Add(-1) == 0 {
		go i.end()
	}
}

// end releases the instance's Python references and ends its
// interpreter. Ending waits for threads the plugin started, for ever if
// they never end: when there are some, end returns at once and the
// interpreter ends in the background, on a thread of its own (outside
// the gate, where it would hold a place meant for calls).
func (i *instance) end() {
	runtime.LockOSThread()
	C.fidius_gil_acquire(i.in.rt)
	if i.slot != nil {
		freeSlot(i.slot)
	}
	i.in.dropHelpers()
	if C.fidius_rt_busy(i.in.rt) != 0 {
		C.fidius_gil_release()
		runtime.UnlockOSThread()
		go i.endWaiting()
		return
	}
	i.endNow()
}

// endNow ends the interpreter, whose GIL this pinned thread holds.
func (i *instance) endNow() {
	C.fidius_rt_end(i.in.rt) // holds no GIL afterwards
	runtime.UnlockOSThread()
	liveInstances.Add(-1)
}

// endWaiting ends the interpreter once the plugin's threads are over,
// looking again every so often: Py_EndInterpreter itself would wait only
// for threading's threads, and end the process over one _thread started.
func (i *instance) endWaiting() {
	runtime.LockOSThread()
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		C.fidius_gil_acquire(i.in.rt)
		if C.fidius_rt_busy(i.in.rt) == 0 {
			i.endNow()
			return
		}
		C.fidius_gil_release()
		time.Sleep(wait)
	}
}

// pool is an isolated handle's instances.
type pool struct {
	insts     atomic.Pointer[[]*instance] // nil once closed
	next      atomic.Uint32
	reloading chan struct{} // one Reload at a time
}

// get picks the instance with the fewest uses, starting the search at a
// rotating place so that ties spread, and holds it. A zero target means
// the pool is closed.
func (p *pool) get() target {
	for {
		ip := p.insts.Load()
		if ip == nil {
			return target{}
		}
		insts := *ip
		best := insts[0]
		if n := len(insts); n > 1 {
			k := int(p.next.Add(1) % uint32(n))
			best = insts[k]
			for j := 1; j < n; j++ {
				if c := insts[(k+j)%n]; c.refs.Load() < best.refs.Load() {
					best = c
				}
			}
		}
		if best.tryHold() {
			return target{slot: best.slot, inst: best}
		}
		// A reload replaced it a moment ago: the new ones are in place.
	}
}

// close empties the pool. An instance no call uses ends before close
// returns; the others when their last call is over.
func (p *pool) close() {
	old := p.insts.Swap(nil)
	if old == nil {
		return
	}
	for _, i := range *old {
		if i.refs.Add(-1) == 0 {
			i.end()
		}
	}
}

// endAll ends instances that were never handed out.
func endAll(insts []*instance) {
	for _, i := range insts {
		i.done()
	}
}

// refusedModules are extension modules an isolated interpreter refuses
// before CPython tries them (see _NotIsolatable in host.py). On 3.12,
// those of the standard library that CPython would refuse only after
// running their init function in the isolated interpreter, which leaves
// state behind that crashes the process later (_decimal, _datetime). On
// 3.13, _datetime, which loads but ends the process with a bad free when
// a second interpreter that imported it ends. datetime and decimal fall
// back to their pure-Python versions.
var refusedModules = func() []string { // a variable: a test turns the guard off to show the crash it prevents
	switch pythonMinor() {
	case "3.12":
		return []string{"_ctypes", "_curses", "_curses_panel", "_datetime", "_decimal", "_elementtree",
			"_lsprof", "_tkinter", "faulthandler", "nis", "ossaudiodev", "pyexpat", "readline"}
	case "3.13":
		return []string{"_datetime"}
	}
	return nil
}

// isolationAvailable returns ErrNotIsolatable when the linked CPython has
// no interpreters with their own GIL.
func isolationAvailable() error {
	v := pythonMinor()
	var major, minor int
	if _, err := fmt.Sscanf(v, "%d.%d", &major, &minor); err != nil || major < 3 || (major == 3 && minor < 12) {
		return fmt.Errorf("%w: isolated interpreters need CPython 3.12 or later; this program runs CPython %s", ErrNotIsolatable, PythonVersion())
	}
	return nil
}

// newInterp makes an isolated interpreter and sets it up as the main one
// is, with the virtual environments the host added. refused asks CPython
// for a configuration it refuses (tests). On a pinned thread inside the
// gate.
func newInterp(refused bool) (*interp, error) {
	var r C.fidius_result
	flag := C.int(0)
	if refused {
		flag = 1
	}
	rt := C.fidius_rt_new(flag, &r)
	if rt == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotIsolatable, C.GoStringN(r.data, C.int(r.len)))
	}
	liveInstances.Add(1)
	// fidius_rt_new returns holding the new interpreter's GIL.
	in := &interp{rt: rt, turn: make(chan struct{}, 1)}
	err := in.setUp()
	if err == nil {
		err = in.replayVirtualEnvs()
	}
	if err == nil {
		b, _ := json.Marshal(refusedModules()) // a list, "null" for none
		names := fromC(C.fidius_decode_value((*C.char)(unsafe.Pointer(&b[0])), C.size_t(len(b)), &r))
		if res := in.isolate.call(names); res != nil {
			res.decRef()
		} else {
			err = takeImportError("<fidius-go>/host.py")
		}
		names.decRef()
	}
	if err != nil {
		in.dropHelpers()
		C.fidius_rt_end(rt)
		liveInstances.Add(-1)
		return nil, err
	}
	C.fidius_gil_release()
	return in, nil
}

// startInterp is newInterp on a pinned thread inside the gate.
func startInterp(refused bool) (*interp, error) {
	gate.enter(nil)
	runtime.LockOSThread()
	defer gate.leave()
	defer runtime.UnlockOSThread()
	return newInterp(refused)
}

// newInstance makes an interpreter and imports the plugin into it, as
// load does in the shared one.
func (p *plugin) newInstance(ctx context.Context) (*instance, *generation, error) {
	var (
		in  *interp
		err error
	)
	if in, err = startInterp(false); err != nil {
		return nil, nil, err
	}
	inst := &instance{in: in, slot: newSlot(p.dir, in.rt)}
	inst.refs.Store(1)
	if p.strict {
		inst.slot.strict = 1
	}
	var gen *generation
	ierr := importing(ctx, in, target{slot: inst.slot, inst: inst}, func() {
		if _, err = prependSysPath(p.dir); err != nil {
			return
		}
		gen, err = p.importTable(in)
	}, func(kept bool) {
		if err == nil && kept {
			inst.slot.tab = gen.tab
			setBinding(inst.slot, gen.binding)
		} else if gen != nil {
			C.fidius_table_free(gen.tab)
		}
	})
	if ierr == nil && err == nil {
		return inst, gen, nil
	}
	inst.done() // the import may still run in the background: it holds the instance too
	if ierr != nil {
		return nil, nil, fmt.Errorf("loading package %s: %w", p.dir, ierr)
	}
	return nil, nil, notIsolatable(err)
}

// startInstances makes n instances of the plugin, or none.
func (p *plugin) startInstances(ctx context.Context, n int) ([]*instance, *generation, error) {
	if err := isolationAvailable(); err != nil {
		return nil, nil, err
	}
	var (
		insts []*instance
		first *generation
	)
	for range n {
		inst, gen, err := p.newInstance(ctx)
		if err != nil {
			endAll(insts)
			return nil, nil, err
		}
		insts = append(insts, inst)
		if first == nil {
			first = gen
		}
	}
	return insts, first, nil
}

// refusal finds CPython's (and host.py's) refusal of an extension module
// in an isolated interpreter.
var refusal = regexp.MustCompile(`module (\S+) does not support loading in subinterpreters`)

// notIsolatable makes an import that failed on an extension module that
// cannot run isolated an ErrNotIsolatable naming the module; the
// *ImportError stays in the chain.
func notIsolatable(err error) error {
	var ie *ImportError
	if !errors.As(err, &ie) {
		return err
	}
	m := refusal.FindStringSubmatch(ie.Message)
	if m == nil {
		m = refusal.FindStringSubmatch(ie.Traceback)
	}
	if m == nil {
		return err
	}
	return fmt.Errorf("%w: extension module %s cannot be loaded in an isolated interpreter; load this plugin without WithIsolation, in the shared interpreter: %w",
		ErrNotIsolatable, strings.Trim(m[1], `'"`), err)
}

// loadIsolated is load for a plugin WithIsolation(n).
func (p *plugin) loadIsolated(ctx context.Context, n int) (*PluginHandle, error) {
	insts, gen, err := p.startInstances(ctx, n)
	if err != nil {
		return nil, err
	}
	p.logger.Info("loaded python plugin",
		zap.String("package", p.dir),
		zap.String("interface", p.desc.InterfaceName),
		zap.String("entry_module", p.entry),
		zap.Int("isolated_instances", n))
	h := &PluginHandle{plugin: p, pool: &pool{reloading: make(chan struct{}, 1)}}
	h.pool.insts.Store(&insts)
	h.present.Store(&gen.present)
	// A handle dropped without Close ends its interpreters.
	runtime.AddCleanup(h, func(p *pool) { go p.close() }, h.pool)
	return h, nil
}

// reloadIsolated is Reload for an isolated plugin: each instance imports
// the plugin again in its own interpreter, as the shared interpreter
// does; once all have, all switch, and if one fails, all keep the old
// code. The interpreters stay: CPython 3.12 and 3.13 do not give back the
// memory of one that ends, so fresh ones would make every reload cost it.
func (h *PluginHandle) reloadIsolated(ctx context.Context) error {
	p := h.plugin
	select {
	case h.pool.reloading <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-h.pool.reloading }()
	ip := h.pool.insts.Load()
	if ip == nil {
		return h.errClosed()
	}
	var insts []*instance
	for _, i := range *ip {
		if !i.tryHold() { // ended: Close came first
			endAll(insts)
			return h.errClosed()
		}
		insts = append(insts, i)
	}
	defer endAll(insts)
	type prepared struct {
		i     *instance
		saved *pyObject
		gen   *generation
	}
	var (
		ready   []prepared
		failure error
	)
	for _, i := range insts {
		var (
			saved *pyObject
			gen   *generation
			err   error
		)
		ierr := importing(ctx, i.in, target{slot: i.slot, inst: i}, func() {
			saved, gen, err = p.reimport(i.in)
		}, func(kept bool) {
			if err == nil && kept {
				return // switched, or undone, with the others below
			}
			if gen != nil {
				C.fidius_table_free(gen.tab)
			}
			if saved != nil {
				p.restoreModules(i.in, saved)
			}
			saved.decRef()
		})
		if ierr != nil {
			failure = fmt.Errorf("reloading package %s: %w", p.dir, ierr)
			break
		}
		if err != nil {
			failure = notIsolatable(err)
			break
		}
		ready = append(ready, prepared{i, saved, gen})
	}
	for _, r := range ready {
		r.i.in.withGIL(func() {
			if failure == nil {
				C.fidius_slot_swap(r.i.slot, r.gen.tab)
				setBinding(r.i.slot, r.gen.binding)
			} else {
				C.fidius_table_free(r.gen.tab)
				p.restoreModules(r.i.in, r.saved)
			}
			r.saved.decRef()
		})
	}
	if failure != nil {
		return failure
	}
	h.present.Store(&ready[0].gen.present)
	if h.closed.Load() {
		return h.errClosed()
	}
	p.logger.Info("reloaded python plugin", zap.String("package", p.dir), zap.String("entry_module", p.entry))
	return nil
}
