// Command fidius-py lets Python plugin authors inspect, try, stub, pack,
// sign and verify a fidius package without writing a host.
//
//	fidius-py inspect [-v] [--timeout D] PATH    manifest, entry module, hash, methods
//	fidius-py call [--raw|--stream] [--stdin-stream] [--config JSON] [--isolated|--workers] [--python PY] [-v] [--timeout D] PATH METHOD [INPUT]
//	fidius-py stub [--go] --interface FILE.toml  a Python module, or the Go descriptor, for an interface
//	fidius-py hash --interface FILE.toml | SIGNATURE...
//	                                             the interface hash and its signatures
//	fidius-py pack [-o OUT] DIR                  a reproducible .fid archive of DIR
//	fidius-py unpack ARCHIVE [DEST]              unpack an archive, refusing unsafe entries
//	fidius-py digest PATH                        the package digest, hex
//	fidius-py sign --key NAME.secret DIR         write DIR/package.sig
//	fidius-py verify --key NAME.public PATH      check PATH's package.sig
//	fidius-py keygen [--force] NAME              write NAME.secret and NAME.public
//	fidius-py --version                          the library's and its Python's versions
//
// PATH is a package directory or a .fid archive. Flags may come anywhere
// among the arguments; "--" ends them. Keys are raw 32-byte Ed25519 seeds
// and public keys, as fidius's own CLI writes them; their file names tell
// the two kinds apart. Errors are one line on standard error (more with -v
// where a command has it) and a non-zero exit status, 2 for a mistake in
// the command line.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/format"
	"io"
	"iter"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/fidius-go/fidius"
)

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

// Error returns the message.
func (e usageError) Error() string { return e.msg }

type command struct {
	args, summary string
	run           func(fs *flag.FlagSet, args []string, out io.Writer) error
	flags         func(fs *flag.FlagSet)
}

var commands = map[string]command{}

func init() {
	commands["inspect"] = command{"[-v] [--timeout D] PATH", "show a package's manifest header, entry module, __interface_hash__, registered methods and whether it is configurable", inspect, func(fs *flag.FlagSet) {
		fs.Bool("v", false, "on an import error, show the traceback")
		fs.Duration("timeout", 0, "give up importing the package after this long (such as 10s); 0 waits for ever")
	}}
	commands["call"] = command{"[--raw|--stream] [--stdin-stream] [--config JSON] [--isolated|--workers] [--python PY] [-v] [--timeout D] PATH METHOD [INPUT]", "load a package and call one of its methods", call, func(fs *flag.FlagSet) {
		fs.Bool("raw", false, "raw-wire call: INPUT (or standard input when there is none) is passed to the method as bytes, as they are, not parsed as JSON; the result is written as bytes")
		fs.Bool("stream", false, "streaming call, for a method that returns an iterator or generator: print each item on its own line")
		fs.Bool("stdin-stream", false, "client-streaming call, for a method whose first argument is a stream: feed it standard input, one JSON value per line (INPUT, if given, is the other arguments); with --stream, a bidirectional call")
		fs.String("config", "", "load the package configured: pass this JSON to the entry module's __fidius_configure__ and call the method of the object it returns")
		fs.Bool("v", false, "on an error, show the plugin's error details and the Python traceback")
		fs.Duration("timeout", 0, "give up loading and calling after this long in all (such as 10s); 0 waits for ever")
		fs.Bool("isolated", false, "run the plugin in an isolated interpreter of its own (CPython 3.12 or later), as fidius.WithIsolation does")
		fs.Bool("workers", false, "run the plugin in a worker process, as fidius.WithWorkers does")
		fs.String("python", "", "the Python program the worker runs, such as a virtual environment's bin/python (implies --workers), as fidius.WithInterpreter")
	}}
	commands["stub"] = command{"[--go] --interface FILE.toml", "print a Python module with __interface_hash__ and one @method stub per method, or with --go the host's Go descriptor", stub, func(fs *flag.FlagSet) {
		fs.String("interface", "", "TOML file describing the interface (required)")
		fs.Bool("go", false, "print the matching fidius.InterfaceDescriptor literal for a Go host instead of the Python module")
	}}
	commands["hash"] = command{"--interface FILE.toml | SIGNATURE...", "print the interface hash, then each method signature it is computed from, sorted as hashed", hash, func(fs *flag.FlagSet) {
		fs.String("interface", "", "TOML file describing the interface, as for stub; or give the signatures (name:Arg1,Arg2->Ret) as arguments")
	}}
	commands["digest"] = command{"PATH", "print the package digest that signatures cover", digest, nil}
	commands["sign"] = command{"--key NAME.secret DIR", "sign a package directory (not an archive: sign before packing), writing DIR/package.sig", sign, func(fs *flag.FlagSet) {
		fs.String("key", "", "secret key file, 32 bytes (required); a NAME.public is refused, and a NAME.secret must match the NAME.public next to it, if any")
	}}
	commands["verify"] = command{"--key NAME.public PATH", "check the package.sig of a package directory or archive", verify, func(fs *flag.FlagSet) {
		fs.String("key", "", "public key file, 32 bytes (required); a NAME.secret is refused")
	}}
	commands["pack"] = command{"[-o OUT] DIR", "pack a package directory into a .fid archive laid out as fidius packs it, the same bytes each time", pack, func(fs *flag.FlagSet) {
		fs.String("o", "", "the archive to write, or a directory to write NAME-VERSION.EXT into (default: the current directory)")
	}}
	commands["unpack"] = command{"ARCHIVE [DEST]", "unpack a .fid archive into DEST (default: the current directory), refusing unsafe entries, and print the package directory", unpack, nil}
	commands["keygen"] = command{"[--force] NAME", "write a new key pair to NAME.secret and NAME.public", keygen, func(fs *flag.FlagSet) {
		fs.Bool("force", false, "replace NAME.secret and NAME.public if they exist (the old secret key is lost)")
	}}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "version" {
		fmt.Fprintln(stdout, versionLine())
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "fidius-py: unknown command %q (see fidius-py --help)\n", args[0])
		return 2
	}
	fs := flag.NewFlagSet("fidius-py "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	// The flag package would print usage on any mistake; only help asks for it.
	fs.Usage = func() {}
	positional, err := parseInterleaved(fs, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage: fidius-py %s %s\n\n%s.\n", args[0], cmd.args, cmd.summary)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "fidius-py %s: %v\n", args[0], err)
		return 2
	}
	if err := cmd.run(fs, positional, stdout); err != nil {
		// One line unless -v asks for more: a traceback would bury the
		// message, which is usually enough.
		msg, _, _ := strings.Cut(nameArchives(err.Error()), "\n")
		more := errorDetails(err)
		switch {
		case more == "":
		case fs.Lookup("v") != nil && flagValue[bool](fs, "v"):
			msg += "\n" + more
		case fs.Lookup("v") != nil:
			msg += " (-v shows more)"
		}
		fmt.Fprintf(stderr, "fidius-py %s: %s\n", args[0], msg)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// errorDetails returns what err says beyond its first line: the rest of
// a multi-line message (an import error's traceback), and a plugin error's
// details and traceback, which are JSON in the error and shown as text.
func errorDetails(err error) string {
	var parts []string
	if _, rest, ok := strings.Cut(err.Error(), "\n"); ok && strings.TrimSpace(rest) != "" {
		parts = append(parts, strings.TrimRight(rest, "\n"))
	}
	var perr *fidius.PluginError
	if errors.As(err, &perr) && len(perr.Details) > 0 && string(perr.Details) != "null" {
		details, traceback := perr.Details, ""
		var fields map[string]json.RawMessage
		if json.Unmarshal(perr.Details, &fields) == nil {
			if tb, ok := fields["traceback"]; ok && json.Unmarshal(tb, &traceback) == nil {
				delete(fields, "traceback")
				details = nil
				if len(fields) > 0 {
					details, _ = json.Marshal(fields)
				}
			}
		}
		if details != nil {
			parts = append(parts, "details: "+string(details))
		}
		if traceback != "" {
			parts = append(parts, "traceback:\n"+strings.TrimRight(traceback, "\n"))
		}
	}
	return nameArchives(strings.Join(parts, "\n"))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: fidius-py COMMAND [ARGS]\n\nCommands:")
	for _, name := range []string{"inspect", "call", "stub", "hash", "pack", "unpack", "digest", "sign", "verify", "keygen"} {
		fmt.Fprintf(w, "  %-8s %s\n", name, commands[name].summary)
	}
	fmt.Fprintln(w, "\nRun fidius-py COMMAND --help for a command's arguments, fidius-py --version for versions.")
}

// parseInterleaved parses the flags found anywhere among args, as in
// "fidius-py call PATH greet --raw", and returns the other arguments in
// order. The flag package alone stops at the first argument that is not a
// flag. "--" ends the flags: everything after it is positional. An argument
// such as "-1" (a JSON number) is positional, since no flag name starts with
// a digit.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' || (a[1] >= '0' && a[1] <= '9') {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		// A flag that takes a value and is not written name=value takes the
		// next argument, whatever it looks like, as the flag package would.
		name, _, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if f := fs.Lookup(name); f != nil && !inline && !isBoolFlag(f) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	return append(positional, fs.Args()...), nil
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// flagValue returns the value of a flag the command defined.
func flagValue[T any](fs *flag.FlagSet, name string) T {
	return fs.Lookup(name).Value.(flag.Getter).Get().(T)
}

func wantArgs(args []string, min, max int, names string) error {
	if len(args) < min || len(args) > max {
		return usageError{fmt.Sprintf("expected %s, got %d arguments", names, len(args))}
	}
	return nil
}

// packageDir returns the package directory for PATH, unpacking an archive
// into a temporary directory that cleanup removes.
func packageDir(path string) (dir string, cleanup func(), err error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", nil, err
	}
	if st.IsDir() {
		return path, func() {}, nil
	}
	tmp, err := os.MkdirTemp("", "fidius-py-")
	if err != nil {
		return "", nil, err
	}
	dir, err = fidius.UnpackPackage(path, tmp, fidius.UnpackOptions{})
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, err
	}
	unpacked = append(unpacked, [2]string{dir, path}, [2]string{tmp, path})
	if real, err := filepath.EvalSymlinks(dir); err == nil && real != dir {
		unpacked = append(unpacked, [2]string{real, path}) // as Python may spell it
	}
	return dir, func() { os.RemoveAll(tmp) }, nil
}

// unpacked pairs each temporary directory an archive was unpacked into with
// the archive, so that a message names the file the user gave rather than
// a directory that is gone by the time they read it. Package directories
// come before the temporary directories holding them.
var unpacked [][2]string

// nameArchives rewrites the temporary directories in text as their archives.
func nameArchives(text string) string {
	for _, p := range unpacked {
		text = strings.ReplaceAll(text, p[0], p[1])
	}
	return text
}

// onePackage takes the single PATH argument of a command.
func onePackage(args []string) (string, func(), error) {
	if err := wantArgs(args, 1, 1, "PATH"); err != nil {
		return "", nil, err
	}
	return packageDir(args[0])
}

func inspect(fs *flag.FlagSet, args []string, out io.Writer) error {
	dir, cleanup, err := onePackage(args)
	if err != nil {
		return err
	}
	defer cleanup()
	m, err := fidius.LoadManifest(dir)
	if err != nil {
		return err
	}
	h := m.Package
	fmt.Fprintf(out, "package:     %s %s\n", h.Name, h.Version)
	fmt.Fprintf(out, "interface:   %s (version %d)\n", h.Interface, h.InterfaceVersion)
	fmt.Fprintf(out, "runtime:     %s\n", h.RuntimeName())
	fmt.Fprintf(out, "extension:   %s\n", h.FileExtension())
	if m.Python == nil {
		return nil
	}
	fmt.Fprintf(out, "entry:       %s\n", m.Python.EntryModule)
	ctx, cancel := withTimeout(fs)
	defer cancel()
	r, err := fidius.InspectPythonPackageContext(ctx, dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "hash:        0x%016x\n", r.InterfaceHash)
	fmt.Fprintf(out, "methods:     %s\n", strings.Join(r.Methods, ", "))
	if r.Configurable {
		fmt.Fprintf(out, "configured:  yes, by __fidius_configure__ (try call --config JSON)\n")
	} else {
		fmt.Fprintf(out, "configured:  no\n")
	}
	return nil
}

func call(fs *flag.FlagSet, args []string, out io.Writer) error {
	if err := wantArgs(args, 2, 3, "PATH METHOD [INPUT]"); err != nil {
		return err
	}
	raw, stream, fed := flagValue[bool](fs, "raw"), flagValue[bool](fs, "stream"), flagValue[bool](fs, "stdin-stream")
	if raw && (stream || fed) {
		return usageError{"--raw goes with neither --stream nor --stdin-stream"}
	}
	config, configured := []byte(flagValue[string](fs, "config")), isSet(fs, "config")
	if configured {
		var v json.RawMessage
		if err := json.Unmarshal(config, &v); err != nil {
			return usageError{fmt.Sprintf("--config is not valid JSON: %v", err)}
		}
	}
	dir, cleanup, err := packageDir(args[0])
	if err != nil {
		return err
	}
	defer cleanup()
	ctx, cancel := withTimeout(fs)
	defer cancel()
	method := args[1]
	// The descriptor holds the one method called: the load checks only it.
	desc := &fidius.InterfaceDescriptor{
		Methods: []fidius.MethodDesc{{Name: method, WireRaw: raw, Streaming: stream, ClientStreaming: fed}},
	}
	var opts []fidius.Option
	if flagValue[bool](fs, "isolated") {
		opts = append(opts, fidius.WithIsolation(1))
	}
	python := flagValue[string](fs, "python")
	workers := flagValue[bool](fs, "workers") || python != ""
	var registered []string
	if workers {
		// The package is imported in the worker only: its Python may
		// have what this program's does not. The hash is the one the
		// package declares, as the load reports it.
		m, err := fidius.LoadManifest(dir)
		if err != nil {
			return err
		}
		desc.InterfaceName = m.Package.Interface
		opts = append(opts, fidius.WithWorkers(1))
		if python != "" {
			opts = append(opts, fidius.WithInterpreter(python))
		}
	} else {
		r, err := fidius.InspectPythonPackageContext(ctx, dir)
		if err != nil {
			return err
		}
		registered = r.Methods
		// A configured plugin's methods are those of the object
		// __fidius_configure__ returns, which need not be registered with
		// @method: the load finds out whether it has one.
		if !slices.Contains(r.Methods, method) && !configured {
			return fmt.Errorf("method %q is not registered in %s (%s)", method, args[0], registeredList(r.Methods))
		}
		desc.InterfaceName, desc.InterfaceHash = r.Manifest.Package.Interface, r.InterfaceHash
	}
	load := func() (*fidius.PluginHandle, error) {
		if configured {
			return fidius.LoadPythonPluginConfiguredContext(ctx, dir, desc, json.RawMessage(config), opts...)
		}
		return fidius.LoadPythonPluginContext(ctx, dir, desc, opts...)
	}
	h, err := load()
	var mismatch *fidius.HashMismatchError
	if workers && errors.As(err, &mismatch) {
		desc.InterfaceHash = mismatch.Got
		h, err = load()
	}
	if errors.Is(err, fidius.ErrMethodNotRegistered) && !workers {
		return fmt.Errorf("%w (%s)", err, registeredList(registered))
	}
	if err != nil {
		return err
	}
	defer h.Close()
	var input []byte
	if len(args) == 3 {
		input = []byte(args[2])
	} else if raw {
		if input, err = io.ReadAll(os.Stdin); err != nil {
			return err
		}
	}
	switch {
	case fed && stream:
		return printItems(out, h.CallBidiStream(ctx, 0, stdinItems(), input))
	case fed:
		res, err := h.CallClientStream(ctx, 0, stdinItems(), input)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s\n", res)
		return nil
	case raw:
		res, err := h.CallRaw(ctx, 0, input)
		if err != nil {
			return err
		}
		_, err = out.Write(res)
		return err
	case stream:
		return printItems(out, h.CallStream(ctx, 0, input))
	default:
		res, err := h.CallJSON(ctx, 0, input)
		if errors.Is(err, fidius.ErrOutputEncode) && iteratorType.MatchString(err.Error()) {
			return fmt.Errorf("%w: %s returns an iterator; call it with --stream", err, method)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s\n", res)
		return nil
	}
}

// printItems prints each item of a stream on its own line.
func printItems(out io.Writer, items iter.Seq2[json.RawMessage, error]) error {
	for item, err := range items {
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s\n", item)
	}
	return nil
}

// stdinItems reads standard input as a stream of JSON values, one per
// line; blank lines are skipped, and a line that is not JSON ends the
// stream with an error naming it.
func stdinItems() iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for n := 1; sc.Scan(); n++ {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			if !json.Valid(line) {
				yield(nil, fmt.Errorf("standard input, line %d: not a JSON value: %.60q", n, line))
				return
			}
			if !yield(bytes.Clone(line), nil) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			yield(nil, fmt.Errorf("reading standard input: %w", err))
		}
	}
}

var (
	// iteratorType finds an iterator type named in an ErrOutputEncode
	// message: generator, async_generator, list_iterator and the like.
	iteratorType = regexp.MustCompile(`\b(?:async_)?generator\b|iterator\b`)
)

// withTimeout is the context of a command with a --timeout flag. Python
// installs no signal handlers here, so Ctrl-C ends the program at once
// whatever the context.
func withTimeout(fs *flag.FlagSet) (context.Context, context.CancelFunc) {
	if d := flagValue[time.Duration](fs, "timeout"); d > 0 {
		return context.WithTimeout(context.Background(), d)
	}
	return context.WithCancel(context.Background())
}

// registeredList says which methods are registered with @method.
func registeredList(methods []string) string {
	if len(methods) == 0 {
		return "no method is registered with @method"
	}
	return "registered with @method: " + strings.Join(methods, ", ")
}

// isSet reports whether the command line set the flag, so that an empty
// value given explicitly is told from an absent flag.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// interfaceFile is the TOML form stub and hash read.
type interfaceFile struct {
	Interface string            `toml:"interface"`
	Methods   []interfaceMethod `toml:"methods"`
}

type interfaceMethod struct {
	Name            string   `toml:"name"`
	Args            []string `toml:"args"`
	Returns         string   `toml:"returns"`
	Raw             bool     `toml:"raw"`
	Streaming       bool     `toml:"streaming"`
	ClientStreaming bool     `toml:"client_streaming"`
	Optional        bool     `toml:"optional"`
}

// hashed returns the signatures the interface hash covers: fidius leaves
// #[optional] methods out, so a plugin without them still matches.
func hashed(f *interfaceFile, sigs []string) []string {
	var out []string
	for i, m := range f.Methods {
		if !m.Optional {
			out = append(out, sigs[i])
		}
	}
	return out
}

// readInterface reads the --interface file and returns it with each
// method's signature, in the file's order.
func readInterface(fs *flag.FlagSet) (*interfaceFile, []string, error) {
	path := flagValue[string](fs, "interface")
	if path == "" {
		return nil, nil, usageError{"--interface FILE.toml is required"}
	}
	var f interfaceFile
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %v", path, err)
	}
	if keys := md.Undecoded(); len(keys) > 0 {
		return nil, nil, fmt.Errorf("%s: unknown key %s", path, keys[0])
	}
	if f.Interface == "" || len(f.Methods) == 0 {
		return nil, nil, fmt.Errorf("%s: needs interface = \"Name\" and at least one [[methods]] entry", path)
	}
	var sigs []string
	seen := map[string]bool{}
	for _, m := range f.Methods {
		if !isIdentifier(m.Name) || seen[m.Name] {
			return nil, nil, fmt.Errorf("%s: method name %q is not a Python identifier, or is repeated", path, m.Name)
		}
		seen[m.Name] = true
		sigs = append(sigs, fidius.SignatureString(m.Name, m.Args, m.Returns, m.Raw, m.Streaming, m.ClientStreaming))
	}
	return &f, sigs, nil
}

// signatureShape is what every signature looks like: a method name, a
// colon, the argument types, "->" and the return type (and suffixes). A
// typed-in signature of another shape is a mistake that would otherwise
// give a hash nothing matches.
var signatureShape = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*:.*->`)

func hash(fs *flag.FlagSet, args []string, out io.Writer) error {
	var sigs []string
	switch {
	case isSet(fs, "interface") && len(args) > 0:
		return usageError{"give --interface FILE.toml or signatures, not both"}
	case isSet(fs, "interface"):
		var err error
		var f *interfaceFile
		if f, sigs, err = readInterface(fs); err != nil {
			return err
		}
		if opt := slices.DeleteFunc(slices.Clone(sigs), func(s string) bool { return slices.Contains(hashed(f, sigs), s) }); len(opt) > 0 {
			defer func() {
				for _, s := range opt {
					fmt.Fprintf(out, "%s (optional: not hashed)\n", s)
				}
			}()
		}
		sigs = hashed(f, sigs)
	case len(args) == 0:
		return usageError{"expected --interface FILE.toml or at least one SIGNATURE"}
	default:
		for _, a := range args {
			if !signatureShape.MatchString(a) {
				return usageError{fmt.Sprintf("%q is not a method signature: write name:Arg1,Arg2->Ret, with !raw, !stream as fidius adds them", a)}
			}
		}
		sigs = args
	}
	fmt.Fprintf(out, "0x%016X\n", fidius.InterfaceHash(sigs...))
	sorted := slices.Clone(sigs)
	slices.Sort(sorted)
	for _, s := range sorted {
		fmt.Fprintln(out, s)
	}
	return nil
}

func stub(fs *flag.FlagSet, args []string, out io.Writer) error {
	if err := wantArgs(args, 0, 0, "no arguments besides --interface"); err != nil {
		return err
	}
	f, sigs, err := readInterface(fs)
	if err != nil {
		return err
	}
	if flagValue[bool](fs, "go") {
		return goDescriptor(out, f, sigs)
	}
	fmt.Fprintf(out, "\"\"\"Plugin module for the %s interface, stubbed by fidius-py.\n\nMethod signatures, as fidius hashes them:\n\n", f.Interface)
	for _, s := range sigs {
		fmt.Fprintf(out, "    %s\n", s)
	}
	fmt.Fprintf(out, "\nThe host's matching descriptor: fidius-py stub --go --interface %s\n", flagValue[string](fs, "interface"))
	fmt.Fprintf(out, "\"\"\"\n\nfrom fidius import method\n\n__interface_hash__ = 0x%016X\n", fidius.InterfaceHash(hashed(f, sigs)...))
	for _, m := range f.Methods {
		params := make([]string, len(m.Args))
		for i := range m.Args {
			params[i] = fmt.Sprintf("arg%d", i)
		}
		if m.Raw && len(params) == 1 {
			params[0] = "data"
		}
		if m.ClientStreaming && len(params) > 0 {
			params[0] = "items" // the host's stream: iterate it
		}
		if m.Optional {
			fmt.Fprintf(out, "\n\n# Optional: a plugin may leave %s out.", m.Name)
		}
		fmt.Fprintf(out, "\n\n@method\ndef %s(%s):\n    raise NotImplementedError(%q)\n", m.Name, strings.Join(params, ", "), m.Name)
	}
	return nil
}

// goDescriptor writes the fidius.InterfaceDescriptor a Go host loads the
// interface's plugins with: the hash is computed from the same signatures
// as the Python stub's, and method i is the file's method i.
func goDescriptor(out io.Writer, f *interfaceFile, sigs []string) error {
	name := "iface"
	if isIdentifier(f.Interface) {
		name = strings.ToLower(f.Interface[:1]) + f.Interface[1:] + "Interface"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "// %s describes the %s interface; stubbed by fidius-py.\n", name, f.Interface)
	fmt.Fprintf(&b, "var %s = &fidius.InterfaceDescriptor{\n\tInterfaceName: %s,\n", name, strconv.Quote(f.Interface))
	fmt.Fprintf(&b, "\tInterfaceHash: fidius.InterfaceHash( // 0x%016X\n", fidius.InterfaceHash(hashed(f, sigs)...))
	for i, s := range sigs {
		if f.Methods[i].Optional {
			fmt.Fprintf(&b, "\t\t// %s is optional: not hashed\n", strconv.Quote(s))
		} else {
			fmt.Fprintf(&b, "\t\t%s,\n", strconv.Quote(s))
		}
	}
	b.WriteString("\t),\n\tMethods: []fidius.MethodDesc{\n")
	for i, m := range f.Methods {
		fields := []string{"Name: " + strconv.Quote(m.Name)}
		if m.Raw {
			fields = append(fields, "WireRaw: true")
		}
		if m.Streaming {
			fields = append(fields, "Streaming: true")
		}
		if m.ClientStreaming {
			fields = append(fields, "ClientStreaming: true")
		}
		if m.Optional {
			fields = append(fields, "Optional: true")
		}
		fmt.Fprintf(&b, "\t\t{%s}, // index %d\n", strings.Join(fields, ", "), i)
	}
	b.WriteString("\t},\n}\n")
	src, err := format.Source([]byte(b.String()))
	if err != nil {
		return fmt.Errorf("formatting the descriptor: %v", err) // a bug here, not in the file
	}
	_, err = out.Write(src)
	return err
}

func isIdentifier(s string) bool {
	for i, r := range s {
		if !(r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (i > 0 && r >= '0' && r <= '9')) {
			return false
		}
	}
	return s != ""
}

func pack(fs *flag.FlagSet, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 1, "DIR"); err != nil {
		return err
	}
	path, err := fidius.PackPackage(args[0], flagValue[string](fs, "o"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "packed %s: %s\n", args[0], path)
	if _, err := os.Stat(filepath.Join(args[0], "package.sig")); err != nil {
		fmt.Fprintf(out, "note: %s is not signed (fidius-py sign --key NAME.secret %s, then pack again)\n", args[0], args[0])
	}
	return nil
}

func unpack(_ *flag.FlagSet, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 2, "ARCHIVE [DEST]"); err != nil {
		return err
	}
	dest := "."
	if len(args) == 2 {
		dest = args[1]
	}
	dir, err := fidius.UnpackPackage(args[0], dest, fidius.UnpackOptions{})
	if err != nil {
		return err
	}
	fmt.Fprintln(out, dir)
	return nil
}

func digest(_ *flag.FlagSet, args []string, out io.Writer) error {
	dir, cleanup, err := onePackage(args)
	if err != nil {
		return err
	}
	defer cleanup()
	sum, err := fidius.PackageDigest(dir)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, hex.EncodeToString(sum[:]))
	return nil
}

// readKey reads the --key file of sign (want "secret") or verify (want
// "public"). Both kinds are raw 32-byte files, so the content cannot tell
// them apart: the file name does. A NAME.public given to sign, or a
// NAME.secret given to verify, is refused, naming the file to pass
// instead. sign also checks a NAME.secret against the NAME.public next to
// it, if there is one, because a signature those who trust NAME.public
// cannot verify is worse than no signature. A file with another name is
// taken to be the kind the command needs.
func readKey(fs *flag.FlagSet, want string) ([]byte, error) {
	path := flagValue[string](fs, "key")
	if path == "" {
		return nil, usageError{fmt.Sprintf("--key NAME.%s is required", want)}
	}
	other := map[string]string{"secret": "public", "public": "secret"}[want]
	if base, ok := strings.CutSuffix(path, "."+other); ok {
		return nil, usageError{fmt.Sprintf("%s is a %s key; pass %s.%s, the %s key", path, other, base, want, want)}
	}
	key, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	base, ok := strings.CutSuffix(path, ".secret")
	if want != "secret" || !ok {
		return key, nil
	}
	sibling := base + ".public"
	pub, err := readKeyFile(sibling)
	if errors.Is(err, os.ErrNotExist) {
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checking %s against %s: %w", path, sibling, err)
	}
	switch {
	case bytes.Equal(pub, key):
		return nil, fmt.Errorf("%s holds the same bytes as %s: it is a public key, not a secret key", path, sibling)
	case !ed25519.PublicKey(pub).Equal(ed25519.NewKeyFromSeed(key).Public()):
		return nil, fmt.Errorf("%s and %s are not a key pair: %s would not verify what this key signs", path, sibling, sibling)
	}
	return key, nil
}

// readKeyFile reads a raw 32-byte key.
func readKeyFile(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("%s: a key file holds 32 bytes, this one %d", path, len(key))
	}
	return key, nil
}

func sign(fs *flag.FlagSet, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 1, "PATH"); err != nil {
		return err
	}
	seed, err := readKey(fs, "secret")
	if err != nil {
		return err
	}
	st, err := os.Stat(args[0])
	if err != nil {
		return err
	}
	if !st.IsDir() {
		// package.sig lives inside the package, and covers its files:
		// signing comes before packing.
		return fmt.Errorf("%s is not a directory: sign signs a package directory, writing its package.sig; to ship a signed archive, sign the directory, then fidius-py pack it", args[0])
	}
	if err := fidius.SignPackage(args[0], ed25519.NewKeyFromSeed(seed)); err != nil {
		return err
	}
	fmt.Fprintf(out, "signed %s: %s\n", args[0], filepath.Join(args[0], "package.sig"))
	return nil
}

func verify(fs *flag.FlagSet, args []string, out io.Writer) error {
	pub, err := readKey(fs, "public")
	if err != nil {
		return err
	}
	dir, cleanup, err := onePackage(args)
	if err != nil {
		return err
	}
	defer cleanup()
	if err := fidius.VerifyPackage(dir, []ed25519.PublicKey{pub}); err != nil {
		return err
	}
	fmt.Fprintf(out, "signature valid: %s\n", args[0])
	return nil
}

func keygen(fs *flag.FlagSet, args []string, out io.Writer) error {
	if err := wantArgs(args, 1, 1, "NAME"); err != nil {
		return err
	}
	force := flagValue[bool](fs, "force")
	secret, public := args[0]+".secret", args[0]+".public"
	// Both are checked before either is written, so that a refusal leaves
	// no half-made pair.
	if !force {
		for _, p := range []string{secret, public} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("%s exists; pass --force to replace it (its key pair is lost)", p)
			}
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if err := writeNew(secret, priv.Seed(), 0o600, force); err != nil {
		return err
	}
	if err := writeNew(public, pub, 0o644, force); err != nil {
		return err
	}
	fmt.Fprintf(out, "secret key: %s\npublic key: %s\n", secret, public)
	return nil
}

// writeNew writes a file that did not exist, with mode perm. With replace,
// an existing file (or symbolic link) is removed first: os.WriteFile would
// keep an old file's mode, and a secret key must not stay world-readable
// because an earlier file at its name was.
func writeNew(path string, data []byte, perm os.FileMode, replace bool) error {
	if replace {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	// O_EXCL: a file that appeared since the check is not overwritten.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists; pass --force to replace it", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// libraryModule is the module whose library fidius-py links and reports.
const libraryModule = "github.com/fidius-go/fidius"

// versionLine names the version of the fidius library this program is
// built from and the CPython it is linked with and runs. A build from a
// checkout has no module version, "(devel)"; the commit is added when the
// build recorded one.
func versionLine() string {
	v := "(unknown)"
	if info, ok := debug.ReadBuildInfo(); ok {
		mod := &info.Main
		// fidius-py is normally its own module's main package; a copy built
		// inside another module finds the library among the dependencies.
		for _, d := range info.Deps {
			if mod.Path != libraryModule && d.Path == libraryModule {
				mod = d
				if d.Replace != nil {
					mod = d.Replace
				}
			}
		}
		v = mod.Version
		settings := map[string]string{}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
		if rev := settings["vcs.revision"]; v == "(devel)" && rev != "" {
			v += " " + rev[:min(12, len(rev))]
			if settings["vcs.modified"] == "true" {
				v += "+dirty"
			}
		}
	}
	py := "Python " + fidius.PythonVersion()
	if fidius.PythonVersion() == "" {
		py = "no Python (built without cgo: inspect and call are unavailable)"
	}
	return fmt.Sprintf("fidius-py: library %s %s, %s", libraryModule, v, py)
}
