package jsondoc

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
)

type doc struct {
	Name  string            `json:"name"`
	HTML  string            `json:"html"`
	Args  []string          `json:"args"`
	Tags  map[string]string `json:"tags,omitempty"`
	Inner *doc              `json:"inner,omitempty"`
	N     float64           `json:"n"`
}

// Encode writes what json.MarshalIndent writes, and a newline, for every
// document and from encoders reused by the documents before it.
func TestEncodeIsMarshalIndentAndANewline(t *testing.T) {
	docs := []any{
		doc{Name: "a", HTML: "<b>&</b>", Args: []string{"x", "y\n\"z\""}, Tags: map[string]string{"k": "v", "a": "b"}, N: 1.5},
		doc{Inner: &doc{Name: "inner", Args: nil}},
		map[string]any{},
		[]int{1, 2, 3},
		"plain",
		doc{Name: strings.Repeat("long ", 20000)}, // past maxPooled: its encoder is dropped
		doc{Name: "after the long one"},
	}
	for i, d := range docs {
		want, err := json.MarshalIndent(d, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, '\n')
		got, err := Encode(d)
		if err != nil {
			t.Fatalf("doc %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("doc %d:\n got %q\nwant %q", i, got, want)
		}
	}
	// The result is the caller's: the next document does not change it.
	first, _ := Encode(doc{Name: "first"})
	keep := bytes.Clone(first)
	Encode(doc{Name: "second, longer than the first"})
	if !bytes.Equal(first, keep) {
		t.Errorf("a returned document changed after the next Encode: %q", first)
	}
}

// An error is json.Marshal's, and the next document is whole.
func TestEncodeReportsWhatCannotBeEncoded(t *testing.T) {
	if _, err := Encode(doc{N: math.Inf(1)}); err == nil {
		t.Fatal("Encode of +Inf succeeded")
	}
	got, err := Encode(doc{Name: "next"})
	want, _ := json.MarshalIndent(doc{Name: "next"}, "", "  ")
	if err != nil || !bytes.Equal(got, append(want, '\n')) {
		t.Errorf("after a failed Encode: %q, %v", got, err)
	}
}

// BenchmarkEncode: a document of the size of a QEMU VM's vm.json, against
// json.MarshalIndent in the same run.
func BenchmarkEncode(b *testing.B) {
	d := doc{Name: "0b6f4a2e-9c1d-4e8f-a0b1-3c5d7e9f1a2b", HTML: "q35", Tags: map[string]string{"a": "b"}}
	for i := 0; i < 60; i++ {
		d.Args = append(d.Args, "-drive", "file=/proc/self/fd/5,if=virtio,format=raw,readonly=on")
	}
	b.Run("jsondoc", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Encode(d); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-MarshalIndent", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			out, err := json.MarshalIndent(d, "", "  ")
			if err != nil {
				b.Fatal(err)
			}
			_ = append(out, '\n')
		}
	})
}
