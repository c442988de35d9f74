// Command bench measures fidius's call path on this machine, side by side
// with what it competes against, and prints one table:
//
//   - the CPython floor: a C program (floor/floor.c, built here with
//     pkg-config python-3.X-embed for the Python the library runs)
//     calling the same Python functions, releasing and re-taking the GIL
//     around every call;
//   - this library: CallJSON, Call[string] and CallRaw, from 1, 2 and 8
//     goroutines on one handle;
//   - a subprocess worker: a child of the same Python answering JSON
//     lines (worker.py), the usual hand-written alternative;
//   - hashicorp/go-plugin: a Python plugin process serving the same
//     functions over gRPC (goplugin/, a module of its own, run when that
//     Python has grpc; its figures are printed in a table of their own);
//   - this library's worker mode (WithWorkers): the same calls in worker
//     processes, side by side with go-plugin and the subprocess worker.
//
// Run it with the library's build tags to measure another Python:
//
//	GOFLAGS=-tags=fidius_py312 go run ./bench
//
// With CPython 3.12 or later it also compares isolated plugins
// (WithIsolation) with the shared interpreter.
//
// Every harness is timed the same way: batches of at least 2 ms (so that
// garbage collection falls inside them), best batch reported. It then
// checks the targets of the project's benchmark issue and measures the
// process's RSS growth over 1,000,000 typed and 100,000 raw 64 KiB calls.
//
//	go run ./bench
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fidius-go/fidius"
)

const module = "fidius_bench_plugin"

var desc = &fidius.InterfaceDescriptor{
	InterfaceName: "Bench",
	InterfaceHash: 0xb0b0,
	Methods: []fidius.MethodDesc{
		{Name: "noop"},
		{Name: "greet"},
		{Name: "echo", WireRaw: true},
		{Name: "allocated_blocks"},
		{Name: "crunch"},
		{Name: "count", Streaming: true},
		{Name: "total", ClientStreaming: true},
		{Name: "double", Streaming: true, ClientStreaming: true},
	},
}

const (
	mNoop = iota
	mGreet
	mEcho
	mBlocks
	mCrunch
	mCount
	mTotal
	mDouble
)

var seconds = flag.Float64("seconds", 1, "time spent measuring each row")
var skipRSS = flag.Bool("skip-rss", false, "skip the memory growth check")
var benchDir = flag.String("dir", "bench", "the bench directory (floor/, plugin/, worker.py)")

func main() {
	flag.Parse()
	// The runner's files (floor/, plugin/, worker.py) are found from the
	// working directory, not from the source path compiled in, which a
	// -trimpath or moved binary does not have.
	dir := *benchDir
	if _, err := os.Stat(filepath.Join(dir, "floor", "floor.c")); err != nil {
		fmt.Fprintf(os.Stderr, "bench: no floor/floor.c under %s: run from the repository root, or pass -dir\n", dir)
		os.Exit(2)
	}
	pluginDir := filepath.Join(dir, "plugin")
	if err := run(dir, pluginDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type row struct {
	call       string
	goroutines int
	ns, allocs float64
	floorKey   string
}

func run(dir, pluginDir string) error {
	floor, err := runFloor(dir, pluginDir)
	if err != nil {
		return err
	}
	sub, err := runSubprocess(dir, pluginDir)
	if err != nil {
		return err
	}
	gp, err := runGoPlugin(dir, pluginDir)
	if err != nil {
		return err
	}
	printGoPlugin(gp)
	h, err := fidius.LoadPythonPlugin(pluginDir, desc)
	if err != nil {
		return err
	}
	defer h.Close()
	ctx := context.Background()
	// A context that can end (and never does) takes the cancellable path.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	small, big := make([]byte, 64), make([]byte, 1<<20)
	greetIn, crunchIn := []byte(`["World"]`), []byte(`[10000]`)
	same := func(fn func() error) func() func() error { return func() func() error { return fn } }
	// appendRaw gives each goroutine its own reused result buffer.
	appendRaw := func(in []byte) func() func() error {
		return func() func() error {
			buf := make([]byte, 0, len(in))
			return func() error { _, err := h.CallRawAppend(ctx, mEcho, buf[:0], in); return err }
		}
	}
	calls := []struct {
		name, floorKey string
		mk             func() func() error
	}{
		{"noop · CallJSON", "noop", same(func() error { _, err := h.CallJSON(ctx, mNoop, nil); return err })},
		{"noop · CallJSON, cancellable ctx", "noop", same(func() error { _, err := h.CallJSON(cctx, mNoop, nil); return err })},
		{"greet · CallJSON", "greet", same(func() error { _, err := h.CallJSON(ctx, mGreet, greetIn); return err })},
		{"greet · Call[string]", "greet", same(func() error { _, err := fidius.Call[string](ctx, h, mGreet, "World"); return err })},
		{"echo 64 B · CallRaw", "echo64", same(func() error { _, err := h.CallRaw(ctx, mEcho, small); return err })},
		{"echo 64 B · CallRawAppend", "echo64", appendRaw(small)},
		{"echo 1 MiB · CallRaw", "echo1m", same(func() error { _, err := h.CallRaw(ctx, mEcho, big); return err })},
		{"echo 1 MiB · CallRawAppend", "echo1m", appendRaw(big)},
		{"crunch: 10,000-step Python loop · CallJSON", "crunch", same(func() error { _, err := h.CallJSON(ctx, mCrunch, crunchIn); return err })},
	}
	var rows []row
	for _, c := range calls {
		for _, g := range []int{1, 2, 8} {
			ns, err := measure(g, c.mk)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			rows = append(rows, row{c.name, g, ns, allocsPerCall(c.mk()), c.floorKey})
		}
	}
	printTable(rows, floor, sub)
	if err := streams(ctx, cctx, h); err != nil {
		return err
	}
	checkTargets(rows, floor, sub)
	if err := isolation(ctx, pluginDir, h); err != nil {
		return err
	}
	appendIn := 0.0
	for _, r := range rows {
		if r.call == "echo 1 MiB · CallRawAppend" && r.goroutines == 1 {
			appendIn = r.ns
		}
	}
	if err := workers(ctx, pluginDir, sub, gp, appendIn); err != nil {
		return err
	}
	if !*skipRSS {
		return memoryGrowth(ctx, h)
	}
	return nil
}

// streams times streams of 10,000 small items each way, per item.
func streams(ctx, cctx context.Context, h *fidius.PluginHandle) error {
	const n = 10000
	items := func(yield func(json.RawMessage, error) bool) {
		for i := range n {
			if !yield(json.RawMessage(strconv.Itoa(i)), nil) {
				return
			}
		}
	}
	drain := func(seq func(func(json.RawMessage, error) bool)) error {
		got := 0
		for _, err := range seq {
			if err != nil {
				return err
			}
			got++
		}
		if got != n {
			return fmt.Errorf("%d items, want %d", got, n)
		}
		return nil
	}
	countIn := []byte(strconv.Itoa(n))
	cases := []struct {
		name string
		fn   func() error
	}{
		{"server stream · CallStream", func() error { return drain(h.CallStream(ctx, mCount, countIn)) }},
		{"client stream · CallClientStream", func() error {
			_, err := h.CallClientStream(ctx, mTotal, items, nil)
			return err
		}},
		{"client stream · CallClientStream, cancellable ctx", func() error {
			_, err := h.CallClientStream(cctx, mTotal, items, nil)
			return err
		}},
		{"bidirectional · CallBidiStream", func() error { return drain(h.CallBidiStream(ctx, mDouble, items, nil)) }},
		{"bidirectional · CallBidiStream, cancellable ctx", func() error { return drain(h.CallBidiStream(cctx, mDouble, items, nil)) }},
	}
	fmt.Printf("Streams of %d small items (ints), one goroutine:\n\n", n)
	fmt.Println("| stream | ns/item | ÷ server stream |")
	fmt.Println("|---|--:|--:|")
	var server float64
	for i, c := range cases {
		perCall, err := measure(1, func() func() error { return c.fn })
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		perItem := perCall / n
		if i == 0 {
			server = perItem
		}
		fmt.Printf("| %s | %.0f | %.2fx |\n", c.name, perItem, perItem/server)
	}
	fmt.Println()
	return nil
}

// isolation compares the shared interpreter with isolated ones
// (WithIsolation, CPython 3.12+): a noop call's cost, and the throughput
// of a CPU-bound call from two goroutines, on one shared handle and on a
// pool of two isolated instances; then what an instance costs to make
// and keep.
func isolation(ctx context.Context, pluginDir string, shared *fidius.PluginHandle) error {
	pool, err := fidius.LoadPythonPlugin(pluginDir, desc, fidius.WithIsolation(2))
	if errors.Is(err, fidius.ErrNotIsolatable) {
		fmt.Printf("Isolation: skipped: %v\n(run with GOFLAGS=-tags=fidius_py312 or fidius_py313 and that CPython's pkg-config path)\n\n", err)
		return nil
	}
	if err != nil {
		return err
	}
	defer pool.Close()
	one, err := fidius.LoadPythonPlugin(pluginDir, desc, fidius.WithIsolation(1))
	if err != nil {
		return err
	}
	defer one.Close()
	crunchIn := []byte(`[100000]`)
	call := func(h *fidius.PluginHandle, m int, in []byte) func() func() error {
		return func() func() error {
			return func() error { _, err := h.CallJSON(ctx, m, in); return err }
		}
	}
	// Shared and isolated alternate, best of three each, so that the
	// machine's drift during the run falls on both.
	best := func(g int, mk func() func() error) (float64, error) {
		b := math.Inf(1)
		for range 3 {
			v, err := measure(g, mk)
			if err != nil {
				return 0, err
			}
			b = math.Min(b, v)
		}
		return b, nil
	}
	type pair struct {
		name             string
		g                int
		shared, isolated func() func() error
	}
	pairs := []pair{
		{"noop · CallJSON", 1, call(shared, mNoop, nil), call(one, mNoop, nil)},
		{"crunch: 100,000-step Python loop · CallJSON", 1, call(shared, mCrunch, crunchIn), call(pool, mCrunch, crunchIn)},
		{"crunch: 100,000-step Python loop · CallJSON", 2, call(shared, mCrunch, crunchIn), call(pool, mCrunch, crunchIn)},
	}
	fmt.Println("Isolation: the shared interpreter against isolated ones (noop: one instance; crunch: a pool of two):")
	fmt.Println()
	fmt.Println("| call | goroutines | shared ns/call | isolated ns/call | isolated calls/s ÷ shared |")
	fmt.Println("|---|--:|--:|--:|--:|")
	results := make([][2]float64, len(pairs))
	for i, p := range pairs {
		if results[i][0], err = best(p.g, p.shared); err != nil {
			return fmt.Errorf("%s, shared: %w", p.name, err)
		}
		if results[i][1], err = best(p.g, p.isolated); err != nil {
			return fmt.Errorf("%s, isolated: %w", p.name, err)
		}
		fmt.Printf("| %s | %d | %s | %s | %.2fx |\n", p.name, p.g, ns(results[i][0]), ns(results[i][1]), results[i][0]/results[i][1])
	}
	fmt.Println()
	// What an instance costs: eight made at once, then closed.
	const n = 8
	runtime.GC()
	before := settledRSS()
	start := time.Now()
	many, err := fidius.LoadPythonPlugin(pluginDir, desc, fidius.WithIsolation(n))
	if err != nil {
		return err
	}
	took := time.Since(start)
	loaded := settledRSS()
	many.Close()
	closed := settledRSS()
	fmt.Printf("An isolated instance of the bench plugin: %.1f ms to make and import, %.1f MiB of RSS (%d made at once); after Close, %.1f MiB each stays (CPython keeps an ended interpreter's memory)\n\n",
		float64(took.Microseconds())/1000/n, float64(loaded-before)/(1<<20)/n, n, float64(closed-before)/(1<<20)/n)
	fmt.Println("Isolation targets:")
	noop := results[0][1] / results[0][0]
	verdict := "met"
	if noop > 1.15 {
		verdict = "MISSED"
	}
	fmt.Printf("- isolated noop ÷ shared noop: %.2fx (target at most 1.15x) %s\n", noop, verdict)
	speedup := results[2][0] / results[2][1]
	verdict = "met"
	if speedup < 1.7 {
		verdict = "MISSED"
	}
	fmt.Printf("- crunch from 2 goroutines, isolated pool of two ÷ shared, throughput: %.2fx (target at least 1.7x) %s\n\n", speedup, verdict)
	return nil
}

// measure calls fn from g goroutines in batches of at least 2 ms and
// returns the best batch's time per call. Each goroutine makes its call
// function with mk and calls it once first, untimed.
func measure(g int, mk func() func() error) (float64, error) {
	var (
		mu       sync.Mutex
		firstErr error
	)
	fns := make([]func() error, g)
	for w := range fns {
		fns[w] = mk()
	}
	runBatch := func(n int) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for w := 0; w < g; w++ {
			wg.Add(1)
			fn := fns[w]
			go func() {
				defer wg.Done()
				for i := 0; i < n; i++ {
					if err := fn(); err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	runBatch(1)
	best := math.Inf(1)
	end := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	for per := 1; ; {
		took := runBatch(per)
		if firstErr != nil {
			return 0, firstErr
		}
		if took < 2*time.Millisecond {
			per *= 2
			continue
		}
		best = math.Min(best, float64(took.Nanoseconds())/float64(per*g))
		if time.Now().After(end) {
			return best, nil
		}
	}
}

func allocsPerCall(fn func() error) float64 {
	const n = 2000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		fn()
	}
	runtime.ReadMemStats(&after)
	return float64(after.Mallocs-before.Mallocs) / n
}

// runFloor builds floor.c and returns its figures by row key.
func runFloor(dir, pluginDir string) (map[string]float64, error) {
	tmp, err := os.MkdirTemp("", "fidius-bench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	flags, err := pkgConfig("--cflags", "--libs")
	if err != nil {
		return nil, err
	}
	libdir, err := pkgConfig("--variable=libdir")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(tmp, "floor")
	args := append([]string{"-O2", "-o", bin, filepath.Join(dir, "floor", "floor.c"), "-Wl,-rpath," + libdir}, strings.Fields(flags)...)
	if staticBuild {
		// As the library's static build links: the archive, the C API exported.
		args = append([]string{"-O2", "-o", bin, filepath.Join(dir, "floor", "floor.c")}, strings.Fields(staticFlags())...)
	}
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building floor/floor.c: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, pluginDir, module, fmt.Sprint(*seconds)).Output()
	if err != nil {
		return nil, fmt.Errorf("running floor: %w", err)
	}
	return figures(out), nil
}

// runSubprocess times the JSON-lines worker for each row key.
func runSubprocess(dir, pluginDir string) (map[string]float64, error) {
	cmd := exec.Command(pythonProgram(), filepath.Join(dir, "worker.py"), pluginDir, module)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the python worker: %w", err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	r := bufio.NewReaderSize(stdout, 4<<20)
	w := bufio.NewWriter(stdin)
	call := func(req any) error {
		b, _ := json.Marshal(req)
		w.Write(b)
		w.WriteByte('\n')
		if err := w.Flush(); err != nil {
			return err
		}
		line, err := r.ReadBytes('\n')
		if err != nil {
			return err
		}
		var resp struct {
			R json.RawMessage `json:"r"`
			B string          `json:"b"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return err
		}
		if resp.B != "" {
			_, err = base64.StdEncoding.DecodeString(resp.B)
		}
		return err
	}
	small := base64.StdEncoding.EncodeToString(make([]byte, 64))
	big := base64.StdEncoding.EncodeToString(make([]byte, 1<<20))
	res := map[string]float64{}
	for key, req := range map[string]any{
		"noop":   map[string]any{"m": "noop"},
		"greet":  map[string]any{"m": "greet", "a": []string{"World"}},
		"echo64": map[string]any{"m": "echo", "b": small},
		"echo1m": map[string]any{"m": "echo", "b": big},
		"crunch": map[string]any{"m": "crunch", "a": []int{10000}},
	} {
		ns, err := measure(1, func() func() error { return func() error { return call(req) } })
		if err != nil {
			return nil, fmt.Errorf("subprocess %s: %w", key, err)
		}
		res[key] = ns
	}
	return res, nil
}

// runGoPlugin builds and runs the hashicorp/go-plugin peer (goplugin/, a
// module of its own so that the library's go.mod never gains go-plugin or
// gRPC) and returns its figures by key: the row keys it shares with the
// floor, crunch2 and rss. With no grpc for the library's Python, or no way
// to build the peer (no module proxy, say), it says why on stdout and
// returns nil: the peer is a comparison, not a part of the library.
func runGoPlugin(dir, pluginDir string) (map[string]float64, error) {
	py := pythonProgram()
	if err := exec.Command(py, "-c", "import grpc").Run(); err != nil {
		fmt.Printf("go-plugin peer: skipped, %s cannot import grpc (Debian: python3-grpcio)\n\n", py)
		return nil, nil
	}
	tmp, err := os.MkdirTemp("", "fidius-bench-goplugin")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	peerDir := filepath.Join(dir, "goplugin")
	bin := filepath.Join(tmp, "goplugin")
	// Built, then run (not go run), so that a build failure is told apart
	// from the peer's own. The library's build tags mean nothing to the
	// peer's module, and it needs no cgo.
	build := exec.Command("go", "build", "-buildvcs=false", "-o", bin, ".")
	build.Dir = peerDir
	build.Env = append(os.Environ(), "GOFLAGS=", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		fmt.Printf("go-plugin peer: skipped, go build in %s failed: %v\n\n", peerDir, err)
		return nil, nil
	}
	// The peer runs in its own directory (it finds plugin.py there), so
	// the plugin directory goes to it absolute.
	abs, err := filepath.Abs(pluginDir)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-plugin", abs, "-python", py, "-seconds", fmt.Sprint(*seconds))
	cmd.Dir = peerDir
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("running the go-plugin peer: %w", err)
	}
	return figures(out), nil
}

// printGoPlugin prints the go-plugin peer's own figures; nil (skipped)
// prints nothing.
func printGoPlugin(gp map[string]float64) {
	if gp == nil {
		return
	}
	fmt.Println("hashicorp/go-plugin peer: the same Python functions in a plugin process over gRPC (bench/goplugin):")
	fmt.Println()
	fmt.Println("| call | plugin processes | goroutines | µs/call |")
	fmt.Println("|---|--:|--:|--:|")
	for _, r := range []struct {
		call, key string
		procs     int
	}{
		{"noop · JSON", "noop", 1},
		{"greet · JSON", "greet", 1},
		{"echo 64 B · raw bytes", "echo64", 1},
		{"echo 1 MiB · raw bytes", "echo1m", 1},
		{"crunch: 10,000-step Python loop · JSON", "crunch", 1},
		{"crunch: 10,000-step Python loop · JSON", "crunch2", 2},
	} {
		fmt.Printf("| %s | %d | %d | %.1f |\n", r.call, r.procs, r.procs, gp[r.key]/1000)
	}
	fmt.Println()
	fmt.Printf("crunch throughput, 2 processes ÷ 1: %.2fx; RSS of one plugin process: %.1f MiB\n\n",
		gp["crunch"]/gp["crunch2"], gp["rss"]/(1<<20))
}

// pkgConfig asks pkg-config about the Python the library runs.
func pkgConfig(args ...string) (string, error) {
	name := "python-" + pythonMinor() + "-embed"
	out, err := exec.Command("pkg-config", append(args, name)...).Output()
	if err != nil {
		return "", fmt.Errorf("pkg-config %s %s: %w", strings.Join(args, " "), name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// pythonMinor is "3.12" when the library runs CPython 3.12.x.
func pythonMinor() string {
	parts := strings.SplitN(fidius.PythonVersion(), ".", 3)
	return parts[0] + "." + parts[1]
}

// pythonProgram is the python of the installation the library runs.
func pythonProgram() string {
	prefix, err := pkgConfig("--variable=exec_prefix")
	if err != nil {
		return "python3"
	}
	return filepath.Join(prefix, "bin", "python"+pythonMinor())
}

func printTable(rows []row, floor, sub map[string]float64) {
	fmt.Printf("fidius for Go, call cost on %s/%s, %d cores, %s, CPython %s (go run ./bench)\n\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), fidius.PythonVersion()+linkMode())
	fmt.Println("| call | goroutines | this library ns/call | Go allocs/call | CPython floor ns/call | ÷ floor | subprocess ns/call | subprocess ÷ this |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|")
	for _, r := range rows {
		f, s := floor[r.floorKey], sub[r.floorKey]
		fmt.Printf("| %s | %d | %s | %.1f | %s | %.2fx | %s | %.0fx |\n",
			r.call, r.goroutines, ns(r.ns), r.allocs, ns(f), r.ns/f, ns(s), s/r.ns)
	}
	fmt.Println()
}

func ns(v float64) string {
	if v >= 10000 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func checkTargets(rows []row, floor, sub map[string]float64) {
	find := func(call string, g int) row {
		for _, r := range rows {
			if r.call == call && r.goroutines == g {
				return r
			}
		}
		panic("no row " + call)
	}
	check := func(what string, got, limit float64, unit string) {
		verdict := "met"
		if got > limit {
			verdict = "MISSED"
		}
		fmt.Printf("- %s: %.2f%s (target at most %.4g%s) %s\n", what, got, unit, limit, unit, verdict)
	}
	fmt.Println("Targets:")
	ratio := func(call string, g int) float64 { r := find(call, g); return r.ns / floor[r.floorKey] }
	check("noop CallJSON, 1 goroutine ÷ floor", ratio("noop · CallJSON", 1), 3, "x")
	check("noop CallJSON, 8 goroutines ÷ floor", ratio("noop · CallJSON", 8), 6, "x")
	check("raw echo 64 B ÷ floor", ratio("echo 64 B · CallRaw", 1), 3, "x")
	check("raw echo 1 MiB, CallRaw ÷ floor", ratio("echo 1 MiB · CallRaw", 1), 1.5, "x")
	check("raw echo 1 MiB, CallRawAppend ÷ floor", ratio("echo 1 MiB · CallRawAppend", 1), 1.5, "x")
	check("greet CallJSON ÷ floor greet", ratio("greet · CallJSON", 1), 12, "x")
	check("raw echo 64 B Go allocations per call", find("echo 64 B · CallRaw", 1).allocs, 2, "")
	worst := 1e18
	worstRow := ""
	for _, r := range rows {
		if r.floorKey == "crunch" {
			continue // Python's own time: the same in every harness
		}
		if s := sub[r.floorKey] / r.ns; s < worst {
			worst, worstRow = s, fmt.Sprintf("%s, %d goroutines", r.call, r.goroutines)
		}
	}
	verdict := "met"
	if worst < 25 {
		verdict = "MISSED"
	}
	fmt.Printf("- every row faster than the subprocess worker: least %.0fx (%s) (target at least 25x) %s\n", worst, worstRow, verdict)
}

func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func settledRSS() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return rss()
}

func memoryGrowth(ctx context.Context, h *fidius.PluginHandle) error {
	raw := make([]byte, 64<<10)
	greetIn := []byte(`["World"]`)
	blocks := func() int64 { n, _ := fidius.Call[int64](ctx, h, mBlocks); return n }
	typed := func(n int) error {
		for i := 0; i < n; i++ {
			if _, err := h.CallJSON(ctx, mGreet, greetIn); err != nil {
				return err
			}
		}
		return nil
	}
	rawCalls := func(n int) error {
		for i := 0; i < n; i++ {
			if _, err := h.CallRaw(ctx, mEcho, raw); err != nil {
				return err
			}
		}
		return nil
	}
	if err := typed(20000); err != nil {
		return err
	}
	if err := rawCalls(2000); err != nil {
		return err
	}
	before, blocksBefore := settledRSS(), blocks()
	if err := typed(1000000); err != nil {
		return err
	}
	if err := rawCalls(100000); err != nil {
		return err
	}
	after, blocksAfter := settledRSS(), blocks()
	growth := float64(after-before) / (1 << 20)
	verdict := "met"
	if growth > 8 {
		verdict = "MISSED"
	}
	fmt.Printf("- RSS growth over 1,000,000 typed and 100,000 raw 64 KiB calls after warm-up: %.2f MiB (target at most 8 MiB) %s\n", growth, verdict)
	fmt.Printf("  (Python allocated blocks: %d before, %d after)\n", blocksBefore, blocksAfter)
	return nil
}

// workers measures worker mode (WithWorkers) against the go-plugin peer
// (gp, nil when it was skipped), the subprocess worker (sub) and the
// in-process CallRawAppend of 1 MiB (appendIn, ns per call).
func workers(ctx context.Context, pluginDir string, sub, gp map[string]float64, appendIn float64) error {
	one, err := fidius.LoadPythonPlugin(pluginDir, desc, fidius.WithWorkers(1))
	if err != nil {
		return err
	}
	defer one.Close()
	two, err := fidius.LoadPythonPlugin(pluginDir, desc, fidius.WithWorkers(2))
	if err != nil {
		return err
	}
	defer two.Close()
	small, big := make([]byte, 64), make([]byte, 1<<20)
	greetIn, crunchIn, longIn := []byte(`["World"]`), []byte(`[10000]`), []byte(`[100000]`)
	typed := func(h *fidius.PluginHandle, m int, in []byte) func() func() error {
		return func() func() error {
			return func() error { _, err := h.CallJSON(ctx, m, in); return err }
		}
	}
	raw := func(h *fidius.PluginHandle, in []byte) func() func() error {
		return func() func() error {
			buf := make([]byte, 0, len(in))
			return func() error { _, err := h.CallRawAppend(ctx, mEcho, buf[:0], in); return err }
		}
	}
	rows := []struct {
		name, key string
		workers   int
		mk        func() func() error
	}{
		{"noop · CallJSON", "noop", 1, typed(one, mNoop, nil)},
		{"greet · CallJSON", "greet", 1, typed(one, mGreet, greetIn)},
		{"echo 64 B · CallRawAppend", "echo64", 1, raw(one, small)},
		{"echo 1 MiB · CallRawAppend", "echo1m", 1, raw(one, big)},
		{"crunch: 10,000-step Python loop · CallJSON", "crunch", 1, typed(one, mCrunch, crunchIn)},
		{"crunch: 10,000-step Python loop · CallJSON", "crunch2", 2, typed(two, mCrunch, crunchIn)},
		{"crunch: 100,000-step Python loop · CallJSON", "long", 1, typed(one, mCrunch, longIn)},
		{"crunch: 100,000-step Python loop · CallJSON", "long2", 2, typed(two, mCrunch, longIn)},
	}
	fmt.Println("Worker mode (WithWorkers): the same calls in worker processes, beside go-plugin and the subprocess worker (1 goroutine per worker):")
	fmt.Println()
	fmt.Println("| call | workers | worker mode µs/call | go-plugin µs/call | go-plugin ÷ worker mode | subprocess µs/call |")
	fmt.Println("|---|--:|--:|--:|--:|--:|")
	got := map[string]float64{}
	for _, r := range rows {
		v, err := measure(r.workers, r.mk)
		if err != nil {
			return fmt.Errorf("worker mode, %s: %w", r.name, err)
		}
		got[r.key] = v
		peer, vs := "-", "-"
		if _, ok := gp[r.key]; ok {
			peer, vs = fmt.Sprintf("%.1f", gp[r.key]/1000), fmt.Sprintf("%.0fx", gp[r.key]/v)
		}
		subp := "-"
		if s, ok := sub[r.key]; ok {
			subp = fmt.Sprintf("%.1f", s/1000)
		}
		fmt.Printf("| %s | %d | %.1f | %s | %s | %s |\n", r.name, r.workers, v/1000, peer, vs, subp)
	}
	fmt.Println()
	fmt.Printf("RSS of one worker process: %.1f MiB\n\n", float64(childRSS())/(1<<20)/3)
	fmt.Println("Worker mode targets:")
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	if gp != nil {
		for _, k := range []string{"noop", "echo64"} {
			fmt.Printf("- %s, go-plugin ÷ worker mode: %.1fx (target at least 15x) %s\n", k, gp[k]/got[k], verdict(gp[k]/got[k] >= 15))
		}
	} else {
		fmt.Println("- against go-plugin: not measured (the peer was skipped)")
	}
	for _, k := range []string{"noop", "greet", "echo64", "echo1m", "crunch"} {
		fmt.Printf("- %s, subprocess worker ÷ worker mode: %.2fx (target at least 1x) %s\n", k, sub[k]/got[k], verdict(sub[k] >= got[k]))
	}
	fmt.Printf("- echo 1 MiB, worker mode ÷ in-process CallRawAppend: %.2fx (target at most 3x) %s\n", got["echo1m"]/appendIn, verdict(got["echo1m"] <= 3*appendIn))
	// A 10,000-step call takes about 260 µs, and on two cores the two
	// workers share them with the host's wake-ups; the longer call shows
	// what two workers give a CPU-bound plugin.
	fmt.Printf("- crunch (10,000 steps) throughput, 2 workers ÷ 1: %.2fx (for comparison with go-plugin)\n", got["crunch"]/got["crunch2"])
	fmt.Printf("- crunch (100,000 steps) throughput, 2 workers ÷ 1: %.2fx (target at least 1.7x) %s\n\n", got["long"]/got["long2"], verdict(got["long"]/got["long2"] >= 1.7))
	return nil
}

// childRSS is the RSS of this process's children: its worker processes.
func childRSS() int64 {
	entries, _ := os.ReadDir("/proc")
	var total int64
	me := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		var ppid, kb string
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "PPid:" {
				ppid = f[1]
			} else if len(f) >= 2 && f[0] == "VmRSS:" {
				kb = f[1]
			}
		}
		if ppid == me {
			n, _ := strconv.ParseInt(kb, 10, 64)
			total += n << 10
		}
	}
	return total
}

// figures reads "key value" lines, as floor and the go-plugin peer print
// them.
func figures(out []byte) map[string]float64 {
	res := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			res[f[0]], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return res
}
