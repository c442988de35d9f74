//go:build cgo

package fidius

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

func TestOptionalMethods(t *testing.T) {
	// The hash covers the required methods only, as fidius's macro computes
	// it; the plugin declares the same number with or without "extra".
	hash := InterfaceHash(SignatureString("core", []string{"u32"}, "u32", false, false, false))
	d := &InterfaceDescriptor{InterfaceName: "Opt", InterfaceHash: hash, Methods: []MethodDesc{
		{Name: "core"}, {Name: "extra", Optional: true}, {Name: "ticks", Optional: true, Streaming: true},
	}}
	mod := moduleName(t)
	src := func(body string) string {
		return "__interface_hash__ = " + hexHash(hash) + "\ndef core(x):\n    return x + 1\n" + body
	}
	dir := writePackage(t, mod, map[string]string{mod + ".py": src("")})
	h := mustLoad(t, dir, d)
	if !h.Implements(0) || h.Implements(1) || h.Implements(2) || h.Implements(3) || h.Implements(-1) {
		t.Errorf("Implements: %v %v %v", h.Implements(0), h.Implements(1), h.Implements(2))
	}
	if got, err := Call[int](ctx, h, 0, 1); err != nil || got != 2 {
		t.Errorf("core(1) = %d, %v", got, err)
	}
	_, err := h.CallJSON(ctx, 1, nil)
	wantErr(t, err, ErrMethodAbsent, `method "extra" of interface "Opt" is optional`)
	for _, err := range h.CallStream(ctx, 2, nil) {
		wantErr(t, err, ErrMethodAbsent, `"ticks"`)
	}
	if errors.Is(err, ErrMethodNotRegistered) {
		t.Error("an absent optional method matches ErrMethodNotRegistered")
	}

	// A reload that adds it: the handle has it from then on.
	writeFile(t, filepath.Join(dir, mod+".py"), src("def extra():\n    return 'here'\n"))
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if !h.Implements(1) {
		t.Error("Implements(extra) is false after a reload that defines it")
	}
	if got, err := Call[string](ctx, h, 1); err != nil || got != "here" {
		t.Errorf("extra() = %q, %v", got, err)
	}

	// Present but not callable is an error, optional or not.
	bad := writePackage(t, mod+"_bad", map[string]string{mod + "_bad.py": src("extra = 3\n")})
	_, err = LoadPythonPlugin(bad, d)
	wantErr(t, err, ErrMethodNotRegistered, `"extra"`, "not callable")
}

func hexHash(h uint64) string { return fmt.Sprintf("0x%x", h) }
