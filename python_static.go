//go:build fidius_static

// This file links libpython statically (the build tag fidius_static): the
// archive comes first on the link line through CGO_LDFLAGS (see the
// README), so pkg-config's shared libpython, after --as-needed, is not
// linked at all. -E exports the C API from the executable: extension
// modules (numpy, _ssl, ...) are shared objects that look it up there.

package fidius

// #cgo pkg-config: python3-embed
// #cgo LDFLAGS: -Wl,-E -Wl,--as-needed
import "C"
