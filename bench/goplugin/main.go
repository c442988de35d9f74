// Command goplugin is the benchmark's hashicorp/go-plugin peer: the same
// Python functions the bench's other harnesses call (bench/plugin), called
// through go-plugin over gRPC, with a Python plugin process (plugin.py, on
// grpcio) at the other end. It lives in its own module so that the
// library's go.mod never gains go-plugin's or gRPC's dependencies.
//
// Neither side has generated code: the host calls conn.Invoke with a codec
// that passes []byte through, the typed methods carry JSON and echo carries
// raw bytes.
//
// It prints "key ns_per_call" lines on stdout, nothing else (bench/main.go's
// runGoPlugin parses them): noop, greet, echo64, echo1m and crunch from one
// goroutine on one plugin process; crunch2, crunch from two goroutines each
// with its own process (total time over total calls); rss, the bytes of
// resident memory of one plugin process after its calls. Diagnostics go to
// stderr. Run it from this directory:
//
//	go run . -python /usr/bin/python3 -plugin ../plugin
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

var (
	python    = flag.String("python", "/usr/bin/python3", "a python with grpc (Debian: python3-grpcio) to run plugin.py")
	pluginDir = flag.String("plugin", "../plugin", "the directory of the bench's Python plugin (fidius_bench_plugin.py)")
	seconds   = flag.Float64("seconds", 1, "time spent measuring each row")
)

const (
	module  = "fidius_bench_plugin"
	service = "/fidius.bench.Bench/"
	// A 1 MiB echo plus gRPC's framing, with room to spare; plugin.py sets
	// the same limit on its side.
	maxMessage = 16 << 20
)

// handshake must match plugin.py's constants.
var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "FIDIUS_BENCH_GOPLUGIN",
	MagicCookieValue: "2f6c1c1e-fidius-bench",
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "goplugin:", err)
		os.Exit(1)
	}
}

func run() error {
	// plugin.py is found from the working directory, as bench/main.go finds
	// its files; go-plugin runs it with the plugin directory made absolute.
	script, err := filepath.Abs("plugin.py")
	if err != nil {
		return err
	}
	if _, err := os.Stat(script); err != nil {
		return fmt.Errorf("no plugin.py in the working directory: run from bench/goplugin (%w)", err)
	}
	dir, err := filepath.Abs(*pluginDir)
	if err != nil {
		return err
	}
	var procs []*proc
	// Every process is killed however run ends, so none outlives the bench.
	defer func() {
		for _, p := range procs {
			p.kill()
		}
	}()
	start := func() (*proc, error) {
		p, err := startPlugin(script, dir)
		if p != nil {
			procs = append(procs, p)
		}
		return p, err
	}
	one, err := start()
	if err != nil {
		return err
	}
	if err := one.check(); err != nil {
		return err
	}
	ctx := context.Background()
	call := func(p *proc, method string, in []byte) func() func() error {
		return func() func() error {
			return func() error { _, err := p.call(ctx, method, in); return err }
		}
	}
	small, big := make([]byte, 64), make([]byte, 1<<20)
	noopIn, greetIn, crunchIn := []byte(`[]`), []byte(`["World"]`), []byte(`[10000]`)
	rows := []struct {
		key string
		mk  func() func() error
	}{
		{"noop", call(one, "noop", noopIn)},
		{"greet", call(one, "greet", greetIn)},
		{"echo64", call(one, "echo", small)},
		{"echo1m", call(one, "echo", big)},
		{"crunch", call(one, "crunch", crunchIn)},
	}
	res := map[string]float64{}
	var keys []string
	for _, r := range rows {
		ns, err := measure(1, r.mk)
		if err != nil {
			return fmt.Errorf("%s: %w", r.key, err)
		}
		res[r.key] = ns
		keys = append(keys, r.key)
	}
	// Read now, warmed up by every row above, 1 MiB echoes included.
	rssBytes, err := vmRSS(one.pid)
	if err != nil {
		return err
	}
	two, err := start()
	if err != nil {
		return err
	}
	if err := two.check(); err != nil {
		return err
	}
	// measure makes one call function per goroutine, in order: the first
	// goroutine gets the first process, the second the second.
	var (
		mu   sync.Mutex
		next int
	)
	pair := []*proc{one, two}
	ns, err := measure(2, func() func() error {
		mu.Lock()
		p := pair[next%len(pair)]
		next++
		mu.Unlock()
		return call(p, "crunch", crunchIn)()
	})
	if err != nil {
		return fmt.Errorf("crunch2: %w", err)
	}
	res["crunch2"] = ns
	keys = append(keys, "crunch2")
	for _, k := range keys {
		fmt.Printf("%s %.1f\n", k, res[k])
	}
	fmt.Printf("rss %d\n", rssBytes)
	return nil
}

// proc is one plugin process and the gRPC connection go-plugin made to it.
type proc struct {
	client *plugin.Client
	conn   *grpc.ClientConn
	pid    int
}

func startPlugin(script, dir string) (*proc, error) {
	cmd := exec.Command(*python, script, dir, module)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake,
		Plugins:          plugin.PluginSet{"bench": benchPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         false,
		// The plugin's stderr (a traceback, say) reaches ours as it is;
		// go-plugin's own log says only what is wrong.
		Stderr: os.Stderr,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "goplugin", Output: os.Stderr, Level: hclog.Warn}),
	})
	p := &proc{client: client}
	rpc, err := client.Client()
	if err != nil {
		return p, fmt.Errorf("starting %s %s: %w", *python, script, err)
	}
	// go-plugin ran cmd itself, so cmd.Process is the python child.
	p.pid = cmd.Process.Pid
	if err := rpc.Ping(); err != nil {
		return p, fmt.Errorf("health check: %w", err)
	}
	raw, err := rpc.Dispense("bench")
	if err != nil {
		return p, err
	}
	p.conn = raw.(*grpc.ClientConn)
	return p, nil
}

// kill ends the process through go-plugin (Shutdown, then a wait for the
// exit), saying so if it took the forced path's 2 s.
func (p *proc) kill() {
	start := time.Now()
	p.client.Kill()
	if took := time.Since(start); took > time.Second {
		fmt.Fprintf(os.Stderr, "goplugin: killing plugin process %d took %v\n", p.pid, took)
	}
}

// callOptions make Invoke send and return []byte as they are; the larger
// limits are go-plugin's default already (it dials with MaxInt32), set here
// so this peer does not depend on that.
var callOptions = []grpc.CallOption{
	grpc.ForceCodec(rawCodec{}),
	grpc.MaxCallSendMsgSize(maxMessage),
	grpc.MaxCallRecvMsgSize(maxMessage),
}

func (p *proc) call(ctx context.Context, method string, in []byte) ([]byte, error) {
	var out []byte
	err := p.conn.Invoke(ctx, service+method, &in, &out, callOptions...)
	return out, err
}

// check calls each method once and compares the answers, so that a peer
// answering wrongly is an error and not a fast row.
func (p *proc) check() error {
	ctx := context.Background()
	const n = 10000
	want := []struct{ method, in, out string }{
		{"noop", `[]`, `null`},
		{"greet", `["World"]`, `"Hello, World!"`},
		{"crunch", `[10000]`, strconv.Itoa((n - 1) * n * (2*n - 1) / 6)},
		{"echo", "\x00raw\xffbytes", "\x00raw\xffbytes"},
	}
	for _, w := range want {
		out, err := p.call(ctx, w.method, []byte(w.in))
		if err != nil {
			return fmt.Errorf("%s: %w", w.method, err)
		}
		if string(out) != w.out {
			return fmt.Errorf("%s(%q) answered %q, want %q", w.method, w.in, out, w.out)
		}
	}
	return nil
}

// benchPlugin is go-plugin's view of the plugin: gRPC only, host side only.
type benchPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (benchPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("the server side is plugin.py")
}

// GRPCClient hands back the connection itself: calls go through Invoke,
// with no generated client to wrap it in.
func (benchPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return conn, nil
}

// rawCodec passes []byte through both ways. The []byte it unmarshals into
// is the message's own buffer: gRPC allocates one per received message (and
// from v1.66 on hands a v1 codec a materialized copy), so keeping it is safe.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*b = data
	return nil
}

// Name is the content-subtype sent (application/grpc+raw); grpcio's
// server accepts any and gives the bytes to the generic handlers as they are.
func (rawCodec) Name() string { return "raw" }

// measure calls fn from g goroutines in batches of at least 2 ms (so that
// garbage collection falls inside them) and returns the best batch's time
// per call, as bench/main.go's measure does. Each goroutine makes its call
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
		for _, fn := range fns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range n {
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

// vmRSS reads a process's resident set size from /proc/PID/status.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "39916 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
