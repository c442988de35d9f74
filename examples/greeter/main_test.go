package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// The output the README shows for go run ./examples/greeter.
const want = `greet("World") = "Hello, World!"
reverse(b"fidius") = "suidif"
fail() raised code=BAD_INPUT message="deliberate failure" details={"got":42}
`

// The example finds its plugin from the working directory or its argument,
// never from where its source file was compiled, so a binary built with
// -trimpath, or moved, still runs.
func TestPluginDirectory(t *testing.T) {
	plugin, err := filepath.Abs("plugin")
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	t.Chdir(root)
	if code := greet(nil, &out, &errs); code != 0 || out.String() != want {
		t.Fatalf("from the repository's root: exit %d\n%s%s", code, &out, &errs)
	}

	t.Chdir(t.TempDir())
	out.Reset()
	if code := greet([]string{plugin}, &out, &errs); code != 0 || out.String() != want {
		t.Fatalf("elsewhere, given %s: exit %d\n%s%s", plugin, code, &out, &errs)
	}
	out.Reset()
	code := greet(nil, &out, &errs)
	if msg := errs.String(); code != 1 || out.Len() != 0 || !strings.Contains(msg, defaultPlugin+" does not exist") || !strings.Contains(msg, "greeter PLUGIN_DIR") {
		t.Fatalf("elsewhere, no directory: exit %d, %q", code, msg)
	}
	if code := greet([]string{"a", "b"}, &out, &errs); code != 2 {
		t.Fatalf("two arguments: exit %d", code)
	}
}
