// This file owns the interface descriptor a host loads plugins against, and
// the interface hash, computed exactly as fidius computes it.

package fidius

import (
	"sort"
	"strings"
)

// MethodDesc describes one method of an interface.
type MethodDesc struct {
	// Name is the attribute the method has in the plugin's entry module.
	Name string
	// WireRaw marks a method that takes and returns raw bytes (CallRaw)
	// instead of JSON (CallJSON).
	WireRaw bool
	// Streaming marks a method that returns a stream of results; it cannot
	// be called with CallJSON or CallRaw.
	Streaming bool
	// ClientStreaming marks a method that takes a stream of inputs: the
	// host's items arrive as an iterator, its first argument. Call it with
	// CallClientStream, or with CallBidiStream when it is also Streaming.
	// Such methods are typed (not WireRaw).
	ClientStreaming bool
	// Optional marks a method a plugin may leave out, as fidius's
	// #[optional] methods: it is not part of the interface hash, a plugin
	// without it loads, and calling it there is ErrMethodAbsent.
	// PluginHandle.Implements says whether the plugin has it.
	Optional bool
}

// InterfaceDescriptor is what a host knows of an interface: its name, its
// hash and its methods. Method i of the descriptor is method index i of
// every handle loaded with it.
type InterfaceDescriptor struct {
	// InterfaceName names the interface in errors and logs.
	InterfaceName string
	// InterfaceHash must equal the plugin's __interface_hash__.
	InterfaceHash uint64
	// Methods lists the methods in index order.
	Methods []MethodDesc
}

// MethodIndex returns the index of the method called name, and whether
// there is one.
func (d *InterfaceDescriptor) MethodIndex(name string) (int, bool) {
	for i, m := range d.Methods {
		if m.Name == name {
			return i, true
		}
	}
	return -1, false
}

// clone returns a copy that shares nothing with d: a handle keeps its own,
// so that a caller growing or editing its descriptor after the load cannot
// make the handle index past its method table.
func (d *InterfaceDescriptor) clone() *InterfaceDescriptor {
	c := *d
	c.Methods = append([]MethodDesc(nil), d.Methods...)
	return &c
}

// FNV-1a, 64-bit.
const (
	fnvOffset = 0xcbf29ce484222325
	fnvPrime  = 0x100000001b3
)

// InterfaceHash returns the interface hash of the given method signatures
// (see SignatureString): 64-bit FNV-1a of the signatures sorted bytewise
// and joined with "\n". The order of the arguments does not matter.
func InterfaceHash(signatures ...string) uint64 {
	sorted := append([]string(nil), signatures...)
	sort.Strings(sorted)
	h := uint64(fnvOffset)
	for i, s := range sorted {
		if i > 0 {
			h = (h ^ '\n') * fnvPrime
		}
		for j := 0; j < len(s); j++ {
			h = (h ^ uint64(s[j])) * fnvPrime
		}
	}
	return h
}

// SignatureString returns a method's signature as fidius spells it:
// name:argTypes->ret, then "!raw", "!stream" and "<stream" for raw-wire,
// result-streaming and input-streaming methods. ret is empty for a method
// that returns nothing. Type names must be written as fidius's Rust macro
// prints them, such as "Vec < u8 >".
func SignatureString(name string, argTypes []string, ret string, wireRaw, streaming, clientStreaming bool) string {
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte(':')
	b.WriteString(strings.Join(argTypes, ","))
	b.WriteString("->")
	b.WriteString(ret)
	if wireRaw {
		b.WriteString("!raw")
	}
	if streaming {
		b.WriteString("!stream")
	}
	if clientStreaming {
		b.WriteString("<stream")
	}
	return b.String()
}
