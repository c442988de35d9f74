// This file owns host functions: Go functions a host offers its plugins
// under a named, versioned and hashed host interface, which a plugin
// declares it imports and calls through the SDK's fidius.host() while one
// of its methods runs.

package fidius

/*
#include "fidius.h"
*/
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// hostImportsAttr is the module attribute by which a plugin declares the
// host interfaces it imports.
const hostImportsAttr = "__fidius_host_imports__"

// binding is the host interfaces one handle's plugin imports, by name.
type binding map[string]*HostInterface

// bindings maps the ids C slots hold to their bindings: C holds no Go
// pointer.
var bindings = struct {
	sync.RWMutex
	m    map[uintptr]binding
	last uintptr
}{m: map[uintptr]binding{}}

// bind checks the plugin's declared imports against the offered host
// interfaces and returns the binding of those it imports. GIL held.
func (p *plugin) bind(mod *pyObject) (binding, error) {
	decl := mod.getAttr(hostImportsAttr)
	if decl == nil {
		clearError()
		return nil, nil // imports nothing
	}
	defer decl.decRef()
	// Read through JSON: the declaration is plain data.
	raw, err := encodeValue(decl)
	if err != nil {
		return nil, p.badImports("%s is not plain data: %v", hostImportsAttr, err)
	}
	return p.bindJSON(raw)
}

func (p *plugin) badImports(format string, args ...any) error {
	return fmt.Errorf("%w: module %q: %s", ErrHostImport, p.entry, fmt.Sprintf(format, args...))
}

// bindJSON is bind for the declaration's JSON.
func (p *plugin) bindJSON(raw []byte) (binding, error) {
	bad := p.badImports
	var imports map[string]struct {
		Version *uint32 `json:"version"`
		Hash    *uint64 `json:"hash"`
	}
	if err := json.Unmarshal(raw, &imports); err != nil {
		return nil, bad(`%s must be {"Name": {"version": N, "hash": H}, ...}: %v`, hostImportsAttr, err)
	}
	b := binding{}
	for name, want := range imports {
		if want.Version == nil || want.Hash == nil {
			return nil, bad("%s[%q] needs both a version and a hash", hostImportsAttr, name)
		}
		hi := p.hosts[name]
		switch {
		case hi == nil:
			return nil, bad("imports host interface %q, which the host does not offer (it offers %s)", name, p.offered())
		case hi.Version != *want.Version:
			return nil, bad("imports host interface %q version %d, the host offers version %d", name, *want.Version, hi.Version)
		case hi.Hash != *want.Hash:
			return nil, bad("imports host interface %q with hash %#016x, the host's has hash %#016x", name, *want.Hash, hi.Hash)
		}
		b[name] = hi
	}
	return b, nil
}

func (p *plugin) offered() string {
	if len(p.hosts) == 0 {
		return "none"
	}
	s := ""
	for name := range p.hosts {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%q", name)
	}
	return s
}

// encodeValue returns o's JSON, strictly. GIL held.
func encodeValue(o *pyObject) ([]byte, error) {
	r := C.fidius_encode_value(toC(o))
	out := C.GoBytes(unsafe.Pointer(r.data), C.int(r.len))
	if r.status != C.FIDIUS_OK {
		return nil, errors.New(string(out))
	}
	return out, nil
}

// setBinding makes b the slot's binding, replacing (and forgetting) the
// one it had. GIL held, so that no host call reads the slot meanwhile.
func setBinding(slot *C.fidius_slot, b binding) {
	bindings.Lock()
	defer bindings.Unlock()
	if old := uintptr(slot.host); old != 0 {
		delete(bindings.m, old)
	}
	slot.host = 0
	if len(b) > 0 {
		bindings.last++
		bindings.m[bindings.last] = b
		slot.host = C.uintptr_t(bindings.last)
	}
}

// hostAnswer is what fidiusHostCall hands back to C.
func hostAnswer(b []byte) {
	C.fidius_host_put(bytesPtr(b), C.size_t(len(b)))
}

//export fidiusHostCall
func fidiusHostCall(id C.uintptr_t, name *C.char, nameLen C.size_t, method *C.char, methodLen C.size_t, args *C.char, argsLen C.size_t) C.int {
	iface := C.GoStringN(name, C.int(nameLen))
	fn := C.GoStringN(method, C.int(methodLen))
	in := json.RawMessage(C.GoBytes(unsafe.Pointer(args), C.int(argsLen)))
	bindings.RLock()
	b := bindings.m[uintptr(id)]
	bindings.RUnlock()
	// The thread leaves the gate while Go runs: the function may call
	// another plugin, and that call must not wait for this one's place.
	// It comes back without waiting: the plugin code it returns to may
	// hold what the thread that took the place waits for (a lock).
	gate.leave()
	out, ok := b.call(iface, fn, in)
	gate.reenter()
	hostAnswer(out)
	if !ok {
		return -1
	}
	return 1
}

// call runs host function iface.fn with args, a JSON array, for a
// plugin. It returns the result's JSON and true, or the JSON object of
// the error the plugin raises ({"code", "message", "details"}) and false.
func (b binding) call(iface, fn string, in json.RawMessage) (out []byte, ok bool) {
	fail := func(code, msg string, details json.RawMessage) ([]byte, bool) {
		if len(details) > 0 && !json.Valid(details) {
			details = nil // a PluginError's details that are not JSON: its code and message still go
		}
		b, _ := json.Marshal(struct {
			Code    string          `json:"code"`
			Message string          `json:"message"`
			Details json.RawMessage `json:"details,omitempty"`
		}{code, msg, details})
		return b, false
	}
	hi := b[iface]
	if hi == nil {
		return fail("HOST_NOT_IMPORTED", fmt.Sprintf("host interface %q is not imported: declare it in %s", iface, hostImportsAttr), nil)
	}
	f := hi.Funcs[fn]
	if f == nil {
		return fail("HOST_NO_METHOD", fmt.Sprintf("host interface %q has no function %q", iface, fn), nil)
	}
	defer func() {
		// A panic must not unwind through C, nor end the host.
		if p := recover(); p != nil {
			out, ok = fail("HOST_PANIC", fmt.Sprintf("host function %s.%s panicked: %v", iface, fn, p), nil)
		}
	}()
	res, err := f(in)
	if err != nil {
		var perr *PluginError
		if errors.As(err, &perr) {
			return fail(perr.Code, perr.Message, perr.Details)
		}
		return fail("HOST_ERROR", err.Error(), nil)
	}
	out, err = marshalArg(res)
	if err != nil {
		return fail("HOST_ERROR", fmt.Sprintf("the result of host function %s.%s does not encode: %v", iface, fn, err), nil)
	}
	return out, true
}
