// This file owns how Go floating-point values travel to Python: as JSON
// numbers that always have a fraction or an exponent, so that a Go
// float64(2) arrives as the Python float 2.0, as fidius's Rust host sends
// it, where encoding/json would write 2 and Python would see an int.

package fidius

import (
	"encoding"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// pyFloat and pyFloat32 stand in for float kinds while a value is encoded.
type (
	pyFloat   float64
	pyFloat32 float32
)

// MarshalJSON writes f as encoding/json would, with ".0" added to a whole
// number.
func (f pyFloat) MarshalJSON() ([]byte, error) { return appendPyFloat(nil, float64(f), 64) }

// MarshalJSON is pyFloat's, at 32 bits.
func (f pyFloat32) MarshalJSON() ([]byte, error) { return appendPyFloat(nil, float64(f), 32) }

// appendPyFloat formats f the way encoding/json does (shortest form,
// exponent outside [1e-6, 1e21)), then makes sure it reads as a float.
func appendPyFloat(buf []byte, f float64, bits int) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return buf, fmt.Errorf("json: unsupported value: %s", strconv.FormatFloat(f, 'g', -1, bits))
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	start := len(buf)
	buf = strconv.AppendFloat(buf, f, format, -1, bits)
	if format == 'e' {
		// 1e-07 becomes 1e-7, as encoding/json writes it.
		if n := len(buf); n-start >= 4 && buf[n-4] == 'e' && buf[n-3] == '-' && buf[n-2] == '0' {
			buf[n-2] = buf[n-1]
			buf = buf[:n-1]
		}
		return buf, nil
	}
	for _, c := range buf[start:] {
		if c == '.' {
			return buf, nil
		}
	}
	return append(buf, ".0"...), nil
}

// marshalArg encodes v as encoding/json would, except that float kinds
// anywhere inside it (struct fields, slices, maps, pointers, interfaces)
// keep a fraction. Values whose type holds no float and no interface are
// handed to encoding/json as they are.
func marshalArg(v any) (b []byte, err error) {
	if v == nil {
		return json.Marshal(v)
	}
	rv := reflect.ValueOf(v)
	s := shadowOf(rv.Type())
	if !s.dynamic && s.typ == rv.Type() {
		return json.Marshal(v)
	}
	defer func() {
		if r := recover(); r != nil {
			c, ok := r.(cycleError)
			if !ok {
				panic(r)
			}
			b, err = nil, &json.UnsupportedValueError{Value: c.v, Str: "encountered a cycle via " + c.v.Type().String()}
		}
	}()
	return json.Marshal(s.convert(rv, &walk{}).Interface())
}

// shadow is the type a value is converted to before encoding: the same
// shape and json tags, with float kinds replaced by pyFloat.
type shadow struct {
	typ     reflect.Type
	dynamic bool    // an interface inside: values must be walked even if typ is unchanged
	elem    *shadow // of a pointer's, slice's, array's or map's elements
	fields  []int   // a struct's fields that encoding/json sees
	shadows []*shadow
	sfields []reflect.StructField // a struct's shadow fields, for plain
}

var shadows sync.Map // reflect.Type -> *shadow

var (
	jsonMarshaler = reflect.TypeFor[json.Marshaler]()
	textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
)

func shadowOf(t reflect.Type) *shadow {
	if s, ok := shadows.Load(t); ok {
		return s.(*shadow)
	}
	s, _ := shadowIn(t, map[reflect.Type]int{})
	return s
}

// shadowIn is shadowOf for a type met while building the shadows of the
// types in building, each with its depth. A type that contains itself
// keeps its own type from the inner occurrence on: its floats there are
// encoded by encoding/json. cut is the depth of the outermost type in
// building where s stopped so; a shadow that stopped at a type enclosing
// its own is incomplete and is not kept: met on its own, that type gets
// its full shadow.
func shadowIn(t reflect.Type, building map[reflect.Type]int) (s *shadow, cut int) {
	if s, ok := shadows.Load(t); ok {
		return s.(*shadow), math.MaxInt
	}
	if d, ok := building[t]; ok {
		return &shadow{typ: t}, d
	}
	d := len(building)
	building[t] = d
	s, cut = makeShadow(t, building)
	delete(building, t)
	if cut >= d {
		shadows.Store(t, s)
		cut = math.MaxInt
	}
	return s, cut
}

func makeShadow(t reflect.Type, building map[reflect.Type]int) (s *shadow, cut int) {
	s, cut = &shadow{typ: t}, math.MaxInt
	if t.Implements(jsonMarshaler) || t.Implements(textMarshaler) ||
		reflect.PointerTo(t).Implements(jsonMarshaler) || reflect.PointerTo(t).Implements(textMarshaler) {
		return s, cut // the type says how it is encoded
	}
	defer func() {
		// reflect cannot build every shape (some embedded fields): such a
		// value is encoded as it is.
		if recover() != nil {
			s = &shadow{typ: t}
		}
	}()
	elem := func(e reflect.Type) *shadow {
		es, c := shadowIn(e, building)
		cut = min(cut, c)
		return es
	}
	switch t.Kind() {
	case reflect.Float64:
		s.typ = reflect.TypeFor[pyFloat]()
	case reflect.Float32:
		s.typ = reflect.TypeFor[pyFloat32]()
	case reflect.Interface:
		s.dynamic = true
	case reflect.Pointer:
		e := elem(t.Elem())
		s.elem, s.dynamic = e, e.dynamic
		if e.typ != t.Elem() {
			s.typ = reflect.PointerTo(e.typ)
		}
	case reflect.Slice, reflect.Array:
		e := elem(t.Elem())
		s.elem, s.dynamic = e, e.dynamic
		if e.typ != t.Elem() {
			if t.Kind() == reflect.Slice {
				s.typ = reflect.SliceOf(e.typ)
			} else {
				s.typ = reflect.ArrayOf(t.Len(), e.typ)
			}
		}
	case reflect.Map:
		e := elem(t.Elem())
		s.elem, s.dynamic = e, e.dynamic
		if e.typ != t.Elem() {
			s.typ = reflect.MapOf(t.Key(), e.typ)
		}
	case reflect.Struct:
		changed := false
		for i := range t.NumField() {
			f := t.Field(i)
			ft := f.Type
			if ft.Kind() == reflect.Pointer && ft.Name() == "" {
				ft = ft.Elem()
			}
			if f.Anonymous && ft.Kind() != reflect.Struct {
				if !f.IsExported() {
					continue // encoding/json ignores it
				}
				// encoding/json sees a field named after the type;
				// embedded, pyFloat's MarshalJSON would be promoted and
				// encode the whole struct.
				f.Anonymous = false
			} else if !f.IsExported() && !f.Anonymous {
				continue // encoding/json never sees it
			}
			var e *shadow
			if quoted(f.Tag, ft) {
				e = &shadow{typ: f.Type} // ",string": encoding/json writes the number as a string
			} else {
				e = elem(f.Type)
			}
			s.dynamic = s.dynamic || e.dynamic
			changed = changed || e.typ != f.Type
			s.sfields = append(s.sfields, reflect.StructField{Name: f.Name, Type: e.typ, Tag: f.Tag, Anonymous: f.Anonymous})
			s.fields = append(s.fields, i)
			s.shadows = append(s.shadows, e)
		}
		if changed || s.dynamic {
			fields := slices.Clone(s.sfields)
			for j, f := range fields {
				if f.Anonymous && hasMethods(f.Type) {
					// reflect.StructOf promotes an embedded type's
					// methods only for a first field, and panics
					// otherwise: a copy without methods encodes the same.
					s.shadows[j] = s.shadows[j].plain()
					fields[j].Type = s.shadows[j].typ
				}
			}
			s.typ = reflect.StructOf(fields)
		}
	}
	return s, cut
}

// quoted reports whether encoding/json writes the field as a JSON string
// (the ",string" option on a float).
func quoted(tag reflect.StructTag, ft reflect.Type) bool {
	_, opts, _ := strings.Cut(tag.Get("json"), ",")
	for opts != "" {
		var o string
		o, opts, _ = strings.Cut(opts, ",")
		if o == "string" {
			return ft.Kind() == reflect.Float64 || ft.Kind() == reflect.Float32
		}
	}
	return false
}

func hasMethods(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return reflect.PointerTo(t).NumMethod() > 0
}

// plain returns s for a struct (or a pointer to one) as a struct type
// without methods, the same to encoding/json.
func (s *shadow) plain() *shadow {
	if s.typ.Kind() == reflect.Pointer {
		if s.elem == nil || s.elem.sfields == nil {
			return s
		}
		e := s.elem.plain()
		return &shadow{typ: reflect.PointerTo(e.typ), dynamic: e.dynamic, elem: e}
	}
	if s.sfields == nil {
		return s // the type encodes itself: its methods are the point
	}
	c := *s
	c.typ = reflect.StructOf(s.sfields)
	return &c
}

// walk is the state of one convert: how deep it is, and past
// startCycleCheck levels the containers on its path, to refuse a value
// that contains itself as encoding/json does.
type walk struct {
	depth int
	path  map[pathKey]bool
}

type pathKey struct {
	p unsafe.Pointer
	n int
	t reflect.Type
}

const startCycleCheck = 1000

// cycleError is how convert gives up on a value that contains itself.
type cycleError struct{ v reflect.Value }

// enter records a pointer, slice or map on the path; leave takes it off.
func (w *walk) enter(v reflect.Value) pathKey {
	w.depth++
	if w.depth <= startCycleCheck {
		return pathKey{}
	}
	k := pathKey{p: v.UnsafePointer(), t: v.Type()}
	if v.Kind() == reflect.Slice {
		k.n = v.Len()
	}
	if w.path == nil {
		w.path = map[pathKey]bool{}
	}
	if w.path[k] {
		panic(cycleError{v})
	}
	w.path[k] = true
	return k
}

func (w *walk) leave(k pathKey) {
	w.depth--
	if k.t != nil {
		delete(w.path, k)
	}
}

// convert returns v as a value of the shadow type.
func (s *shadow) convert(v reflect.Value, w *walk) reflect.Value {
	if !s.dynamic && s.typ == v.Type() {
		return v
	}
	switch v.Kind() {
	case reflect.Float64, reflect.Float32:
		return v.Convert(s.typ)
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		e := v.Elem()
		if r := shadowOf(e.Type()).convert(e, w); r.Type().AssignableTo(v.Type()) {
			return r
		}
		return e
	case reflect.Pointer:
		if v.IsNil() {
			return reflect.Zero(s.typ)
		}
		defer w.leave(w.enter(v))
		p := reflect.New(s.typ.Elem())
		p.Elem().Set(s.elem.convert(v.Elem(), w))
		return p
	case reflect.Slice, reflect.Array:
		var out reflect.Value
		if v.Kind() == reflect.Slice {
			if v.IsNil() {
				return reflect.Zero(s.typ)
			}
			defer w.leave(w.enter(v))
			out = reflect.MakeSlice(s.typ, v.Len(), v.Len())
		} else {
			out = reflect.New(s.typ).Elem()
		}
		for i := range v.Len() {
			out.Index(i).Set(s.elem.convert(v.Index(i), w))
		}
		return out
	case reflect.Map:
		if v.IsNil() {
			return reflect.Zero(s.typ)
		}
		defer w.leave(w.enter(v))
		out := reflect.MakeMapWithSize(s.typ, v.Len())
		for it := v.MapRange(); it.Next(); {
			out.SetMapIndex(it.Key(), s.elem.convert(it.Value(), w))
		}
		return out
	case reflect.Struct:
		out := reflect.New(s.typ).Elem()
		for j, i := range s.fields {
			f := v.Field(i)
			if !f.CanInterface() {
				return v // an unexported embedded struct: left as it is
			}
			out.Field(j).Set(s.shadows[j].convert(f, w))
		}
		return out
	}
	return v
}
