package cache

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
)

// ErrLossyType: Memoize was asked to store, with the JSON codec, a type
// whose values JSON cannot carry whole. Every caller, the one that computed
// the value included, gets the value decoded from what was stored, so a
// field JSON leaves out would come back zero, without an error. Export the
// field, give the type MarshalJSON and UnmarshalJSON, or pass WithCodec.
var ErrLossyType = errors.New("cache: JSON would lose part of every value of this type")

// lossyTypes remembers the verdict per type: the walk runs once per type
// and process, not per call.
var lossyTypes sync.Map // reflect.Type -> error (nil: fine)

// checkJSONType returns an error wrapping ErrLossyType when JSON drops a
// field of t or of a type reachable from it through its exported fields,
// elements and pointers. A type that marshals and unmarshals itself
// (json.Marshaler and json.Unmarshaler, or the encoding.Text pair, as
// time.Time does) is trusted, and so is a field tagged `json:"-"`: its
// author asked JSON to leave it out.
func checkJSONType(t reflect.Type) error {
	if v, ok := lossyTypes.Load(t); ok {
		err, _ := v.(error)
		return err
	}
	var err error
	if path, why := lossyPath(t, map[reflect.Type]bool{}); why != "" {
		err = fmt.Errorf("%w: %s%s %s; every caller would get it zero", ErrLossyType, t, path, why)
	}
	lossyTypes.Store(t, err)
	return err
}

var (
	jsonMarshaler   = reflect.TypeFor[json.Marshaler]()
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textMarshaler   = reflect.TypeFor[encoding.TextMarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func encodesItself(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	m := t.Implements(jsonMarshaler) || p.Implements(jsonMarshaler)
	u := p.Implements(jsonUnmarshaler)
	tm := t.Implements(textMarshaler) || p.Implements(textMarshaler)
	tu := p.Implements(textUnmarshaler)
	return (m && u) || (tm && tu)
}

// lossyPath walks t and returns where a field is lost (".Inner.secret")
// and why, or "" when nothing is.
func lossyPath(t reflect.Type, seen map[reflect.Type]bool) (string, string) {
	if seen[t] {
		return "", ""
	}
	seen[t] = true
	if encodesItself(t) {
		return "", ""
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return lossyPath(t.Elem(), seen)
	case reflect.Map:
		path, why := lossyPath(t.Elem(), seen)
		if why != "" {
			return "[...]" + path, why
		}
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Tag.Get("json") == "-" {
				continue
			}
			if !f.IsExported() {
				ft := f.Type
				if ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if f.Anonymous && ft.Kind() == reflect.Struct {
					// JSON promotes the exported fields of an embedded struct.
					if path, why := lossyPath(ft, seen); why != "" {
						return "." + f.Name + path, why
					}
					continue
				}
				return "." + f.Name, "is unexported, and JSON leaves it out"
			}
			if path, why := lossyPath(f.Type, seen); why != "" {
				return "." + f.Name + path, why
			}
		}
	}
	return "", ""
}
