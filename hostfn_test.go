//go:build cgo

package fidius

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slotHost is a host interface in the shape of fidius's SlotHost example.
func slotHost(free *atomic.Int64, other *PluginHandle) *HostInterface {
	return &HostInterface{
		Name:    "SlotHost",
		Version: 1,
		Hash:    InterfaceHash("release_slot:String->", "free_slots:->i64"),
		Funcs: map[string]HostFunc{
			"release_slot": func(args json.RawMessage) (any, error) {
				var a []string
				if err := json.Unmarshal(args, &a); err != nil || len(a) != 1 {
					return nil, &PluginError{Code: "BAD_ARGS", Message: "release_slot(task_id)", Details: json.RawMessage(`{"got":` + string(args) + `}`)}
				}
				free.Add(1)
				return nil, nil
			},
			"free_slots": func(json.RawMessage) (any, error) { return free.Load(), nil },
			"ratio":      func(json.RawMessage) (any, error) { return 2.0, nil },
			"broken":     func(json.RawMessage) (any, error) { return nil, errors.New("disk on fire") },
			"panics":     func(json.RawMessage) (any, error) { panic("boom") },
			"sleep": func(json.RawMessage) (any, error) {
				time.Sleep(300 * time.Millisecond)
				return "slept", nil
			},
			// Calls another plugin from inside a host function.
			"greet_via": func(args json.RawMessage) (any, error) {
				var a []string
				json.Unmarshal(args, &a)
				i, _ := other.Descriptor().MethodIndex("greet")
				return Call[string](ctx, other, i, a[0])
			},
		},
	}
}

func slotPluginSource(hash uint64, version int) string {
	return fmt.Sprintf(`import fidius

__fidius_host_imports__ = {"SlotHost": {"version": %d, "hash": %#x}}

def execute(task_id):
    h = fidius.host("SlotHost")
    before = h.free_slots()
    h.release_slot(task_id)
    return [before, h.free_slots(), h.ratio()]

def errors():
    out = []
    for fn, args in (("release_slot", (1, 2)), ("broken", ()), ("panics", ()), ("missing", ())):
        try:
            getattr(fidius.host("SlotHost"), fn)(*args)
            out.append("no error")
        except fidius.PluginError as e:
            out.append([e.code, e.message, e.details])
    try:
        fidius.host("Other").anything()
    except fidius.PluginError as e:
        out.append([e.code, e.message, None])
    return out

def sleep():
    return fidius.host("SlotHost").sleep()

def greet_via(name):
    return fidius.host("SlotHost").greet_via(name)

def no_json():
    return fidius.host("SlotHost").free_slots(object())
`, version, hash)
}

func TestHostFunctions(t *testing.T) {
	var free atomic.Int64
	other := greeter(t)
	hi := slotHost(&free, other)
	methods := []MethodDesc{{Name: "execute"}, {Name: "errors"}, {Name: "sleep"}, {Name: "greet_via"}, {Name: "no_json"}}
	dir, d := simplePlugin(t, slotPluginSource(hi.Hash, 1), methods...)
	h, err := LoadPythonPlugin(dir, d, WithHostInterface(hi))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	got, err := Call[[]any](ctx, h, 0, "t1")
	if err != nil || fmt.Sprint(got) != "[0 1 2]" {
		t.Errorf("execute: %v, %v", got, err)
	}
	var floats []json.RawMessage
	if raw, err := h.CallJSON(ctx, 0, []byte(`["t2"]`)); err != nil || json.Unmarshal(raw, &floats) != nil || string(floats[2]) != "2.0" {
		t.Errorf("a host float arrives as a Python float: %s, %v", raw, err)
	}

	out, err := h.CallJSON(ctx, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`["BAD_ARGS","release_slot(task_id)",{"got":[1,2]}]`,
		`["HOST_ERROR","disk on fire",null]`,
		`["HOST_PANIC","host function SlotHost.panics panicked: boom",null]`,
		`["HOST_NO_METHOD","host interface \"SlotHost\" has no function \"missing\"",null]`,
		`["HOST_NOT_IMPORTED","host interface \"Other\" is not imported: declare it in __fidius_host_imports__",null]`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("errors: %s lacks %s", out, want)
		}
	}
	_, err = h.CallJSON(ctx, 4, nil)
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "TypeError" || !strings.Contains(perr.Message, "object has no JSON form") {
		t.Errorf("an argument with no JSON form: %v", err)
	}

	// A host function may call another plugin, even with one thread
	// allowed into Python: the host function's thread leaves its place.
	prev := SetThreadLimit(1)
	defer SetThreadLimit(prev)
	err = guarded(t, func() error {
		s, err := Call[string](ctx, h, 3, "Go")
		if err == nil && s != "Hello, Go!" {
			err = fmt.Errorf("greet_via: %q", s)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	SetThreadLimit(prev)

	// The GIL is released while the host function runs.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if s, err := Call[string](ctx, h, 2); err != nil || s != "slept" {
			t.Errorf("sleep: %q, %v", s, err)
		}
	}()
	time.Sleep(50 * time.Millisecond)
	wantGILFree(t, other, "a host function slept")
	wg.Wait()
}

func TestHostImportsCheckedAtLoad(t *testing.T) {
	var free atomic.Int64
	hi := slotHost(&free, nil)
	for _, c := range []struct {
		name, src string
		opts      []Option
		want      string
	}{
		{"not offered", slotPluginSource(hi.Hash, 1), nil, `imports host interface "SlotHost", which the host does not offer (it offers none)`},
		{"version", slotPluginSource(hi.Hash, 2), []Option{WithHostInterface(hi)}, `imports host interface "SlotHost" version 2, the host offers version 1`},
		{"hash", slotPluginSource(hi.Hash+1, 1), []Option{WithHostInterface(hi)}, "the host's has hash"},
		{"malformed", "__fidius_host_imports__ = {'SlotHost': 1}\n", []Option{WithHostInterface(hi)}, "__fidius_host_imports__ must be"},
		{"half", "__fidius_host_imports__ = {'SlotHost': {'version': 1}}\n", []Option{WithHostInterface(hi)}, "needs both a version and a hash"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, d := simplePlugin(t, c.src, MethodDesc{Name: "execute"})
			d.Methods = nil
			_, err := LoadPythonPlugin(dir, d, c.opts...)
			wantErr(t, err, ErrHostImport, c.want)
		})
	}

	// A plugin that imports nothing loads whatever the host offers, and
	// its calls to host functions are refused at the call.
	dir, d := simplePlugin(t, "import fidius\ndef f():\n    return fidius.host('SlotHost').free_slots()\n", MethodDesc{Name: "f"})
	h, err := LoadPythonPlugin(dir, d, WithHostInterface(hi))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	_, err = h.CallJSON(ctx, 0, nil)
	var perr *PluginError
	if !errors.As(err, &perr) || perr.Code != "HOST_UNBOUND" {
		t.Errorf("unbound call: %v", err)
	}
}
