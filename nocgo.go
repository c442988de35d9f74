//go:build !cgo

// This file stands in for the files that embed CPython when the package
// is built without cgo (CGO_ENABLED=0). The exported API is the same, so
// a program that only reads manifests, digests, signs, verifies, unpacks
// or discovers packages builds and works; everything that would run
// Python returns ErrCgoRequired.

package fidius

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"sync/atomic"
)

// PluginHandle is a loaded Python plugin. Without cgo no plugin can be
// loaded, so no handle exists; the methods are here so that code using
// them builds.
type PluginHandle struct {
	plugin *plugin
}

func errNoCgo(what string) error { return fmt.Errorf("%s: %w", what, ErrCgoRequired) }

// Descriptor returns nil: no handle is ever loaded without cgo.
func (h *PluginHandle) Descriptor() *InterfaceDescriptor { return nil }

// Manifest returns nil: no handle is ever loaded without cgo.
func (h *PluginHandle) Manifest() *Manifest { return nil }

// Dir returns "": no handle is ever loaded without cgo.
func (h *PluginHandle) Dir() string { return "" }

// Implements returns false: no handle is ever loaded without cgo.
func (h *PluginHandle) Implements(i int) bool { return false }

// CallClientStream returns ErrCgoRequired.
func (h *PluginHandle) CallClientStream(ctx context.Context, i int, items iter.Seq2[json.RawMessage, error], args []byte) ([]byte, error) {
	return nil, errNoCgo("calling a plugin")
}

// CallBidiStream yields ErrCgoRequired once.
func (h *PluginHandle) CallBidiStream(ctx context.Context, i int, items iter.Seq2[json.RawMessage, error], args []byte) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) { yield(nil, errNoCgo("calling a plugin")) }
}

// MethodCount returns 0: no handle is ever loaded without cgo.
func (h *PluginHandle) MethodCount() int { return 0 }

// Close does nothing and returns nil.
func (h *PluginHandle) Close() error { return nil }

// CallJSON returns ErrCgoRequired.
func (h *PluginHandle) CallJSON(ctx context.Context, i int, input []byte) ([]byte, error) {
	return nil, errNoCgo("calling a plugin")
}

// CallRaw returns ErrCgoRequired.
func (h *PluginHandle) CallRaw(ctx context.Context, i int, input []byte) ([]byte, error) {
	return nil, errNoCgo("calling a plugin")
}

// CallRawAppend returns dst and ErrCgoRequired.
func (h *PluginHandle) CallRawAppend(ctx context.Context, i int, dst, input []byte) ([]byte, error) {
	return dst, errNoCgo("calling a plugin")
}

// CallStream yields ErrCgoRequired once.
func (h *PluginHandle) CallStream(ctx context.Context, i int, input []byte) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) { yield(nil, errNoCgo("calling a plugin")) }
}

// Reload returns ErrCgoRequired.
func (h *PluginHandle) Reload() error { return errNoCgo("reloading a plugin") }

// ReloadContext returns ErrCgoRequired.
func (h *PluginHandle) ReloadContext(ctx context.Context) error {
	return errNoCgo("reloading a plugin")
}

// LoadPythonPlugin returns ErrCgoRequired.
func LoadPythonPlugin(packageDir string, desc *InterfaceDescriptor, opts ...Option) (*PluginHandle, error) {
	return nil, errNoCgo("loading " + packageDir)
}

// LoadPythonPluginContext returns ErrCgoRequired.
func LoadPythonPluginContext(ctx context.Context, packageDir string, desc *InterfaceDescriptor, opts ...Option) (*PluginHandle, error) {
	return nil, errNoCgo("loading " + packageDir)
}

// LoadPythonPluginConfigured returns ErrCgoRequired.
func LoadPythonPluginConfigured(packageDir string, desc *InterfaceDescriptor, config any, opts ...Option) (*PluginHandle, error) {
	return nil, errNoCgo("loading " + packageDir)
}

// LoadPythonPluginConfiguredContext returns ErrCgoRequired.
func LoadPythonPluginConfiguredContext(ctx context.Context, packageDir string, desc *InterfaceDescriptor, config any, opts ...Option) (*PluginHandle, error) {
	return nil, errNoCgo("loading " + packageDir)
}

// InspectPythonPackage returns ErrCgoRequired.
func InspectPythonPackage(packageDir string) (*PackageReport, error) {
	return nil, errNoCgo("inspecting " + packageDir)
}

// InspectPythonPackageContext returns ErrCgoRequired.
func InspectPythonPackageContext(ctx context.Context, packageDir string) (*PackageReport, error) {
	return nil, errNoCgo("inspecting " + packageDir)
}

// PythonVersion returns "": no Python is linked without cgo.
func PythonVersion() string { return "" }

// UseVirtualEnv returns ErrCgoRequired.
func UseVirtualEnv(venvDir string) error { return errNoCgo("using " + venvDir) }

var threadLimit atomic.Int64

func init() { threadLimit.Store(DefaultThreadLimit) }

// SetThreadLimit records the limit and returns the previous one; without
// cgo no thread ever enters Python.
func SetThreadLimit(n int) int { return int(threadLimit.Swap(int64(max(n, 1)))) }
