//go:build !fidius_py310 && !fidius_py311 && !fidius_py312 && !fidius_py313 && !fidius_static

// This file selects the CPython the library builds against when no version
// tag is given: the system's default, as pkg-config names it.

package fidius

// #cgo pkg-config: python3-embed
import "C"
