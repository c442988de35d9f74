//go:build cgo

package fidius

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// childEnv names the test a child process was started to run.
const childEnv = "FIDIUS_TEST_CHILD"

// inChild reports whether this process is the child runChild started for
// t. A test whose body could crash or hang the test binary starts like:
//
//	if !inChild(t) {
//		out := runChild(t, 30*time.Second)
//		... assert on out ...
//		return
//	}
//	... the dangerous part, printing what the parent checks ...
func inChild(t *testing.T) bool {
	return os.Getenv(childEnv) == t.Name()
}

// childResult is how a child process ended.
type childResult struct {
	Output   string // stdout and stderr together
	ExitCode int    // -1 when it was killed (a signal, or the timeout)
	TimedOut bool
}

// runChild re-runs the test binary for t alone, with extra environment
// variables, and returns how it ended. It never fails t itself: the
// caller says which ending is right.
func runChild(t *testing.T, timeout time.Duration, env ...string) childResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+strings.ReplaceAll(t.Name(), "/", "$/^")+"$", "-test.count=1", "-test.v")
	cmd.Env = append(append(os.Environ(), childEnv+"="+t.Name()), env...)
	out, _ := cmd.CombinedOutput()
	r := childResult{Output: string(out), ExitCode: cmd.ProcessState.ExitCode(), TimedOut: ctx.Err() != nil}
	return r
}

// wantChildPass fails t unless the child passed; its output is shown.
func wantChildPass(t *testing.T, r childResult) {
	t.Helper()
	if r.TimedOut {
		t.Fatalf("the child process hung (killed after its timeout):\n%s", r.Output)
	}
	if r.ExitCode != 0 || !strings.Contains(r.Output, "--- PASS") {
		t.Fatalf("the child process failed (exit %d):\n%s", r.ExitCode, r.Output)
	}
}
