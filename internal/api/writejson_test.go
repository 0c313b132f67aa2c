package api

import (
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/wire"
)

// Small answers are indented for people; large ones go compact. Both are
// the same JSON with the right length.
func TestWriteJSONIndentsOnlySmallAnswers(t *testing.T) {
	for _, n := range []int{1, 2 * indentMax} {
		v := map[string]string{"a": strings.Repeat("x", n)}
		rec := httptest.NewRecorder()
		writeJSON(rec, 200, v)
		body := rec.Body.String()
		if indented := strings.Contains(body, "\n  "); indented != (n < indentMax) {
			t.Errorf("answer of %d bytes indented: %v", n, indented)
		}
		if rec.Header().Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Errorf("Content-Length %s, body %d bytes", rec.Header().Get("Content-Length"), len(body))
		}
		var back map[string]string
		if err := json.Unmarshal([]byte(body), &back); err != nil || back["a"] != v["a"] {
			t.Errorf("answer of %d bytes does not decode back: %v", n, err)
		}
	}
}

// A list written from documents already encoded is the very answer
// writeJSON gives for the list, small (indented) or large (compact), and
// empty.
func TestWriteListIsWriteJSONOfTheList(t *testing.T) {
	for _, n := range []int{0, 2, 300} {
		vms := make([]wire.VM, n)
		docs := make(rawDocs, n)
		for i := range vms {
			vms[i] = wire.VM{ID: strconv.Itoa(i), Tags: map[string]string{"note": "<a & b>"}, State: wire.StateStopped}
			b, err := json.Marshal(vms[i])
			if err != nil {
				t.Fatal(err)
			}
			docs[i] = b
		}
		want, got := httptest.NewRecorder(), httptest.NewRecorder()
		writeJSON(want, 200, wire.VMList{VMs: vms, Count: n})
		writeList(got, docs)
		if got.Body.String() != want.Body.String() {
			t.Errorf("%d VMs: writeList answered\n%.300s\nwriteJSON\n%.300s", n, got.Body, want.Body)
		}
		for _, h := range []string{"Content-Type", "Content-Length"} {
			if got.Header().Get(h) != want.Header().Get(h) {
				t.Errorf("%d VMs: %s %q, want %q", n, h, got.Header().Get(h), want.Header().Get(h))
			}
		}
		if got.Code != 200 {
			t.Errorf("%d VMs: status %d", n, got.Code)
		}
	}
}

// rawDocs are encoded documents as a list gives them.
type rawDocs []json.RawMessage

func (d rawDocs) Len() int                           { return len(d) }
func (d rawDocs) Size(i int) int                     { return len(d[i]) }
func (d rawDocs) AppendDoc(dst []byte, i int) []byte { return append(dst, d[i]...) }
