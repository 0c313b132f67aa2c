// Package jsondoc encodes the documents the daemon writes and answers on
// every create (a VM's meta.json, vm.json and hooks.json, the API's
// answer) into memory it keeps between uses.
//
// json.MarshalIndent encodes a document into a buffer of its own, copies
// the result out, and indents that copy into a new slice twice its size:
// three times the document in garbage, for every document of every
// create. A Buffer keeps its encoder and its buffers for the next
// document; Encode allocates only its result.
package jsondoc

import (
	"bytes"
	"encoding/json"
	"sync"
)

// Buffer encodes documents into memory kept from one use to the next: Get
// one, encode, use the bytes, Put it back.
type Buffer struct {
	compact, indented bytes.Buffer
	enc               *json.Encoder // into compact
}

var buffers = sync.Pool{New: func() any {
	b := &Buffer{}
	b.enc = json.NewEncoder(&b.compact)
	return b
}}

// maxPooled bounds the buffers kept for the next document: a Buffer that
// held a larger one is dropped, so that one large document does not stay
// in memory.
const maxPooled = 64 << 10

// Get returns a Buffer for a document.
func Get() *Buffer { return buffers.Get().(*Buffer) }

// Put gives b back for the next document; b and the bytes it returned are
// not used after.
func (b *Buffer) Put() {
	if b.compact.Cap() <= maxPooled && b.indented.Cap() <= maxPooled {
		buffers.Put(b)
	}
}

// Compact is v as json.Marshal encodes it, and a newline. The bytes are
// b's, until its next use.
func (b *Buffer) Compact(v any) ([]byte, error) {
	b.compact.Reset()
	if err := b.enc.Encode(v); err != nil {
		return nil, err
	}
	return b.compact.Bytes(), nil
}

// Indent is doc indented by two spaces a level, as json.MarshalIndent
// indents (a trailing newline is kept). The bytes are b's, until its next
// use; doc may be Compact's.
func (b *Buffer) Indent(doc []byte) ([]byte, error) {
	b.indented.Reset()
	if err := json.Indent(&b.indented, doc, "", "  "); err != nil {
		return nil, err
	}
	return b.indented.Bytes(), nil
}

// Encode returns v as indented JSON ending in a newline: what
// json.MarshalIndent(v, "", "  ") returns, and "\n".
func Encode(v any) ([]byte, error) {
	b := Get()
	defer b.Put()
	doc, err := b.Compact(v)
	if err != nil {
		return nil, err
	}
	if doc, err = b.Indent(doc); err != nil {
		return nil, err
	}
	return bytes.Clone(doc), nil
}
