//go:build cgo

package fidius

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestAPISameWithoutCgo checks that a build without cgo exports the same
// names with the same signatures, so that code written against the full
// package builds with CGO_ENABLED=0 too.
func TestAPISameWithoutCgo(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH: cannot list the package's API")
	}
	api := func(cgo string) []string {
		cmd := exec.Command(goTool, "doc", "-all", "-short", ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go doc with CGO_ENABLED=%s: %v", cgo, err)
		}
		var decls []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "func ") || strings.HasPrefix(line, "type ") ||
				strings.HasPrefix(line, "const ") || strings.HasPrefix(line, "var ") {
				decls = append(decls, strings.TrimSpace(line))
			}
		}
		slices.Sort(decls)
		return decls
	}
	with, without := api("1"), api("0")
	if len(with) < 40 {
		t.Fatalf("go doc listed only %d declarations:\n%s", len(with), strings.Join(with, "\n"))
	}
	for _, d := range with {
		if !slices.Contains(without, d) {
			t.Errorf("missing without cgo: %s", d)
		}
	}
	for _, d := range without {
		if !slices.Contains(with, d) {
			t.Errorf("only without cgo: %s", d)
		}
	}
}
