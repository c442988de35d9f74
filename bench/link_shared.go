//go:build !fidius_static

package main

// staticBuild reports whether the library links libpython statically.
const staticBuild = false

func linkMode() string { return "" }

func staticFlags() string { return "" }
