//go:build cgo

package fidius

import (
	"errors"
	"testing"
)

const configuredSource = `
__interface_hash__ = 0x1234

class Greeter:
    def __init__(self, config):
        self.config = config

    def greet(self, name):
        return f"{self.config['greeting']}, {name}{self.config['punctuation']}"

    def config_types(self):
        return {k: type(v).__name__ for k, v in self.config.items()}

def __fidius_configure__(config):
    if config.get("greeting") == "":
        raise ValueError("greeting must not be empty")
    return Greeter(config)
`

type greeterConfig struct {
	Greeting    string   `json:"greeting"`
	Punctuation string   `json:"punctuation"`
	Repeat      int      `json:"repeat"`
	Ratio       float64  `json:"ratio"`
	Tags        []string `json:"tags"`
	Extra       *struct {
		On bool `json:"on"`
	} `json:"extra"`
}

func TestConfiguredInstances(t *testing.T) {
	dir, d := simplePlugin(t, configuredSource, MethodDesc{Name: "greet"}, MethodDesc{Name: "config_types"})
	hello, err := LoadPythonPluginConfigured(dir, d, greeterConfig{Greeting: "Hello", Punctuation: "!", Ratio: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	defer hello.Close()
	howdy, err := LoadPythonPluginConfigured(dir, d, greeterConfig{Greeting: "Howdy", Punctuation: "."})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		h    *PluginHandle
		want string
	}{{hello, "Hello, Ann!"}, {howdy, "Howdy, Ann."}} {
		if got, err := Call[string](ctx, c.h, 0, "Ann"); err != nil || got != c.want {
			t.Fatalf("got %q, %v, want %q", got, err, c.want)
		}
	}
	types, err := Call[map[string]string](ctx, hello, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"greeting": "str", "punctuation": "str", "repeat": "int", "ratio": "float", "tags": "NoneType", "extra": "NoneType"}
	for k, v := range want {
		if types[k] != v {
			t.Errorf("config[%q] arrived as %s, want %s", k, types[k], v)
		}
	}
	// Closing one instance leaves the other working.
	hello.Close()
	if _, err := Call[string](ctx, hello, 0, "Ann"); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed instance: %v", err)
	}
	if got, err := Call[string](ctx, howdy, 0, "Bo"); err != nil || got != "Howdy, Bo." {
		t.Fatalf("other instance after Close: %q, %v", got, err)
	}
}

func TestConfiguredFailures(t *testing.T) {
	t.Run("missing_configure", func(t *testing.T) {
		dir, d := simplePlugin(t, "def greet(n): return n\n", MethodDesc{Name: "greet"})
		_, err := LoadPythonPluginConfigured(dir, d, map[string]int{"a": 1})
		wantErr(t, err, ErrMissingAttr, "__fidius_configure__", moduleName(t))
	})
	t.Run("configure_raises", func(t *testing.T) {
		dir, d := simplePlugin(t, configuredSource, MethodDesc{Name: "greet"})
		_, err := LoadPythonPluginConfigured(dir, d, greeterConfig{})
		wantErr(t, err, ErrImportFailed, "__fidius_configure__", "ValueError", "greeting must not be empty")
		var ie *ImportError
		if !errors.As(err, &ie) || ie.Type != "ValueError" || ie.Message != "greeting must not be empty" || ie.Func != "__fidius_configure__" {
			t.Fatalf("ImportError = %+v", ie)
		}
	})
	t.Run("method_missing_on_instance", func(t *testing.T) {
		dir, d := simplePlugin(t, configuredSource, MethodDesc{Name: "wave"})
		_, err := LoadPythonPluginConfigured(dir, d, greeterConfig{Greeting: "Hi"})
		wantErr(t, err, ErrMethodNotRegistered, `"wave"`)
	})
	t.Run("config_does_not_marshal", func(t *testing.T) {
		dir, d := simplePlugin(t, configuredSource, MethodDesc{Name: "greet"})
		_, err := LoadPythonPluginConfigured(dir, d, func() {})
		wantErr(t, err, ErrInputDecode, "config")
	})
}

// WithConfig loads a configured plugin; LoadPythonPluginConfigured's own
// config wins over it.
func TestWithConfig(t *testing.T) {
	dir, d := simplePlugin(t, configuredSource, MethodDesc{Name: "greet"}, MethodDesc{Name: "config_types"})
	viaOption, err := LoadPythonPlugin(dir, d, WithConfig(greeterConfig{Greeting: "Hi", Punctuation: "?", Ratio: 2}))
	if err != nil {
		t.Fatal(err)
	}
	defer viaOption.Close()
	if got, err := Call[string](ctx, viaOption, 0, "Bo"); err != nil || got != "Hi, Bo?" {
		t.Errorf("WithConfig: %q, %v", got, err)
	}
	if types, err := Call[map[string]string](ctx, viaOption, 1); err != nil || types["ratio"] != "float" {
		t.Errorf("a Go float in a config arrives as a float: %v, %v", types, err)
	}
	both, err := LoadPythonPluginConfigured(dir, d, greeterConfig{Greeting: "Yo", Punctuation: "!"}, WithConfig(greeterConfig{Greeting: "Hi"}))
	if err != nil {
		t.Fatal(err)
	}
	defer both.Close()
	if got, err := Call[string](ctx, both, 0, "Bo"); err != nil || got != "Yo, Bo!" {
		t.Errorf("the argument's config should win: %q, %v", got, err)
	}
}
