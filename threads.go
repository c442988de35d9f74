// This file owns the OS threads the library uses: the thread that started
// Python (kept, and never running plugin code), the one thread that
// cancels calls, and the gate that bounds how many threads are inside
// Python at once, so that waiting callers park as goroutines.

package fidius

/*
#include "fidius.h"
*/
import "C"

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// SetThreadLimit sets how many OS threads may be inside Python for the
// library at once, and returns the previous limit. Only one of them holds
// the GIL at a time; the others wait for it or run C code that released it
// (time.sleep, I/O, numpy), so a host whose plugins mostly wait on I/O may
// want more. Callers beyond the limit wait as goroutines, and a caller
// whose context ends while it waits returns at once. n < 1 means 1.
func SetThreadLimit(n int) int {
	return gate.setLimit(max(n, 1))
}

// gate is a counting semaphore whose waiters can give up when their
// context ends. Taking and giving back a free place is a few atomic
// operations (it is on every call's path); the mutex and the FIFO of
// channels are only for waiting.
var gate = newThreadGate(DefaultThreadLimit)

type threadGate struct {
	inUse   atomic.Int32
	limit   atomic.Int32
	waiting atomic.Int32 // len(waiters), readable without mu

	mu      sync.Mutex
	waiters []chan struct{}
}

func newThreadGate(limit int) *threadGate {
	g := &threadGate{}
	g.limit.Store(int32(limit))
	return g
}

func (g *threadGate) setLimit(n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.limit.Swap(int32(n))
	g.wakeLocked()
	return int(old)
}

// tryEnter takes a free place if there is one and nobody waits for it.
func (g *threadGate) tryEnter() bool {
	for g.waiting.Load() == 0 {
		n := g.inUse.Load()
		if n >= g.limit.Load() {
			return false
		}
		if g.inUse.CompareAndSwap(n, n+1) {
			return true
		}
	}
	return false
}

// take takes a free place, waiters or not.
func (g *threadGate) take() bool {
	for {
		n := g.inUse.Load()
		if n >= g.limit.Load() {
			return false
		}
		if g.inUse.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// wakeLocked hands free places to waiters, in order.
func (g *threadGate) wakeLocked() {
	for len(g.waiters) > 0 && g.take() {
		close(g.waiters[0])
		g.waiters = g.waiters[1:]
	}
	g.waiting.Store(int32(len(g.waiters)))
}

// enter takes a place, waiting as a goroutine while there is none. It
// returns false, holding nothing, if done is closed first.
func (g *threadGate) enter(done <-chan struct{}) bool {
	if g.tryEnter() {
		return true
	}
	w := make(chan struct{})
	g.mu.Lock()
	g.waiters = append(g.waiters, w)
	// Published before trying again: a place given back from now on sees
	// a waiter to wake, and one given back before is taken here.
	g.waiting.Store(int32(len(g.waiters)))
	g.wakeLocked()
	g.mu.Unlock()
	select {
	case <-w:
		return true
	case <-done:
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, x := range g.waiters {
		if x == w {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
			g.waiting.Store(int32(len(g.waiters)))
			return false
		}
	}
	// Given a place just as done closed: pass it on.
	g.inUse.Add(-1)
	g.wakeLocked()
	return false
}

// reenter takes a place back for a thread that left the gate in the
// middle of a call (a host function) and returns to it, waiting for
// nothing, even if that puts the gate over its limit for a while: the
// code it returns to may hold a lock that the thread now holding its
// place waits for.
func (g *threadGate) reenter() { g.inUse.Add(1) }

func (g *threadGate) leave() {
	g.inUse.Add(-1)
	if g.waiting.Load() > 0 {
		g.mu.Lock()
		g.wakeLocked()
		g.mu.Unlock()
	}
}

// withGILOf runs f on a pinned OS thread holding the GIL of interpreter
// rt, with that thread's kept Python thread state in it, taking a place at
// the gate. f must not wait on anything that itself needs that GIL.
func withGILOf(rt *C.fidius_rt, f func()) {
	gate.enter(nil)
	runtime.LockOSThread()
	C.fidius_gil_acquire(rt)
	defer func() {
		C.fidius_gil_release()
		runtime.UnlockOSThread()
		gate.leave()
	}()
	f()
}

// pythonMainThread starts the interpreter and then keeps its thread for
// ever, doing nothing. Python's "main thread" is the one that started it:
// only there does signal.signal install a handler, and a handler installed
// there would replace Go's. Since no plugin code ever runs on this thread,
// signal.signal in a plugin always fails with ValueError, and Go keeps its
// signals. The goroutine stays locked to the thread, so the thread is
// never reused or ended (a new thread could otherwise get its id).
func pythonMainThread(started chan<- error) {
	runtime.LockOSThread()
	started <- startInterpreter()
	select {}
}

// cancellation is one cancellable call's (or stream's) control block and
// its registration with ctx.
type cancellation struct {
	ctl  *C.fidius_ctl // C memory; C keeps no Go pointer
	rt   *C.fidius_rt  // the interpreter the call runs in, whose GIL guards ctl
	inst *instance     // an isolated call's instance, kept alive while ctl may be used
	stop func() bool
	// refs counts who may still use ctl: the call, and the canceller once
	// ctx has ended. The last to let go puts ctl back.
	refs atomic.Int32
}

func newCancellation(ctx context.Context, t target) *cancellation {
	c := &cancellation{ctl: ctls.get(), rt: t.slot.rt, inst: t.inst}
	t.inst.hold()
	c.refs.Store(2)
	c.stop = context.AfterFunc(ctx, func() { canceller.send(c) })
	return c
}

// free lets go of the control block for the call. If ctx has ended, the
// canceller may still have it; then the canceller puts it back.
func (c *cancellation) free() {
	if c.stop() {
		ctls.put(c.ctl) // the canceller will never see it
		c.inst.done()
		return
	}
	c.release()
}

func (c *cancellation) release() {
	if c.refs.Add(-1) == 0 {
		ctls.put(c.ctl)
		c.inst.done()
	}
}

// ctls keeps control blocks for reuse: making and freeing C memory would
// cost two more cgo crossings per call.
var ctls ctlPool

type ctlPool struct {
	mu   sync.Mutex
	free []*C.fidius_ctl
}

func (p *ctlPool) get() *C.fidius_ctl {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		ctl := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return ctl
	}
	p.mu.Unlock()
	ctl := (*C.fidius_ctl)(C.calloc(1, C.size_t(unsafe.Sizeof(C.fidius_ctl{}))))
	if ctl == nil {
		panic("fidius: out of memory allocating a call's control block")
	}
	return ctl
}

func (p *ctlPool) put(ctl *C.fidius_ctl) {
	*ctl = C.fidius_ctl{}
	p.mu.Lock()
	if len(p.free) < 1024 {
		p.free = append(p.free, ctl)
		ctl = nil
	}
	p.mu.Unlock()
	if ctl != nil {
		C.free(unsafe.Pointer(ctl))
	}
}

// cross makes one crossing into C for a call under ctx, on a goroutine of
// its own, pinned to its thread and inside the gate. Back on that thread,
// keep turns the crossing's result into the caller's values, and cross
// returns true. If ctx ends first, cross returns false at once: the
// crossing goes on in the background (cancelled, see cancel.c), its
// result is released, and orphan runs after it on that goroutine.
func (c *cancellation) cross(ctx context.Context, crossing func(*C.fidius_ctl) C.fidius_result, keep func(C.fidius_result), orphan func()) bool {
	if ctx.Err() != nil {
		go orphan()
		return false
	}
	done := make(chan struct{})
	go func() {
		entered := gate.enter(ctx.Done())
		r := C.fidius_result{status: C.FIDIUS_CANCELLED} // when no thread was free in time
		if entered {
			runtime.LockOSThread()
			r = crossing(c.ctl)
		}
		kept := c.deliver()
		if kept {
			keep(r)
			close(done)
		} else {
			discard(r)
		}
		if entered {
			runtime.UnlockOSThread()
			gate.leave()
		}
		if !kept {
			orphan()
		}
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
	}
	if !c.leave() {
		<-done
		return true
	}
	return false
}

func (c *cancellation) state() *int32 { return (*int32)(unsafe.Pointer(&c.ctl.state)) }

// leave is the caller giving up on the call because ctx ended. It returns
// false if the call is delivering its result right now: then the caller
// must take it. While C reads the call's input the caller waits; that
// takes as long as decoding the input, and runs no plugin code.
func (c *cancellation) leave() bool {
	for spins := 0; ; spins++ {
		switch s := atomic.LoadInt32(c.state()); s {
		case C.FIDIUS_WAITING, C.FIDIUS_RUNNING:
			if atomic.CompareAndSwapInt32(c.state(), s, C.FIDIUS_ABANDONED) {
				return true
			}
		case C.FIDIUS_DELIVERING:
			return false
		case C.FIDIUS_ABANDONED:
			return true
		default: // reading the input
			if spins < 100 {
				runtime.Gosched()
			} else {
				time.Sleep(20 * time.Microsecond)
			}
		}
	}
}

// deliver is the call's thread claiming the right to hand its result to
// the caller; false means the caller has left.
func (c *cancellation) deliver() bool {
	for {
		s := atomic.LoadInt32(c.state())
		if s == C.FIDIUS_ABANDONED {
			return false
		}
		if s == C.FIDIUS_DELIVERING || atomic.CompareAndSwapInt32(c.state(), s, C.FIDIUS_DELIVERING) {
			return true
		}
	}
}

// nextStep makes the control block's hand-off ready for the next step of
// a stream.
func (c *cancellation) nextStep() { atomic.StoreInt32(c.state(), C.FIDIUS_WAITING) }

// canceller cancels calls. Interrupting a call needs the GIL of the
// interpreter it runs in, so cancellations queue, one queue for each
// interpreter, and each queue has a thread of its own while it has work:
// however many contexts end at once they cost one waiting thread per
// interpreter, and an interpreter whose GIL a long C function holds does
// not hold up the cancellation of calls in others.
var canceller = &cancelQueue{workers: map[*C.fidius_rt]*cancelWorker{}}

type cancelQueue struct {
	mu      sync.Mutex
	workers map[*C.fidius_rt]*cancelWorker
}

// cancelWorker is one interpreter's queue; pending is guarded by the
// queue's mu.
type cancelWorker struct {
	rt      *C.fidius_rt
	pending []*cancellation
	wake    chan struct{}
}

func (q *cancelQueue) send(c *cancellation) {
	q.mu.Lock()
	w := q.workers[c.rt]
	if w == nil {
		w = &cancelWorker{rt: c.rt, wake: make(chan struct{}, 1)}
		q.workers[c.rt] = w
		go q.run(w)
	}
	w.pending = append(w.pending, c)
	q.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run interrupts w's calls, then keeps checking those still running every
// 100 ms (a plugin may have removed the interrupt: sys.settrace(None), say)
// until none is left and nothing is pending; then the worker goes. Its
// interpreter lives as long as a cancellation holds it, so none ends under
// the worker.
func (q *cancelQueue) run(w *cancelWorker) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var watching []*cancellation
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		q.mu.Lock()
		batch := w.pending
		w.pending = nil
		if len(batch) == 0 && len(watching) == 0 {
			delete(q.workers, w.rt)
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		var still, done []*cancellation
		C.fidius_gil_acquire(w.rt)
		for _, c := range batch {
			C.fidius_interrupt(c.ctl)
		}
		for _, c := range append(watching, batch...) {
			if C.fidius_rearm(c.ctl) != 0 {
				still = append(still, c)
			} else {
				done = append(done, c)
			}
		}
		C.fidius_gil_release()
		for _, c := range done {
			c.release()
		}
		if watching = still; len(watching) > 0 {
			select {
			case <-w.wake:
			case <-tick.C:
			}
		}
	}
}
