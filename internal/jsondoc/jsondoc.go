// Package jsondoc encodes the documents the daemon writes on every create
// (a VM's meta.json, vm.json and hooks.json) as indented JSON: byte for
// byte json.MarshalIndent(v, "", "  ") and a newline, as people read them.
//
// json.MarshalIndent encodes into a buffer of its own, copies the result
// out, and indents that copy into a new slice twice its size: three
// times the document in garbage, for every document of every create.
// Encode keeps its encoders and buffers in a pool and allocates the
// result alone.
package jsondoc

import (
	"bytes"
	"encoding/json"
	"sync"
)

type encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = json.NewEncoder(&e.buf)
	e.enc.SetIndent("", "  ")
	return e
}}

// maxPooled bounds the buffers kept for the next document: an encoder
// that wrote a larger one is dropped, so that one large document does not
// stay in memory.
const maxPooled = 64 << 10

// Encode returns v as indented JSON ending in a newline: what
// json.MarshalIndent(v, "", "  ") returns, and "\n".
func Encode(v any) ([]byte, error) {
	e := encoders.Get().(*encoder)
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil {
		encoders.Put(e)
		return nil, err
	}
	out := bytes.Clone(e.buf.Bytes())
	if e.buf.Cap() <= maxPooled {
		encoders.Put(e)
	}
	return out, nil
}
