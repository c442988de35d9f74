// This file owns worker mode's side of the handle: loading a plugin into
// worker processes, the pool that hands a free worker to each call and
// replaces the ones that end, calls and streams as frames, cancellation
// by signal with a kill after a grace period, the rolling Reload and
// Close.

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
	"io/fs"
	"os"
	"path"
	"runtime"
	"strings"
	"sync"

	"go.uber.org/zap"
)

// workers is a handle's worker mode: the current pool, replaced whole by
// Reload.
type workers struct {
	mu      sync.Mutex
	cur     *workerPool
	binding binding
}

// workerPool is one generation of workers: size processes with one import
// of the plugin each. A worker runs one exchange at a time (a unary call,
// or one step of a stream); an open stream stays with its worker, which
// serves other calls between the stream's steps. While an exchange waits
// for Go (a host function, an item of a host-fed stream), its worker is
// lent back to the pool, so that a call the host function makes into the
// plugin can run there, nested, as it would in-process.
type workerPool struct {
	p    *plugin
	cfg  workerConfig
	load []byte // the LOAD frame's payload
	size int

	mu      sync.Mutex
	free    []*worker
	waiters []*waiter
	failed  []error // replacements that did not start, reported to callers
	closed  bool
	retired bool // closed by a Reload, not by Close: new calls go to the new pool
	ready   workerReady

	// stopping ends with the pool: a replacement still loading is killed.
	stopping context.Context
	stop     context.CancelFunc
}

// waiter is a call waiting for a worker: a given one, or any; or ret,
// an exchange that lent its worker and takes it back.
type waiter struct {
	want *worker
	ret  *conv
	ch   chan poolEntry // one slot
}

type poolEntry struct {
	w   *worker
	err error
}

// errRetired is acquire's error on a pool a Reload replaced.
var errRetired = errors.New("fidius: worker pool replaced by a reload")

// loadWorkers loads the plugin into n worker processes.
func (p *plugin) loadWorkers(ctx context.Context, o loadOptions) (*PluginHandle, error) {
	cfg := workerConfig{python: o.python, memory: o.memory}
	if cfg.python == "" {
		py, err := linkedPython()
		if err != nil {
			return nil, err
		}
		cfg.python = py
	}
	wp, err := p.startPool(ctx, cfg, o.workers, false)
	if err != nil {
		return nil, fmt.Errorf("loading package %s: %w", p.dir, err)
	}
	b, err := wp.binding()
	if err != nil {
		wp.close()
		return nil, err
	}
	h := &PluginHandle{plugin: p, wk: &workers{cur: wp, binding: b}}
	h.present.Store(&wp.ready.Present)
	// A handle dropped without Close must not leave processes behind.
	cleanupWorkers(h)
	p.logger.Info("loaded python plugin",
		zap.String("package", p.dir),
		zap.String("interface", p.desc.InterfaceName),
		zap.String("entry_module", p.entry),
		zap.Int("workers", o.workers),
		zap.String("python", cfg.python))
	return h, nil
}

// binding checks the host interfaces the plugin imports.
func (wp *workerPool) binding() (binding, error) {
	if wp.ready.Imports == nil {
		return nil, nil
	}
	return wp.p.bindJSON([]byte(*wp.ready.Imports))
}

// loadFrame is the payload of the LOAD frame for p.
func (p *plugin) loadFrame(reload bool) ([]byte, error) {
	l := workerLoad{Dir: []byte(p.dir), Entry: p.entry, Hash: p.desc.InterfaceHash, Strict: p.strict, Helpers: hostSource, Pycache: pycacheDir(), Reload: reload}
	for _, m := range p.desc.Methods {
		l.Methods = append(l.Methods, [2]any{m.Name, m.Optional})
	}
	if p.config != nil {
		c := string(p.config)
		l.Config = &c
	}
	l.NoBytecode = os.Getenv("PYTHONDONTWRITEBYTECODE") != ""
	if shared != nil {
		shared.withGIL(func() {
			if o := sysGet("dont_write_bytecode"); o != nil {
				l.NoBytecode = C.PyObject_IsTrue(toC(o)) == 1
			}
		})
	}
	var err error
	if l.SDK, err = sdkSourceMap(); err != nil {
		return nil, err
	}
	return json.Marshal(l)
}

// sdkSourceMap is {module name: [is_package, source]} of the embedded SDK.
func sdkSourceMap() (map[string][2]any, error) {
	sources := map[string][2]any{}
	err := fs.WalkDir(sdkFiles, "python", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		src, err := sdkFiles.ReadFile(p)
		if err != nil {
			return err
		}
		mod := strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(p, "python/"), ".py"), "/", ".")
		isPkg := path.Base(p) == "__init__.py"
		if isPkg {
			mod = strings.TrimSuffix(mod, ".__init__")
		}
		sources[mod] = [2]any{isPkg, string(src)}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: embedded SDK: %v", ErrImportFailed, err)
	}
	return sources, nil
}

// startPool starts n workers at once. Under a ctx that ends first, the
// ones started are stopped and the error is ctx's.
func (p *plugin) startPool(ctx context.Context, cfg workerConfig, n int, reload bool) (*workerPool, error) {
	load, err := p.loadFrame(reload)
	if err != nil {
		return nil, err
	}
	wp := &workerPool{p: p, cfg: cfg, load: load, size: n}
	wp.stopping, wp.stop = context.WithCancel(context.Background())
	type started struct {
		w   *worker
		err error
	}
	results := make(chan started, n)
	for range n {
		go func() {
			w, err := startWorker(ctx, p, cfg, load)
			results <- started{w, err}
		}()
	}
	var (
		got      []*worker
		firstErr error
	)
	collect := func(r started) {
		if r.err != nil {
			if firstErr == nil || errors.Is(firstErr, ErrWorkerCrashed) && !errors.Is(r.err, ErrWorkerCrashed) {
				firstErr = r.err // a load error says more than a crash
			}
		} else {
			got = append(got, r.w)
		}
	}
	for i := 0; i < n; i++ {
		select {
		case r := <-results:
			collect(r)
		case <-ctx.Done():
			left := n - i
			go func() {
				for range left {
					if r := <-results; r.w != nil {
						r.w.stop()
					}
				}
			}()
			for _, w := range got {
				w.stop()
			}
			return nil, ctx.Err()
		}
	}
	if firstErr != nil {
		for _, w := range got {
			w.stop()
		}
		return nil, firstErr
	}
	wp.ready = got[0].ready
	for _, w := range got {
		w.pool = wp
	}
	wp.free = got
	return wp, nil
}

// linkedPython is the Python program of the CPython this program is
// linked with: the embedded interpreter's sys.executable.
func linkedPython() (string, error) {
	if err := ensureInterpreter(); err != nil {
		return "", err
	}
	var exe string
	shared.withGIL(func() { exe = sysExecutable() })
	if exe == "" {
		return "", fmt.Errorf("%w: no python program found for the linked CPython %s; name one with WithInterpreter", ErrWorkerCrashed, PythonVersion())
	}
	return exe, nil
}

// acquire hands out a worker to run one exchange: want, or any free
// worker when want is nil, waiting under ctx. With ret, it is the
// exchange ret taking back the worker it lent, which it gets only once
// every exchange that started in the worker since has ended: the worker
// runs them nested in ret's, and answers ret's question last.
func (wp *workerPool) acquire(ctx context.Context, want *worker, ret *conv) (*worker, error) {
	wp.mu.Lock()
	if want == nil {
		if wp.closed {
			// Its free workers are those still in use: holding a
			// stream, or lent by a call waiting for Go.
			wp.mu.Unlock()
			return nil, wp.doneErr()
		}
		for len(wp.free) > 0 {
			i := wp.pickLocked()
			w := wp.free[i]
			wp.free = append(wp.free[:i], wp.free[i+1:]...)
			if w.isBroken() {
				wp.dropLocked(w) // it ended while free: nobody's call failed
				continue
			}
			w.held = true
			wp.mu.Unlock()
			return w, nil
		}
		if len(wp.failed) > 0 {
			err := wp.failed[0]
			wp.failed = wp.failed[1:]
			wp.mu.Unlock()
			go wp.replace()
			return nil, fmt.Errorf("replacing a worker that ended: %w", err)
		}
	} else if !want.held && !want.gone && (ret == nil || want.lentTo(ret)) {
		wp.takeLocked(want)
		if ret != nil {
			want.lent = want.lent[:len(want.lent)-1]
		}
		wp.mu.Unlock()
		return want, nil
	} else if want.gone {
		wp.mu.Unlock()
		return nil, want.crash()
	}
	wt := &waiter{want: want, ret: ret, ch: make(chan poolEntry, 1)}
	wp.waiters = append(wp.waiters, wt)
	wp.mu.Unlock()
	select {
	case e := <-wt.ch:
		return e.w, e.err
	case <-ctx.Done():
	}
	wp.mu.Lock()
	for i, x := range wp.waiters {
		if x == wt {
			wp.waiters = append(wp.waiters[:i], wp.waiters[i+1:]...)
			wp.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	wp.mu.Unlock()
	if e := <-wt.ch; e.w != nil { // handed over as ctx ended
		wp.release(e.w)
	}
	return nil, ctx.Err()
}

// pickLocked chooses the free worker a new call gets: the most recently
// used of those in no use at all, else of those only holding a stream
// open, else one lent by a call waiting for Go. A call that goes into a
// lent worker runs nested in the lender's wait, and the lender cannot
// take its worker back until it ends: right for a call the host function
// makes, but an unrelated call there delays the lender, or deadlocks
// with it if it waits for the lender (in-process, they would run on two
// threads). Likewise a stream's next step waits for a call that went
// into its worker. mu held; free is not empty.
func (wp *workerPool) pickLocked() int {
	best, rank := len(wp.free)-1, 3
	for i := len(wp.free) - 1; i >= 0 && rank > 0; i-- {
		w := wp.free[i]
		r := 0
		switch {
		case len(w.lent) > 0:
			r = 2
		case w.streams > 0:
			r = 1
		}
		if r < rank {
			best, rank = i, r
		}
	}
	return best
}

func (wp *workerPool) doneErr() error {
	if wp.retired {
		return errRetired
	}
	return ErrClosed
}

// takeLocked marks a free worker held. mu held.
func (wp *workerPool) takeLocked(w *worker) {
	for i, x := range wp.free {
		if x == w {
			wp.free = append(wp.free[:i], wp.free[i+1:]...)
			break
		}
	}
	w.held = true
}

// release takes a worker back after an exchange, and hands it to the
// first call waiting for it.
func (wp *workerPool) release(w *worker) {
	wp.mu.Lock()
	w.held = false
	if w.isBroken() {
		wp.dropLocked(w)
		wp.mu.Unlock()
		return
	}
	if wp.handLocked(w) {
		wp.mu.Unlock()
		return
	}
	if wp.closed && !w.busy() {
		w.gone = true
		wp.mu.Unlock()
		w.stop()
		return
	}
	wp.free = append(wp.free, w)
	wp.mu.Unlock()
}

// busy reports whether a worker that no exchange holds is still in use:
// a stream is open in it, or a call lent it while it waits for Go and
// will take it back. A closed pool stops its workers once they are not.
// mu held.
func (w *worker) busy() bool {
	return w.streams > 0 || len(w.lent) > 0
}

// handLocked gives w to the exchange taking it back, if its nested ones
// are over, else to the first waiter that wants it or any worker. mu
// held.
func (wp *workerPool) handLocked(w *worker) bool {
	pick := -1
	for i, wt := range wp.waiters {
		if wt.ret != nil && wt.want == w && w.lentTo(wt.ret) {
			pick = i
			w.lent = w.lent[:len(w.lent)-1]
			break
		}
	}
	for i, wt := range wp.waiters {
		if pick >= 0 {
			break
		}
		if wt.ret == nil && (wt.want == w || wt.want == nil && !wp.closed) {
			pick = i
		}
	}
	if pick < 0 {
		return false
	}
	wt := wp.waiters[pick]
	wp.waiters = append(wp.waiters[:pick], wp.waiters[pick+1:]...)
	w.held = true
	wt.ch <- poolEntry{w: w}
	return true
}

// lend hands back a worker whose exchange c waits for Go: it takes it
// back with acquire(ctx, w, c).
func (wp *workerPool) lend(w *worker, c *conv) {
	wp.mu.Lock()
	w.lent = append(w.lent, c)
	wp.mu.Unlock()
	wp.release(w)
}

// dropLocked removes a worker that ended: the calls waiting for it get
// its crash, and a replacement starts. mu held.
func (wp *workerPool) dropLocked(w *worker) {
	if w.gone {
		return
	}
	w.gone = true
	for i := 0; i < len(wp.waiters); i++ {
		if wt := wp.waiters[i]; wt.want == w {
			wp.waiters = append(wp.waiters[:i], wp.waiters[i+1:]...)
			i--
			wt.ch <- poolEntry{err: w.crash()}
		}
	}
	go w.crash() // reaps it and closes its socket, if no call did
	if !wp.closed {
		go wp.replace()
	}
}

// streamEnded notes that a stream open on w has ended; a worker of a
// closed pool stops once its last stream has.
func (wp *workerPool) streamEnded(w *worker) {
	wp.mu.Lock()
	w.streams--
	if wp.closed && !w.busy() && !w.held && !w.gone {
		wp.takeLocked(w)
		w.gone = true
		wp.mu.Unlock()
		w.stop()
		return
	}
	wp.mu.Unlock()
}

// replace starts a worker in place of one that ended.
func (wp *workerPool) replace() {
	w, err := startWorker(wp.stopping, wp.p, wp.cfg, wp.load)
	wp.mu.Lock()
	if err != nil && !wp.closed {
		wp.p.logger.Error("a worker could not be replaced", zap.String("package", wp.p.dir), zap.Error(err))
	}
	if wp.closed {
		wp.mu.Unlock()
		if w != nil {
			w.stop()
		}
		return
	}
	if err != nil {
		for i, wt := range wp.waiters {
			if wt.want == nil {
				wp.waiters = append(wp.waiters[:i], wp.waiters[i+1:]...)
				wt.ch <- poolEntry{err: fmt.Errorf("replacing a worker that ended: %w", err)}
				wp.mu.Unlock()
				go wp.replace()
				return
			}
		}
		wp.failed = append(wp.failed, err)
		wp.mu.Unlock()
		return
	}
	w.pool = wp
	if !wp.handLocked(w) {
		wp.free = append(wp.free, w)
	}
	wp.mu.Unlock()
}

// close stops the free workers before it returns; the busy ones stop when
// their exchanges and streams end.
func (wp *workerPool) close() { wp.end(false) }

func (wp *workerPool) end(retire bool) {
	wp.mu.Lock()
	if wp.closed {
		wp.mu.Unlock()
		return
	}
	wp.closed, wp.retired = true, retire
	wp.stop() // replacements still loading
	for i := 0; i < len(wp.waiters); i++ {
		if wt := wp.waiters[i]; wt.want == nil {
			wp.waiters = append(wp.waiters[:i], wp.waiters[i+1:]...)
			i--
			wt.ch <- poolEntry{err: wp.doneErr()}
		}
	}
	var idle []*worker
	kept := wp.free[:0]
	for _, w := range wp.free {
		if !w.busy() {
			w.gone = true
			idle = append(idle, w)
		} else {
			kept = append(kept, w)
		}
	}
	wp.free = kept
	wp.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.stop()
		}()
	}
	wg.Wait()
}

// hostBinding returns the host interfaces the current code imports.
func (wk *workers) hostBinding() binding {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.binding
}

// pool returns the current pool.
func (wk *workers) pool() *workerPool {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.cur
}

// reloadWorkers is Reload in worker mode: a new pool is started and
// loaded; if every worker loads, calls go to it from then on, and the old
// pool's workers stop as their calls end. No call fails for the reload.
func (h *PluginHandle) reloadWorkers(ctx context.Context) error {
	old := h.wk.pool()
	wp, err := h.plugin.startPool(ctx, old.cfg, old.size, true)
	if err != nil {
		return fmt.Errorf("reloading package %s: %w", h.plugin.dir, err)
	}
	b, err := wp.binding()
	if err != nil {
		wp.close()
		return err
	}
	h.wk.mu.Lock()
	if h.closed.Load() {
		h.wk.mu.Unlock()
		wp.close()
		return h.errClosed()
	}
	h.wk.cur, h.wk.binding = wp, b
	h.present.Store(&wp.ready.Present)
	h.wk.mu.Unlock()
	old.end(true)
	h.plugin.logger.Info("reloaded python plugin", zap.String("package", h.plugin.dir), zap.Int("workers", wp.size))
	return nil
}

// closeWorkers is Close in worker mode.
func (h *PluginHandle) closeWorkers() {
	h.wk.mu.Lock()
	wp := h.wk.cur
	h.wk.mu.Unlock()
	wp.close()
}

// workerPids lists the handle's worker processes that are free (tests).
func (h *PluginHandle) workerPids() []int {
	wp := h.wk.pool()
	wp.mu.Lock()
	defer wp.mu.Unlock()
	var pids []int
	for _, w := range wp.free {
		pids = append(pids, w.pid)
	}
	return pids
}

// workerLoadError turns a worker's LOAD_ERR into the error the
// in-process loader gives for the same package.
func (p *plugin) workerLoadError(b []byte) error {
	var e struct {
		E, Func, Type, Message, Traceback, What, Method, Why string
		Got                                                  uint64
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return fmt.Errorf("%w: the worker's load report is malformed: %v", ErrImportFailed, err)
	}
	switch e.E {
	case "import":
		return &ImportError{Module: p.entry, Func: e.Func, Type: e.Type, Message: e.Message, Traceback: strings.TrimRight(e.Traceback, "\n")}
	case "no_hash":
		return errNoHash(p.entry)
	case "bad_hash":
		return errHashNotU64(p.entry, e.What)
	case "hash":
		return &HashMismatchError{Interface: p.desc.InterfaceName, Got: e.Got, Expected: p.desc.InterfaceHash}
	case "host_imports":
		return p.badImports("%s is not plain data: %v", hostImportsAttr, e.Why)
	case "no_configure":
		return errNoConfigure(p.entry)
	case "not_defined":
		return fmt.Errorf("%w: method %q of interface %q is not defined in module %q",
			ErrMethodNotRegistered, e.Method, p.desc.InterfaceName, p.entry)
	case "not_callable":
		return fmt.Errorf("%w: method %q of interface %q in module %q is not callable (it is a %s)",
			ErrMethodNotRegistered, e.Method, p.desc.InterfaceName, p.entry, e.Type)
	}
	return fmt.Errorf("%w: the worker's load report is malformed: %s", ErrImportFailed, b)
}

// cleanupWorkers stops a handle's workers once the handle is unreachable,
// so that one dropped without Close leaves no process behind.
func cleanupWorkers(h *PluginHandle) {
	runtime.AddCleanup(h, func(wk *workers) { go wk.pool().close() }, h.wk)
}
