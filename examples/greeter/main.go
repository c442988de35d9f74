// Command greeter is a small fidius host: it loads the Python plugin in
// the directory it is given (examples/greeter/plugin, relative to the
// working directory, by default), makes a typed call, a raw call and a call
// that raises a fidius.PluginError, and prints each result or error.
//
//	go run ./examples/greeter                   # from the repository's root
//	greeter path/to/examples/greeter/plugin     # a built binary, from anywhere
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/fidius-go/fidius"
)

// defaultPlugin is where the plugin is from the repository's root, where
// CI and the README run the example. The directory is not found from the
// source file's location: a binary built with -trimpath, or moved, has no
// such path.
const defaultPlugin = "examples/greeter/plugin"

// greeter describes the Greeter interface; the hash is
// fidius.InterfaceHash of the three signatures listed in the plugin.
var greeter = &fidius.InterfaceDescriptor{
	InterfaceName: "Greeter",
	InterfaceHash: 0xe59581c4ab5583dd,
	Methods: []fidius.MethodDesc{
		{Name: "greet"},
		{Name: "reverse", WireRaw: true},
		{Name: "fail"},
	},
}

func main() {
	os.Exit(greet(os.Args[1:], os.Stdout, os.Stderr))
}

// greet runs the example with the command-line arguments args and returns
// the exit status.
func greet(args []string, stdout, stderr io.Writer) int {
	dir := defaultPlugin
	switch len(args) {
	case 0:
	case 1:
		dir = args[0]
	default:
		fmt.Fprintln(stderr, "usage: greeter [PLUGIN_DIR]")
		return 2
	}
	if err := run(stdout, dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) && len(args) == 0 {
			err = fmt.Errorf("%w (run it from the repository's root, or pass the plugin directory: greeter PLUGIN_DIR)", err)
		}
		fmt.Fprintln(stderr, "greeter:", err)
		return 1
	}
	return 0
}

func run(out io.Writer, dir string) error {
	h, err := fidius.LoadPythonPlugin(dir, greeter)
	if err != nil {
		return err
	}
	defer h.Close()
	ctx := context.Background()

	greeting, err := fidius.Call[string](ctx, h, 0, "World")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "greet(\"World\") = %q\n", greeting)

	reversed, err := h.CallRaw(ctx, 1, []byte("fidius"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "reverse(b\"fidius\") = %q\n", reversed)

	_, err = h.CallJSON(ctx, 2, nil)
	var perr *fidius.PluginError
	if !errors.As(err, &perr) {
		return fmt.Errorf("fail() did not raise a plugin error: %v", err)
	}
	fmt.Fprintf(out, "fail() raised code=%s message=%q details=%s\n", perr.Code, perr.Message, perr.Details)
	return nil
}
