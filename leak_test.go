//go:build cgo

package fidius

import (
	"errors"
	"fmt"
	"testing"
)

// TestNoPythonLeakPerCall checks that calls of every outcome give back
// every Python object they make: the interpreter's count of allocated
// memory blocks does not grow with the number of calls.
func TestNoPythonLeakPerCall(t *testing.T) {
	h := greeter(t)
	greet, reverse, fail, keyErr := idx(t, h, "greet"), idx(t, h, "reverse"), idx(t, h, "fail"), idx(t, h, "key_error")
	value, echo, blocks := idx(t, h, "value"), idx(t, h, "echo"), idx(t, h, "allocated_blocks")
	big := make([]byte, 100<<10) // takes the pending-result path
	mixed := func(n int) {
		for i := 0; i < n; i++ {
			var err error
			switch i % 8 {
			case 0:
				_, err = Call[string](ctx, h, greet, "leak")
			case 1:
				_, err = h.CallRaw(ctx, reverse, []byte("abcdef"))
			case 2:
				_, err = h.CallRaw(ctx, reverse, big)
			case 3:
				_, err = h.CallJSON(ctx, fail, nil)
				var perr *PluginError
				if errors.As(err, &perr) {
					err = nil
				}
			case 4:
				_, err = h.CallJSON(ctx, keyErr, nil)
				var perr *PluginError
				if errors.As(err, &perr) {
					err = nil
				}
			case 5:
				_, err = h.CallJSON(ctx, value, []byte(`"nan"`))
				if errors.Is(err, ErrOutputEncode) {
					err = nil
				}
			case 6:
				_, err = h.CallJSON(ctx, echo, []byte(`[1, {"a": [2, 3.5, "x"]}, 123456789012345678901234567890, [1,`))
				if errors.Is(err, ErrInputDecode) {
					err = nil
				}
			case 7:
				_, err = h.CallJSON(ctx, value, []byte(`"nested_dataclass"`))
			}
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
	}
	count := func() int {
		n, err := Call[int](ctx, h, blocks)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	mixed(2000)
	before := count()
	mixed(20000)
	after := count()
	// Caches the interpreter fills once (line caches for tracebacks, type
	// caches) move the count by tens of blocks; a leak in one call kind in
	// eight adds thousands.
	if after-before > 500 {
		t.Fatalf("allocated blocks grew from %d to %d over 20,000 calls", before, after)
	}
}

// TestNoLeakOfDataclassesDefinedPerCall returns an instance of a dataclass
// the method defines anew on every call: once the call is over, the class
// must be collectable.
func TestNoLeakOfDataclassesDefinedPerCall(t *testing.T) {
	sharedOnly(t, "it counts blocks through another plugin, in another interpreter")
	g := greeter(t)
	dir, d := simplePlugin(t, `
import dataclasses

def make(n):
    @dataclasses.dataclass
    class Local:
        n: int
        label: str = "local"
    return Local(n)
`, MethodDesc{Name: "make"})
	h := mustLoad(t, dir, d)
	calls := func(n int) {
		for i := 0; i < n; i++ {
			out, err := h.CallJSON(ctx, 0, []byte(fmt.Sprint(i)))
			if err != nil || string(out) != fmt.Sprintf(`{"n":%d,"label":"local"}`, i) {
				t.Fatalf("call %d: %s, %v", i, out, err)
			}
		}
	}
	count := func() int {
		n, err := Call[int](ctx, g, idx(t, g, "allocated_blocks"))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	calls(200)
	before := count()
	calls(2000)
	if after := count(); after-before > 500 {
		t.Fatalf("allocated blocks grew from %d to %d over 2,000 calls", before, after)
	}
}

// TestReloadReleasesTheOldModule checks that nothing the library keeps (the
// dataclass field cache, the SDK registry) holds on to a module a reload
// replaced.
func TestReloadReleasesTheOldModule(t *testing.T) {
	sharedOnly(t, "its probe imports another plugin's module")
	probeDir, probeDesc := simplePlugin(t, `
import gc
REFS = []
def alive():
    gc.collect()
    return [r() is not None for r in REFS]
`, MethodDesc{Name: "alive"})
	probe := mustLoad(t, probeDir, probeDesc)
	probeMod := moduleName(t)
	dir, d := simplePlugin(t, `
import dataclasses, weakref
from fidius import method
import `+probeMod+` as probe

class Marker:
    pass

MARKER = Marker()
probe.REFS.append(weakref.ref(MARKER))

@dataclasses.dataclass
class Point:
    x: int

@method
def point():
    return Point(1)
`, MethodDesc{Name: "point"})
	h := mustLoad(t, dir, d)
	for i := 0; i < 3; i++ {
		if out, err := h.CallJSON(ctx, 0, nil); err != nil || string(out) != `{"x":1}` {
			t.Fatalf("call before reload %d: %s, %v", i, out, err)
		}
		if err := h.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	alive, err := Call[[]bool](ctx, probe, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(alive) != "[false false false true]" {
		t.Fatalf("modules alive after three reloads (oldest first): %v, want only the current one", alive)
	}
}
