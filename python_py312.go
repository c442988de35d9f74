//go:build fidius_py312 && !fidius_static

// This file selects CPython 3.12 (the build tag fidius_py312): pkg-config's
// python-3.12-embed, found through PKG_CONFIG_PATH for an install outside
// the system's paths. Build tags are part of Go's build cache key, so
// switching versions by tag always rebuilds.

package fidius

// #cgo pkg-config: python-3.12-embed
import "C"
