//go:build cgo

// This file owns one worker process: starting a Python child that runs
// the embedded python/worker.py, the frames exchanged with it over a
// socketpair (docs/workers.md), its output sent to the logger, and its
// end: reaped as soon as it exits, its exit described for the call that
// saw it.

package fidius

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

//go:embed python/worker.py
var workerSource string

// workerBoot runs workerSource (its argument), after checking the Python
// version with code any Python can parse: on an older one, the crash
// error's stderr says why.
//
// Under a memory limit, a MemoryError that escapes the worker (raised
// again by its own handlers, with no memory left to report it) still
// ends it with the limit's status.
const workerBoot = `import sys, os
if sys.version_info < (3, 8):
    sys.exit("fidius: worker processes need CPython 3.8 or later, not " + sys.version.split()[0])
limited = "FIDIUS_WORKER_MEMORY" in os.environ
try:
    exec(compile(sys.argv[1], "<fidius-go>/worker.py", "exec"), {"__name__": "__fidius_worker__"})
except MemoryError:
    if not limited:
        raise
    os._exit(75)
`

// Frame kinds, as python/worker.py numbers them.
const (
	fLoad byte = iota + 1
	fCall
	fRaw
	fStream
	fNext
	fStop
	fFeed
	fFeedEnd
	fFeedErr
	fHostOK
	fHostErr
	fClient
)

const (
	fOK byte = iota + 20
	fPluginErr
	fLoadErr
	fOutputErr
	fInputErr
	fItem
	fEnd
	fPull
	fHostCall
	fCancelled
	fReady
	fDone
)

const (
	frameHeader = 8 // payload length u32, kind u8, flags u8, method u16; little-endian
	// maxSpin is the longest a read polls the socket before it blocks (see
	// fill); startSpin is how long the first read polls.
	maxSpin   = 200 * time.Microsecond
	startSpin = 50 * time.Microsecond
	// tailLines is how many lines of a worker's stderr a crash reports.
	tailLines = 10
	// shmMin is the size from which a payload travels through the shared
	// file rather than the socket (SHM_MIN in python/worker.py).
	shmMin  = 64 << 10
	flagShm = 0x80
	// exitMemory is the worker's exit status after a MemoryError under its
	// memory limit (python/worker.py).
	exitMemory = 75
)

// worker is one process. One exchange at a time talks to it: its pool
// hands it out and takes it back (workerpool.go).
type worker struct {
	pid    int
	proc   *os.Process
	fd     int           // our end of the socketpair; blocking
	cancel *os.File      // where the number of a call to cancel is written
	calls  uint64        // calls started, as the worker counts them
	spin   time.Duration // how long the next read polls before it blocks
	rbuf   []byte        // read ahead
	r0, r1 int
	wbuf   []byte

	shmFile *os.File // the file large payloads travel through (on tmpfs)
	shm     []byte   // its mapping; nil until a large payload

	exited chan struct{} // closed once the process is reaped
	state  *os.ProcessState
	output sync.WaitGroup // the goroutines copying stdout and stderr

	mu     sync.Mutex
	tail   []string // the last lines of stderr
	reason string   // why the library ended the process, if it did
	broken bool     // out of step with the process, or the process is gone

	ready workerReady

	crashOnce sync.Once
	crashErr  error
	cause     error // the first failure seen on the socket

	// Under pool.mu:
	pool    *workerPool
	held    bool    // an exchange has it
	gone    bool    // ended, or being stopped: never handed out again
	streams int     // streams open in it
	lent    []*conv // exchanges waiting for Go, innermost last
}

// lentTo reports whether c's is the innermost exchange waiting for Go.
// pool.mu held.
func (w *worker) lentTo(c *conv) bool {
	return len(w.lent) > 0 && w.lent[len(w.lent)-1] == c
}

// workerReady is what a worker reports once the plugin is loaded.
type workerReady struct {
	Present []bool  `json:"present"`
	Imports *string `json:"imports"` // __fidius_host_imports__ as JSON text, or null
	Pid     int     `json:"pid"`
}

// workerLoad is the LOAD frame: what the worker needs to load the plugin
// as the in-process loader would.
type workerLoad struct {
	Dir     []byte            `json:"dir"` // base64: a path need not be UTF-8
	Entry   string            `json:"entry"`
	Hash    uint64            `json:"hash"`
	Methods [][2]any          `json:"methods"` // name, optional
	Config  *string           `json:"config"`  // JSON text, or null
	Strict  bool              `json:"strict"`
	Helpers string            `json:"helpers"`
	SDK     map[string][2]any `json:"sdk"`
	Pycache string            `json:"pycache"`
	// NoBytecode is the embedded interpreter's sys.dont_write_bytecode
	// (PYTHONDONTWRITEBYTECODE, which -I makes the worker ignore).
	NoBytecode bool `json:"no_bytecode"`
	// Reload says the package may have changed since its bytecode was
	// cached.
	Reload bool `json:"reload"`
}

// workerConfig is what every worker of a plugin is started with.
type workerConfig struct {
	python string
	memory int64 // RLIMIT_AS in bytes, or 0
}

// startWorker starts a process and loads the plugin in it. The error is
// the load's, as the in-process loader would report it. If ctx ends
// first, the process is killed (an import that never ends must not run
// on once its load is abandoned) and the error is ctx's.
func startWorker(ctx context.Context, p *plugin, cfg workerConfig, load []byte) (*worker, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: starting a worker: socketpair: %v", ErrWorkerCrashed, err)
	}
	child := os.NewFile(uintptr(fds[1]), "fidius-worker-socket")
	cancelR, cancelW, err := os.Pipe()
	if err != nil {
		child.Close()
		syscall.Close(fds[0])
		return nil, fmt.Errorf("%w: starting a worker: %v", ErrWorkerCrashed, err)
	}
	shmFile, err := sharedFile()
	if err != nil {
		child.Close()
		syscall.Close(fds[0])
		cancelR.Close()
		cancelW.Close()
		return nil, fmt.Errorf("%w: starting a worker: %v", ErrWorkerCrashed, err)
	}
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	cmd := exec.Command(cfg.python, "-I", "-c", workerBoot, workerSource)
	cmd.Dir = p.dir
	cmd.Env = os.Environ()
	if cfg.memory > 0 {
		cmd.Env = append(cmd.Env, "FIDIUS_WORKER_MEMORY="+strconv.FormatInt(cfg.memory, 10))
	}
	cmd.ExtraFiles = []*os.File{child, cancelR, shmFile}
	cmd.Stdout, cmd.Stderr = outW, errW
	// A process group of its own: a terminal's Ctrl-C goes to the host,
	// which decides what its workers do. Killed when the host dies, even
	// in the middle of a call that never reads its socket again.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	spawn(func() { err = cmd.Start() })
	for _, f := range []*os.File{child, cancelR, outW, errW} {
		f.Close()
	}
	if err != nil {
		syscall.Close(fds[0])
		cancelW.Close()
		shmFile.Close()
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("%w: starting worker %s: %v", ErrWorkerCrashed, cfg.python, err)
	}
	w := &worker{pid: cmd.Process.Pid, proc: cmd.Process, fd: fds[0], spin: startSpin, cancel: cancelW, shmFile: shmFile, rbuf: make([]byte, 64<<10), exited: make(chan struct{})}
	w.output.Add(2)
	go w.log(p.logger, outR, "stdout")
	go w.log(p.logger, errR, "stderr")
	go func() {
		// Reaped as soon as it exits, whoever holds it: never a zombie.
		cmd.Wait()
		w.state = cmd.ProcessState
		w.mu.Lock()
		w.broken = true
		if w.fd >= 0 {
			// A process the worker forked may still hold its end of the
			// socket: a read waiting for the worker's answer must end now,
			// not when that process exits.
			syscall.Shutdown(w.fd, syscall.SHUT_RDWR)
		}
		w.mu.Unlock()
		close(w.exited)
	}()
	abandoned := context.AfterFunc(ctx, func() {
		w.kill("its load was abandoned: " + ctx.Err().Error())
	})
	loaded, err := w.load(p, load)
	if !abandoned() {
		if loaded != nil {
			loaded.stop()
		}
		return nil, ctx.Err()
	}
	return loaded, err
}

// load sends the LOAD frame and reads the worker's answer.
func (w *worker) load(p *plugin, load []byte) (*worker, error) {
	if err := w.send(fLoad, 0, 0, load); err != nil {
		return nil, w.lost(err)
	}
	f, payload, err := w.read(nil)
	if err == nil {
		err = w.answered()
	}
	switch {
	case err != nil:
		return nil, w.lost(err)
	case f.kind == fLoadErr:
		w.stop()
		return nil, p.workerLoadError(payload)
	case f.kind != fReady:
		return nil, w.lost(fmt.Errorf("unexpected frame %d", f.kind))
	}
	if err := json.Unmarshal(payload, &w.ready); err != nil {
		return nil, w.lost(err)
	}
	return w, nil
}

// spawns runs every worker's fork on one OS thread that never exits: the
// parent-death signal fires when the thread that forked the child ends,
// not the process, and the Go runtime may end other threads.
var (
	spawns    = make(chan func())
	spawnOnce sync.Once
)

func spawn(f func()) {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread() // for good: the thread ends with the process
			for f := range spawns {
				f()
			}
		}()
	})
	done := make(chan struct{})
	spawns <- func() {
		f()
		close(done)
	}
	<-done
}

// sharedFile makes the file a worker and the host share large payloads
// through: on tmpfs (/dev/shm) where there is one, removed at once, so
// that only the two processes' descriptors keep it.
func sharedFile() (*os.File, error) {
	dir := "/dev/shm"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, "fidius-worker-")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// log sends the worker's stdout or stderr to the logger, a line at a
// time.
func (w *worker) log(l *zap.Logger, r io.ReadCloser, stream string) {
	defer w.output.Done()
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		if stream == "stderr" {
			l.Warn(sc.Text(), zap.String("stream", stream), zap.Int("worker", w.pid))
			w.mu.Lock()
			if len(w.tail) == tailLines {
				w.tail = w.tail[1:]
			}
			w.tail = append(w.tail, sc.Text())
			w.mu.Unlock()
		} else {
			l.Info(sc.Text(), zap.String("stream", stream), zap.Int("worker", w.pid))
		}
	}
	io.Copy(io.Discard, r) // a line past the scanner's limit: keep the pipe drained
}

// frame is a frame's header.
type frame struct {
	kind   byte
	flags  byte
	method uint16
}

// send writes one frame.
func (w *worker) send(kind, flags byte, method uint16, payload []byte) error {
	var h [frameHeader]byte
	binary.LittleEndian.PutUint32(h[:], uint32(len(payload)))
	h[4], h[5] = kind, flags
	binary.LittleEndian.PutUint16(h[6:], method)
	if len(payload) < shmMin {
		w.wbuf = append(append(w.wbuf[:0], h[:]...), payload...)
		return w.write(w.wbuf)
	}
	m, err := w.shared(len(payload), true)
	if err != nil {
		return err
	}
	if err := faultless(func() { copy(m, payload) }); err != nil {
		return w.outOfStep(err.Error())
	}
	h[5] |= flagShm
	return w.write(h[:])
}

// faultless runs f, a copy to or from the shared mapping, turning a
// memory fault into an error: the worker can shrink the file under the
// mapping (os.ftruncate(5, 0)), and touching the pages past its end must
// not end the host with SIGBUS.
func faultless(f func()) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			err = errors.New("the shared file shrank under its mapping")
		}
	}()
	f()
	return nil
}

// outOfStep ends a worker that broke the protocol, saying how, and
// returns the error its exchange fails with.
func (w *worker) outOfStep(how string) error {
	w.kill(how)
	return errors.New("protocol out of step: " + how)
}

// shared returns the region shared with the worker, mapped to at least
// n bytes, enlarging the file if it is shorter and grow is set. Either
// side enlarges it before it writes a payload; the other maps it again
// when it finds a payload past its mapping. A reader does not enlarge
// it: a payload said to be longer than the file is a malformed frame.
func (w *worker) shared(n int, grow bool) ([]byte, error) {
	if len(w.shm) >= n {
		return w.shm, nil
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(w.shmFile.Fd()), &st); err != nil {
		return nil, err
	}
	size := int(st.Size)
	if size < n && !grow {
		return nil, fmt.Errorf("it sent a payload of %d bytes in a shared file of %d", n, size)
	}
	if size < n {
		size = 1 << bits.Len(uint(n-1))
		if err := w.shmFile.Truncate(int64(size)); err != nil {
			return nil, err
		}
	}
	if w.shm != nil {
		syscall.Munmap(w.shm)
		w.shm = nil
	}
	m, err := syscall.Mmap(int(w.shmFile.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	w.shm = m
	return m, nil
}

func (w *worker) write(p []byte) error {
	for len(p) > 0 {
		// MSG_NOSIGNAL: a worker that died is an error here, not SIGPIPE.
		n, err := syscall.SendmsgN(w.fd, p, nil, nil, syscall.MSG_NOSIGNAL)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// fill reads what the socket has into p. When nothing is there yet, it
// polls for a while before it blocks, yielding the CPU between polls (to
// the worker, on a busy machine): an answer that comes within the poll
// never pays a sleeping reader's wake-up, tens of microseconds. How long
// it polls follows the last wait: answers that take longer than
// maxSpin (CPU-bound calls) are waited for without polling, so that two
// workers computing on two cores do not share them with two pollers.
//
// first is a read of a new frame's header, the wait for an answer: only
// its wait teaches how long to poll next time.
func (w *worker) fill(p []byte, first bool) (int, error) {
	n, _, err := syscall.Recvfrom(w.fd, p, syscall.MSG_DONTWAIT)
	if n > 0 {
		return n, nil
	}
	if err == nil {
		return 0, io.EOF
	}
	if err != syscall.EAGAIN && err != syscall.EINTR {
		return 0, err
	}
	start := time.Now()
	spin := w.spin
	if !first {
		spin = startSpin // the rest of a frame on its way
	}
	if spin > 0 {
		end := start.Add(spin)
		for {
			syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
			n, _, err := syscall.Recvfrom(w.fd, p, syscall.MSG_DONTWAIT)
			if n > 0 {
				if first {
					w.learn(time.Since(start))
				}
				return n, nil
			}
			if err == nil {
				return 0, io.EOF
			}
			if err != syscall.EAGAIN && err != syscall.EINTR {
				return 0, err
			}
			if time.Now().After(end) {
				break
			}
		}
	}
	for {
		n, err := syscall.Read(w.fd, p)
		if err == syscall.EINTR {
			continue
		}
		if first {
			w.learn(time.Since(start))
		}
		if n == 0 && err == nil {
			return 0, io.EOF
		}
		return n, err
	}
}

// learn sets how long the next wait polls from how long this one took.
func (w *worker) learn(waited time.Duration) {
	if waited > maxSpin {
		w.spin = 0
	} else {
		w.spin = min(maxSpin, waited*3/2+10*time.Microsecond)
	}
}

// head waits for the next frame's header and returns its kind, leaving
// the frame for read: the reader can choose where its payload goes.
func (w *worker) head() (byte, error) {
	for w.r1-w.r0 < frameHeader {
		if w.r0 > 0 {
			w.r1 = copy(w.rbuf, w.rbuf[w.r0:w.r1])
			w.r0 = 0
		}
		n, err := w.fill(w.rbuf[w.r1:], w.r1 == w.r0)
		if err != nil {
			return 0, err
		}
		w.r1 += n
	}
	return w.rbuf[w.r0+4], nil
}

// read reads one frame, appending its payload to into.
func (w *worker) read(into []byte) (frame, []byte, error) {
	if _, err := w.head(); err != nil {
		return frame{}, into, err
	}
	h := w.rbuf[w.r0 : w.r0+frameHeader]
	n := int(binary.LittleEndian.Uint32(h))
	f := frame{kind: h[4], flags: h[5], method: binary.LittleEndian.Uint16(h[6:])}
	w.r0 += frameHeader
	// The plugin can write to the socket too: what no worker sends is
	// refused before it costs memory or a wait for bytes that never come.
	if f.kind < fOK || f.kind > fDone {
		return f, into, w.outOfStep(fmt.Sprintf("it sent a frame of unknown kind %d", f.kind))
	}
	if f.flags&flagShm != 0 {
		f.flags &^= flagShm
		m, err := w.shared(n, false)
		if err != nil {
			return f, into, w.outOfStep(err.Error())
		}
		out := into
		if err := faultless(func() { out = append(into, m[:n]...) }); err != nil {
			return f, into, w.outOfStep(err.Error())
		}
		return f, out, nil
	}
	if n >= shmMin {
		return f, into, w.outOfStep(fmt.Sprintf("it sent a frame of %d bytes outside the shared file", n))
	}
	if n <= w.r1-w.r0 {
		into = append(into, w.rbuf[w.r0:w.r0+n]...)
		w.r0 += n
		return f, into, nil
	}
	// Partly read ahead: the rest goes straight into its place.
	have := w.r1 - w.r0
	into = append(into, w.rbuf[w.r0:w.r1]...)
	w.r0, w.r1 = 0, 0
	start := len(into)
	into = growTo(into, start+n-have)
	for got := have; got < n; {
		k, err := w.fill(into[start+got-have:start+n-have], false)
		if err != nil {
			return f, into[:start], err
		}
		got += k
	}
	return f, into, nil
}

// answered checks that a frame that ends an exchange is all the worker
// sent: it sends nothing more until the host's next frame, so bytes read
// past the answer mean something else wrote to the socket (the plugin),
// and the answers would be out of step from then on.
func (w *worker) answered() error {
	if w.r1 != w.r0 {
		return w.outOfStep(fmt.Sprintf("it sent %d bytes past its answer", w.r1-w.r0))
	}
	return nil
}

// growTo returns b extended to length n, reallocating once if needed.
func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	return append(b[:cap(b)], make([]byte, n-cap(b))...)[:n]
}

// cancelCall asks the worker to raise CallCancelled into call number n, if
// it is still running it.
func (w *worker) cancelCall(n uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	// Never waits: a worker whose plugin replaced or blocked the SIGUSR1
	// handler does not read the pipe, which fills up after 8192
	// cancellations; the grace period stops such calls anyway.
	if rc, err := w.cancel.SyscallConn(); err == nil {
		rc.Write(func(fd uintptr) bool {
			syscall.Write(int(fd), b[:]) // 8 bytes: all or nothing (EAGAIN)
			return true
		})
	}
	w.signal(syscall.SIGUSR1)
}

// signal sends the worker a signal, through os.Process: never to
// another process that reused the pid of one that was reaped.
func (w *worker) signal(sig syscall.Signal) {
	w.proc.Signal(sig)
}

// kill ends the process, saying why.
func (w *worker) kill(reason string) {
	w.mu.Lock()
	if w.reason == "" {
		w.reason = reason
	}
	w.broken = true
	w.mu.Unlock()
	w.signal(syscall.SIGKILL)
}

// lost is the error of an exchange that failed (the socket closed or
// broke): the process is ended if it is not already, and described.
func (w *worker) lost(cause error) error {
	w.mu.Lock()
	w.broken = true
	if w.cause == nil {
		w.cause = cause
	}
	w.mu.Unlock()
	return w.crash()
}

// crash waits for the process to end (killing it if it closed its
// socket but lingers), releases our ends, and returns how it ended, the
// same error for every call that asks.
func (w *worker) crash() error {
	w.crashOnce.Do(func() {
		select {
		case <-w.exited:
		case <-time.After(2 * time.Second):
			w.kill("it closed its end of the protocol but did not exit")
			<-w.exited
		}
		w.close()
		w.drain()
		st := w.state
		e := &WorkerCrashError{Pid: w.pid, ExitCode: st.ExitCode()}
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal()
		}
		w.mu.Lock()
		e.Reason = w.reason
		e.Stderr = strings.Join(w.tail, "\n")
		cause := w.cause
		w.mu.Unlock()
		if e.Reason == "" && e.ExitCode == exitMemory {
			e.Reason = "the plugin ran out of memory (MemoryError under the worker's memory limit)"
		}
		if e.Reason == "" && cause != nil && !errors.Is(cause, io.EOF) {
			e.Reason = cause.Error()
		}
		w.crashErr = e
	})
	return w.crashErr
}

// stop ends a worker that is not in a call: it exits when its socket
// closes. It is killed if it has not exited within a second. stop
// returns once the process is reaped.
func (w *worker) stop() {
	w.close()
	select {
	case <-w.exited:
	case <-time.After(time.Second):
		w.kill("it did not exit when its handle was closed")
		<-w.exited
	}
	w.drain()
}

// drain waits for the goroutines copying the exited worker's stdout and
// stderr to reach the end of the pipes, for the last lines; a process the
// worker forked that keeps them open is not waited for.
func (w *worker) drain() {
	drained := make(chan struct{})
	go func() {
		w.output.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(100 * time.Millisecond):
	}
}

// close releases our ends of the socket and the cancel pipe, once.
func (w *worker) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd >= 0 {
		syscall.Close(w.fd)
		w.fd = -1
		w.cancel.Close()
		w.shmFile.Close()
		if w.shm != nil {
			syscall.Munmap(w.shm)
			w.shm = nil
		}
	}
	w.broken = true
}

func (w *worker) isBroken() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.broken
}
