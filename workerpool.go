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
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"os"
	"path"
	"runtime"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// workerGrace is how long a cancelled call has to stop before its worker
// is killed: time for the plugin's finally blocks, and the bound on a
// deadline for code that never returns to Python (a C sleep, a long
// numpy operation).
const workerGrace = 500 * time.Millisecond

// workers is a handle's worker mode: the current pool, replaced whole by
// Reload.
type workers struct {
	mu      sync.Mutex
	cur     *workerPool
	binding binding
}

// workerPool is one generation of workers: n processes with one import of
// the plugin each.
type workerPool struct {
	p    *plugin
	cfg  workerConfig
	load []byte // the LOAD frame's payload

	idle    chan poolEntry // free workers, and failed starts to report
	done    chan struct{}  // closed by close
	mu      sync.Mutex
	closed  bool
	retired bool // closed by a Reload, not by Close: calls go to the new pool
	ready   workerReady
}

type poolEntry struct {
	w   *worker
	err error // a replacement that did not start
}

// errRetired is get's error on a pool a Reload replaced.
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
	wp, err := p.startPool(ctx, cfg, o.workers)
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
func (p *plugin) loadFrame() ([]byte, error) {
	l := workerLoad{Dir: []byte(p.dir), Entry: p.entry, Hash: p.desc.InterfaceHash, Strict: p.strict, Helpers: hostSource, Pycache: pycacheDir()}
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
func (p *plugin) startPool(ctx context.Context, cfg workerConfig, n int) (*workerPool, error) {
	load, err := p.loadFrame()
	if err != nil {
		return nil, err
	}
	wp := &workerPool{p: p, cfg: cfg, load: load, idle: make(chan poolEntry, n), done: make(chan struct{})}
	type started struct {
		w   *worker
		err error
	}
	results := make(chan started, n)
	for range n {
		go func() {
			w, err := startWorker(p, cfg, load)
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
		wp.idle <- poolEntry{w: w}
	}
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

// get hands out a free worker, waiting for one under ctx.
func (wp *workerPool) get(ctx context.Context) (*worker, error) {
	var e poolEntry
	select {
	case e = <-wp.idle:
	default:
		select {
		case e = <-wp.idle:
		case <-wp.done:
			return nil, wp.doneErr()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if e.err != nil {
		go wp.replace()
		return nil, fmt.Errorf("replacing a worker that ended: %w", e.err)
	}
	return e.w, nil
}

func (wp *workerPool) doneErr() error {
	wp.mu.Lock()
	defer wp.mu.Unlock()
	if wp.retired {
		return errRetired
	}
	return ErrClosed
}

// put takes a worker back after a call: a broken one is replaced, one
// of a closed pool stopped.
func (wp *workerPool) put(w *worker) {
	if w.isBroken() {
		w.stop()
		go wp.replace()
		return
	}
	wp.mu.Lock()
	if wp.closed {
		wp.mu.Unlock()
		w.stop()
		return
	}
	wp.idle <- poolEntry{w: w} // never blocks: at most n entries
	wp.mu.Unlock()
}

// replace starts a worker in place of one that ended.
func (wp *workerPool) replace() {
	w, err := startWorker(wp.p, wp.cfg, wp.load)
	if err != nil {
		wp.p.logger.Error("a worker could not be replaced", zap.String("package", wp.p.dir), zap.Error(err))
	}
	wp.mu.Lock()
	if wp.closed {
		wp.mu.Unlock()
		if w != nil {
			w.stop()
		}
		return
	}
	wp.idle <- poolEntry{w: w, err: err}
	wp.mu.Unlock()
}

// close stops the free workers before it returns; the busy ones stop as
// their calls end.
func (wp *workerPool) close() { wp.end(false) }

func (wp *workerPool) end(retire bool) {
	wp.mu.Lock()
	if wp.closed {
		wp.mu.Unlock()
		return
	}
	wp.closed, wp.retired = true, retire
	close(wp.done)
	var free []*worker
	for len(wp.idle) > 0 {
		if e := <-wp.idle; e.w != nil {
			free = append(free, e.w)
		}
	}
	wp.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range free {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.stop()
		}()
	}
	wg.Wait()
}

// pool returns the current pool.
func (wk *workers) pool() *workerPool {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.cur
}

// get hands out a free worker of the current pool, and that pool.
func (h *PluginHandle) getWorker(ctx context.Context) (*worker, *workerPool, error) {
	for {
		wp := h.wk.pool()
		w, err := wp.get(ctx)
		if err == errRetired {
			continue // a Reload put a new pool in place
		}
		if errors.Is(err, ErrClosed) {
			return nil, nil, h.errClosed()
		}
		return w, wp, err
	}
}

// conv is one call's conversation with its worker.
type conv struct {
	h    *PluginHandle
	m    *MethodDesc
	i    int // m's index
	w    *worker
	wp   *workerPool
	n    uint64 // the call's number in the worker
	in   *feed  // a client or bidirectional stream's input, or nil
	live bool   // a stream is open in the worker
	item []byte // the answer to a pull
	// cancelled is set once the caller's ctx ended: host functions and
	// fed items are refused from then on.
	cancelled chan struct{}
	once      sync.Once
}

// converse sends one frame and reads until the answer, serving the host
// calls and input pulls the plugin makes meanwhile. A successful answer's
// payload is appended to into; an error is the call's.
func (c *conv) converse(kind, flags byte, payload []byte, into []byte) (frame, []byte, error) {
	w := c.w
	if err := w.send(kind, flags, uint16(c.i), payload); err != nil {
		return frame{}, into, w.lost(err)
	}
	for {
		f, out, err := w.read(into)
		if err != nil {
			return f, into, w.lost(err)
		}
		body := out[len(into):]
		switch f.kind {
		case fOK, fItem, fEnd, fDone:
			return f, out, nil
		case fHostCall:
			err = w.send(c.hostCall(body))
		case fPull:
			err = w.send(c.pull(), 0, 0, c.item)
		case fPluginErr:
			return f, into, c.in.hostErrorOrNot(c.m, pluginErrorFrame(body))
		case fOutputErr:
			return f, into, fmt.Errorf("%w from method %q: %s", ErrOutputEncode, c.m.Name, body)
		case fInputErr:
			return f, into, fmt.Errorf("%w for method %q: %s", ErrInputDecode, c.m.Name, body)
		case fCancelled:
			return f, into, context.Canceled // replaced by the ctx's own error
		default:
			w.kill(fmt.Sprintf("it sent a frame of unknown kind %d", f.kind))
			return f, into, w.lost(err)
		}
		if err != nil {
			return f, into, w.lost(err)
		}
	}
}

// hostCall runs a host function the plugin called: [interface, function,
// args].
func (c *conv) hostCall(body []byte) (byte, byte, uint16, []byte) {
	var req [3]json.RawMessage
	var iface, fn string
	if json.Unmarshal(body, &req) != nil || json.Unmarshal(req[0], &iface) != nil || json.Unmarshal(req[1], &fn) != nil {
		out, _ := json.Marshal(map[string]string{"code": "HOST_ERROR", "message": "malformed host call"})
		return fHostErr, 0, 0, out
	}
	select {
	case <-c.cancelled:
		out, _ := json.Marshal(map[string]string{"code": "CANCELLED", "message": "the call's context ended"})
		return fHostErr, 0, 0, out
	default:
	}
	out, ok := c.h.wk.binding.call(iface, fn, req[2])
	if !ok {
		return fHostErr, 0, 0, out
	}
	return fHostOK, 0, 0, out
}

// pull answers a fed stream's next(): its kind, with the item or the
// error message left in c.item.
func (c *conv) pull() byte {
	c.item = nil
	if c.in == nil {
		return fFeedEnd
	}
	select {
	case <-c.cancelled:
		return fFeedEnd // once ctx ends, the plugin gets no more items
	default:
	}
	item, status := c.in.next()
	switch status {
	case 0:
		return fFeedEnd
	case -1:
		c.item = item
		return fFeedErr
	}
	c.item = item // checked by the worker, which knows its count
	return fFeed
}

// pluginErrorFrame decodes a PLUGIN_ERR payload: code and message
// lengths (u32 each), code, message, details JSON.
func pluginErrorFrame(b []byte) error {
	if len(b) < 8 {
		return &PluginError{Code: "WorkerProtocol", Message: "malformed error frame"}
	}
	n1, n2 := int(binary.LittleEndian.Uint32(b)), int(binary.LittleEndian.Uint32(b[4:]))
	b = b[8:]
	if n1+n2 > len(b) {
		return &PluginError{Code: "WorkerProtocol", Message: "malformed error frame"}
	}
	e := &PluginError{Code: string(b[:n1]), Message: string(b[n1 : n1+n2])}
	if d := b[n1+n2:]; len(d) > 0 && string(d) != "null" {
		e.Details = json.RawMessage(append([]byte(nil), d...))
	}
	return e
}

// hostErrorOrNot is hostError for a call with a host-fed stream.
func (f *feed) hostErrorOrNot(m *MethodDesc, err error) error {
	if f == nil {
		return err
	}
	return f.hostError(m, err)
}

// start begins a call: a free worker, and its number there.
func (h *PluginHandle) startConv(ctx context.Context, i int, m *MethodDesc) (*conv, error) {
	w, wp, err := h.getWorker(ctx)
	if err != nil {
		return nil, err
	}
	w.calls++
	return &conv{h: h, m: m, i: i, w: w, wp: wp, n: w.calls, cancelled: make(chan struct{})}, nil
}

// run runs f, one exchange of the conversation: on the caller's
// goroutine under a ctx that cannot end, else on a goroutine of its own
// that the caller leaves when ctx ends. Then the call is cancelled in the
// worker, which is killed if it has not answered within workerGrace, and
// the conversation is finished in the background. run reports whether
// the caller may go on.
func (c *conv) run(ctx context.Context, f func()) bool {
	if ctx.Done() == nil {
		f()
		return true
	}
	done := make(chan struct{})
	go func() {
		f()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
	}
	c.once.Do(func() { close(c.cancelled) })
	if c.in != nil {
		go c.in.stop() // an items blocked in a send must not hold up the kill
	}
	c.w.cancelCall(c.n)
	go func() {
		t := time.NewTimer(workerGrace)
		select {
		case <-done:
		case <-t.C:
			c.w.kill(fmt.Sprintf("its call of method %q did not stop within %v of its context ending", c.m.Name, workerGrace))
			<-done
		}
		t.Stop()
		c.finish()
	}()
	return false
}

// finish closes a stream the worker still has open, and hands the worker
// back.
func (c *conv) finish() {
	if c.live && !c.w.isBroken() {
		c.live = false
		t := time.AfterFunc(workerGrace, func() {
			c.w.kill(fmt.Sprintf("closing the stream of method %q took longer than %v", c.m.Name, workerGrace))
		})
		f, _, err := c.converse(fStop, 0, nil, nil)
		for err == nil && f.kind != fDone {
			// An item the stream produced as the caller left: dropped.
			f, _, err = c.converse(fStop, 0, nil, nil)
		}
		t.Stop()
	}
	if c.in != nil {
		c.in.stop()
		c.in.forget()
	}
	c.wp.put(c.w)
}

// workerCall is a unary call (typed, raw, or client-streaming) in worker
// mode.
func (h *PluginHandle) workerCall(ctx context.Context, i int, m *MethodDesc, kind callKind, dst, input []byte, items iter.Seq2[json.RawMessage, error]) ([]byte, error) {
	if kind != rawCall {
		if err := checkInput(m, input); err != nil {
			return dst, err
		}
	}
	c, err := h.startConv(ctx, i, m)
	if err != nil {
		return dst, err
	}
	fk := fCall
	switch kind {
	case rawCall:
		fk = fRaw
	case clientStreamCall:
		fk = fClient
		c.in = newFeed(items)
	}
	var out []byte
	if !c.run(ctx, func() {
		var f frame
		f, out, err = c.converse(fk, 0, input, dst)
		if err == nil && f.kind != fOK {
			err = c.unexpected(f)
		}
	}) {
		return dst, h.interrupted(m, ctx)
	}
	if err == context.Canceled {
		err = h.interrupted(m, ctx)
	}
	if out == nil && err == nil {
		out = []byte{}
	}
	c.finish()
	if err != nil {
		return dst, err
	}
	return out, nil
}

// unexpected ends a conversation that is out of step.
func (c *conv) unexpected(f frame) error {
	c.w.kill(fmt.Sprintf("it answered with a frame of kind %d", f.kind))
	return c.w.lost(errors.New("protocol out of step"))
}

// workerStream runs a server or bidirectional stream in worker mode.
func (h *PluginHandle) workerStream(ctx context.Context, i int, m *MethodDesc, input []byte, items iter.Seq2[json.RawMessage, error], yield func(json.RawMessage, error) bool) {
	if err := checkInput(m, input); err != nil {
		yield(nil, err)
		return
	}
	c, err := h.startConv(ctx, i, m)
	if err != nil {
		yield(nil, err)
		return
	}
	var flags byte
	if items != nil {
		flags = 1
		c.in = newFeed(items)
	}
	if !c.run(ctx, func() {
		var f frame
		if f, _, err = c.converse(fStream, flags, input, nil); err == nil {
			if f.kind != fOK {
				err = c.unexpected(f)
			} else {
				c.live = true
			}
		}
	}) {
		yield(nil, h.interrupted(m, ctx))
		return
	}
	for err == nil {
		var (
			f    frame
			item []byte
		)
		if !c.run(ctx, func() {
			f, item, err = c.converse(fNext, 0, nil, nil)
			if err != nil || f.kind == fEnd {
				c.live = false
			}
		}) {
			yield(nil, h.interrupted(m, ctx))
			return
		}
		if err != nil || f.kind == fEnd {
			break
		}
		if f.kind != fItem {
			c.live = false
			err = c.unexpected(f)
			break
		}
		if item == nil {
			item = []byte{}
		}
		if !yield(item, nil) {
			c.finish()
			return
		}
	}
	if err == context.Canceled {
		err = h.interrupted(m, ctx)
	}
	c.finish()
	if err != nil {
		yield(nil, err)
	}
}

// checkInput refuses typed input that is not one strict JSON value nested
// at most maxDepth levels: nothing reaches the worker.
func checkInput(m *MethodDesc, input []byte) error {
	if len(input) == 0 {
		return nil
	}
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, b := range input {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case b == '\\':
				escaped = true
			case b == '"':
				inString = false
			}
		case b == '"':
			inString = true
		case b == '[' || b == '{':
			depth++
			deepest = max(deepest, depth)
		case b == ']' || b == '}':
			depth--
		}
	}
	if deepest > maxDepth {
		return fmt.Errorf("%w for method %q: JSON nests deeper than %d levels", ErrInputDecode, m.Name, maxDepth)
	}
	if !json.Valid(input) {
		var v any
		err := json.Unmarshal(input, &v)
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			// Offset counts the bytes read, the bad one included.
			return fmt.Errorf("%w for method %q: offset %d: %v", ErrInputDecode, m.Name, syn.Offset-1, err)
		}
		return fmt.Errorf("%w for method %q: %v", ErrInputDecode, m.Name, err)
	}
	return nil
}

// maxDepth is how deep a value may nest, each way (FIDIUS_MAX_DEPTH).
const maxDepth = 1000

// reloadWorkers is Reload in worker mode: a new pool is started and
// loaded; if every worker loads, calls go to it from then on, and the old
// pool's workers stop as their calls end. No call fails for the reload.
func (h *PluginHandle) reloadWorkers(ctx context.Context) error {
	old := h.wk.pool()
	wp, err := h.plugin.startPool(ctx, old.cfg, cap(old.idle))
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
	h.plugin.logger.Info("reloaded python plugin", zap.String("package", h.plugin.dir), zap.Int("workers", cap(wp.idle)))
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
	var pids []int
	wp.mu.Lock()
	defer wp.mu.Unlock()
	for range len(wp.idle) {
		e := <-wp.idle
		if e.w != nil {
			pids = append(pids, e.w.pid)
		}
		wp.idle <- e
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
