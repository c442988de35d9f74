//go:build cgo

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

// ticker describes the interface of testdata/ticker: one method that
// streams its results.
var ticker = &fidius.InterfaceDescriptor{
	InterfaceName: "Ticker",
	InterfaceHash: fidius.InterfaceHash(fidius.SignatureString("ticks", []string{"u32"}, "u32", false, true, false)),
	Methods:       []fidius.MethodDesc{{Name: "ticks", Streaming: true}},
}

func ExamplePluginHandle_CallStream() {
	h, err := fidius.LoadPythonPlugin("testdata/ticker", ticker)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	for item, err := range h.CallStream(context.Background(), 0, []byte(`[4]`)) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Print(string(item), " ")
	}
	fmt.Println()
	// Output: 0 1 2 3
}

func ExampleLoadPythonPluginConfigured() {
	type config struct {
		Step int `json:"step"`
	}
	tens, err := fidius.LoadPythonPluginConfigured("testdata/ticker", ticker, config{Step: 10})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tens.Close()
	for item, err := range tens.CallStream(context.Background(), 0, []byte(`[3]`)) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Print(string(item), " ")
	}
	fmt.Println()
	// Output: 0 10 20
}
