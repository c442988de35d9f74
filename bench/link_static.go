//go:build fidius_static

package main

import (
	"os"
	"strings"
)

// staticBuild reports whether the library links libpython statically.
const staticBuild = true

func linkMode() string { return ", libpython linked statically" }

// staticFlags links the floor as the library is linked: the archive named
// in CGO_LDFLAGS, the C API exported.
func staticFlags() string {
	cflags, _ := pkgConfig("--cflags")
	return strings.Join([]string{"-no-pie", cflags, os.Getenv("CGO_LDFLAGS"), "-Wl,-E"}, " ")
}
