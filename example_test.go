package fidius_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/fidius-go/fidius"
)

// greeter describes the interface the example plugin implements.
var greeter = &fidius.InterfaceDescriptor{
	InterfaceName: "Greeter",
	InterfaceHash: fidius.InterfaceHash(
		"greet:String->String",
		"reverse:Vec < u8 >->Vec < u8 >!raw",
		"fail:->String",
	),
	Methods: []fidius.MethodDesc{
		{Name: "greet"},
		{Name: "reverse", WireRaw: true},
		{Name: "fail"},
	},
}

func ExampleLoadPythonPlugin() {
	h, err := fidius.LoadPythonPlugin("examples/greeter/plugin", greeter)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	out, err := h.CallJSON(context.Background(), 0, []byte(`["World"]`))
	fmt.Println(string(out), err)
	// Output: "Hello, World!" <nil>
}

func ExampleCall() {
	h, err := fidius.LoadPythonPlugin("examples/greeter/plugin", greeter)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	greeting, err := fidius.Call[string](context.Background(), h, 0, "Gopher")
	fmt.Println(greeting, err)
	// Output: Hello, Gopher! <nil>
}

func ExamplePluginHandle_CallRaw() {
	h, err := fidius.LoadPythonPlugin("examples/greeter/plugin", greeter)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	out, err := h.CallRaw(context.Background(), 1, []byte("stressed"))
	fmt.Println(string(out), err)
	// Output: desserts <nil>
}

func ExamplePluginError() {
	h, err := fidius.LoadPythonPlugin("examples/greeter/plugin", greeter)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	_, err = h.CallJSON(context.Background(), 2, nil)
	var perr *fidius.PluginError
	if errors.As(err, &perr) {
		fmt.Println(perr.Code, perr.Message, string(perr.Details))
	}
	// Output: BAD_INPUT deliberate failure {"got":42}
}
