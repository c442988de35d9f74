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
	"strconv"
	"sync"
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
func marshalArg(v any) ([]byte, error) {
	if v == nil {
		return json.Marshal(v)
	}
	rv := reflect.ValueOf(v)
	s := shadowOf(rv.Type())
	if !s.dynamic && s.typ == rv.Type() {
		return json.Marshal(v)
	}
	return json.Marshal(s.convert(rv).Interface())
}

// shadow is the type a value is converted to before encoding: the same
// shape and json tags, with float kinds replaced by pyFloat.
type shadow struct {
	typ     reflect.Type
	dynamic bool    // an interface inside: values must be walked even if typ is unchanged
	elem    *shadow // of a pointer's, slice's, array's or map's elements
	fields  []int   // a struct's fields that encoding/json sees
	shadows []*shadow
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
	return shadowIn(t, map[reflect.Type]bool{})
}

// shadowIn is shadowOf for a type met while building the shadows of the
// types in building. A type that contains itself keeps its own type from
// the inner occurrence on: its floats there are encoded by encoding/json.
func shadowIn(t reflect.Type, building map[reflect.Type]bool) *shadow {
	if s, ok := shadows.Load(t); ok {
		return s.(*shadow)
	}
	if building[t] {
		return &shadow{typ: t}
	}
	building[t] = true
	s := makeShadow(t, building)
	delete(building, t)
	shadows.Store(t, s)
	return s
}

func makeShadow(t reflect.Type, building map[reflect.Type]bool) (s *shadow) {
	s = &shadow{typ: t}
	if t.Implements(jsonMarshaler) || t.Implements(textMarshaler) ||
		reflect.PointerTo(t).Implements(jsonMarshaler) || reflect.PointerTo(t).Implements(textMarshaler) {
		return s // the type says how it is encoded
	}
	defer func() {
		// reflect cannot build every shape (some embedded fields): such a
		// value is encoded as it is.
		if recover() != nil {
			s = &shadow{typ: t}
		}
	}()
	switch t.Kind() {
	case reflect.Float64:
		s.typ = reflect.TypeFor[pyFloat]()
	case reflect.Float32:
		s.typ = reflect.TypeFor[pyFloat32]()
	case reflect.Interface:
		s.dynamic = true
	case reflect.Pointer:
		e := shadowIn(t.Elem(), building)
		s.elem, s.dynamic = e, e.dynamic
		if e.typ != t.Elem() {
			s.typ = reflect.PointerTo(e.typ)
		}
	case reflect.Slice, reflect.Array:
		e := shadowIn(t.Elem(), building)
		s.elem, s.dynamic = e, e.dynamic
		if e.typ != t.Elem() {
			if t.Kind() == reflect.Slice {
				s.typ = reflect.SliceOf(e.typ)
			} else {
				s.typ = reflect.ArrayOf(t.Len(), e.typ)
			}
		}
	case reflect.Map:
		e := shadowIn(t.Elem(), building)
		s.elem, s.dynamic = e, e.dynamic
		if e.typ != t.Elem() {
			s.typ = reflect.MapOf(t.Key(), e.typ)
		}
	case reflect.Struct:
		var fields []reflect.StructField
		changed := false
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() && !f.Anonymous {
				continue // encoding/json never sees it
			}
			e := shadowIn(f.Type, building)
			s.dynamic = s.dynamic || e.dynamic
			changed = changed || e.typ != f.Type
			fields = append(fields, reflect.StructField{Name: f.Name, Type: e.typ, Tag: f.Tag, Anonymous: f.Anonymous})
			s.fields = append(s.fields, i)
			s.shadows = append(s.shadows, e)
		}
		if changed || s.dynamic {
			s.typ = reflect.StructOf(fields)
		}
	}
	return s
}

// convert returns v as a value of the shadow type.
func (s *shadow) convert(v reflect.Value) reflect.Value {
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
		if r := shadowOf(e.Type()).convert(e); r.Type().AssignableTo(v.Type()) {
			return r
		}
		return e
	case reflect.Pointer:
		if v.IsNil() {
			return reflect.Zero(s.typ)
		}
		p := reflect.New(s.typ.Elem())
		p.Elem().Set(s.elem.convert(v.Elem()))
		return p
	case reflect.Slice, reflect.Array:
		var out reflect.Value
		if v.Kind() == reflect.Slice {
			if v.IsNil() {
				return reflect.Zero(s.typ)
			}
			out = reflect.MakeSlice(s.typ, v.Len(), v.Len())
		} else {
			out = reflect.New(s.typ).Elem()
		}
		for i := range v.Len() {
			out.Index(i).Set(s.elem.convert(v.Index(i)))
		}
		return out
	case reflect.Map:
		if v.IsNil() {
			return reflect.Zero(s.typ)
		}
		out := reflect.MakeMapWithSize(s.typ, v.Len())
		for it := v.MapRange(); it.Next(); {
			out.SetMapIndex(it.Key(), s.elem.convert(it.Value()))
		}
		return out
	case reflect.Struct:
		out := reflect.New(s.typ).Elem()
		for j, i := range s.fields {
			f := v.Field(i)
			if !f.CanInterface() {
				return v // an unexported embedded struct: left as it is
			}
			out.Field(j).Set(s.shadows[j].convert(f))
		}
		return out
	}
	return v
}
