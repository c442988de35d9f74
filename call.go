// This file owns Call, the generic typed call: Go arguments to JSON and
// the JSON result to a Go value, with direct paths for the common types so
// that a call with string arguments and a string result costs two
// allocations instead of encoding/json's seven.

package fidius

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"unicode/utf8"
)

// argBuffers recycles argument encodings: CallJSON keeps nothing of its
// input once it returns.
var argBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// Call calls typed method i with args as the positional arguments and
// decodes the JSON result into Out. Arguments are encoded as
// encoding/json would encode them, except that a Go float (float64,
// float32, and types of those kinds, anywhere in an argument) always
// arrives as a Python float: float64(2) is sent as 2.0, not 2, as
// fidius's Rust host sends it. The exceptions, encoded by encoding/json
// alone: a struct that embeds an unexported struct type, the inner
// occurrences of a type that contains itself (the children of a tree
// node), and a field with the ",string" option, which stays a string.
// Arguments that do not encode (a value that contains itself) match
// ErrInputDecode, and a result that does not decode into Out matches
// ErrOutputEncode.
func Call[Out any](ctx context.Context, h *PluginHandle, i int, args ...any) (Out, error) {
	var out Out
	bp := argBuffers.Get().(*[]byte)
	in, err := appendArgs((*bp)[:0], args)
	if err != nil {
		argBuffers.Put(bp)
		return out, fmt.Errorf("%w: arguments: %v", ErrInputDecode, err)
	}
	res, err := h.CallJSON(ctx, i, in)
	if cap(in) <= 64<<10 {
		*bp = in
		argBuffers.Put(bp)
	}
	if err != nil {
		return out, err
	}
	if p, ok := any(&out).(*string); ok {
		if s, ok := plainString(res); ok {
			*p = s
			return out, nil
		}
	}
	return decodeResult[Out](res, h.plugin.desc.Methods[i].Name)
}

// appendArgs appends args to buf as a JSON array.
func appendArgs(buf []byte, args []any) ([]byte, error) {
	buf = append(buf, '[')
	for i, a := range args {
		if i > 0 {
			buf = append(buf, ',')
		}
		switch v := a.(type) {
		case string:
			buf = appendString(buf, v)
		case int:
			buf = strconv.AppendInt(buf, int64(v), 10)
		case int64:
			buf = strconv.AppendInt(buf, v, 10)
		case bool:
			buf = strconv.AppendBool(buf, v)
		case float64:
			var err error
			if buf, err = appendPyFloat(buf, v, 64); err != nil {
				return buf, err
			}
		case nil:
			buf = append(buf, "null"...)
		default:
			b, err := marshalArg(v)
			if err != nil {
				return buf, err
			}
			buf = append(buf, b...)
		}
	}
	return append(buf, ']'), nil
}

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as with encoding/json; HTML characters are left as they are, which
// decodes to the same string.
func appendString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i++
			start = i
			continue
		}
		buf = append(buf, s[start:i]...)
		switch c {
		case '"', '\\':
			buf = append(buf, '\\', c)
		case '\n':
			buf = append(buf, '\\', 'n')
		case '\r':
			buf = append(buf, '\\', 'r')
		case '\t':
			buf = append(buf, '\\', 't')
		default:
			buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

// plainString returns a JSON string result that needs no unescaping. The
// C encoder writes valid UTF-8 and escapes every control character, so a
// string without backslashes is its own contents.
func plainString(res []byte) (string, bool) {
	n := len(res)
	if n < 2 || res[0] != '"' || res[n-1] != '"' || bytes.IndexByte(res[1:n-1], '\\') >= 0 {
		return "", false
	}
	return string(res[1 : n-1]), true
}

// decodeResult decodes a call's JSON result into a new Out. It is kept
// apart from Call so that only this path makes Out escape to the heap.
func decodeResult[Out any](res []byte, method string) (Out, error) {
	var out Out
	if p, ok := any(&out).(*json.RawMessage); ok {
		*p = res
		return out, nil
	}
	if err := json.Unmarshal(res, &out); err != nil {
		return out, fmt.Errorf("%w: result of method %q does not decode into %T: %v", ErrOutputEncode, method, out, err)
	}
	return out, nil
}
