// Command greeter is a small fidius host: it loads the Python plugin in
// ./plugin, makes a typed call, a raw call and a call that raises a
// fidius.PluginError, and prints each result or error.
//
//	go run ./examples/greeter
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/fidius-go/fidius"
)

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
	_, self, _, _ := runtime.Caller(0)
	dir := flag.String("plugin", filepath.Join(filepath.Dir(self), "plugin"), "plugin package directory")
	flag.Parse()
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "greeter:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
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
	fmt.Printf("greet(\"World\") = %q\n", greeting)

	reversed, err := h.CallRaw(ctx, 1, []byte("fidius"))
	if err != nil {
		return err
	}
	fmt.Printf("reverse(b\"fidius\") = %q\n", reversed)

	_, err = h.CallJSON(ctx, 2, nil)
	var perr *fidius.PluginError
	if !errors.As(err, &perr) {
		return fmt.Errorf("fail() did not raise a plugin error: %v", err)
	}
	fmt.Printf("fail() raised code=%s message=%q details=%s\n", perr.Code, perr.Message, perr.Details)
	return nil
}
