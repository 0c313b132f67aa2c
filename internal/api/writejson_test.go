package api

import (
	"bytes"
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

// Answers written one after another, large and small, from the buffers
// the answers before them used, are each exactly json.Marshal's encoding
// (indented when small) and a newline.
func TestWriteJSONAnswersInARowAreEachWhole(t *testing.T) {
	for i, v := range []any{
		map[string]string{"a": "<b>&"},
		map[string]string{"a": strings.Repeat("y", 5*indentMax)},
		[]int{1, 2},
		map[string]any{"nested": map[string]int{"x": 1}},
	} {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) <= indentMax {
			want, _ = json.MarshalIndent(v, "", "  ")
		}
		want = append(want, '\n')
		rec := httptest.NewRecorder()
		writeJSON(rec, 200, v)
		if got := rec.Body.String(); got != string(want) {
			t.Errorf("answer %d:\n got %.200q\nwant %.200q", i, got, want)
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

// BenchmarkWriteJSON: a VM's document as a create answers it, against
// encoding it anew into fresh slices (json.Marshal, then json.Indent into
// a new buffer), as answers were written before, in the same run.
func BenchmarkWriteJSON(b *testing.B) {
	vm := wire.VM{ID: "0b6f4a2e-9c1d-4e8f-a0b1-3c5d7e9f1a2b", Tags: map[string]string{"name": "web", "team": "a"},
		Disks: wire.Disks{Rootfs: "/var/lib/mergen/base/current/golden-rootfs.ext4", Agent: "/var/lib/mergen/base/current/agent-rootfs.ext4",
			Payload: "/var/lib/mergen/images/web/payload-rootfs.ext4", Data: "/var/lib/mergen/vms/0b6f4a2e-9c1d-4e8f-a0b1-3c5d7e9f1a2b/data.ext4"},
		Service: wire.Service{Available: true, Unit: "mergen@0b6f4a2e-9c1d-4e8f-a0b1-3c5d7e9f1a2b.service", ActiveState: "inactive", SubState: "dead"}}
	b.Run("writeJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			writeJSON(httptest.NewRecorder(), 201, vm)
		}
	})
	b.Run("baseline-fresh-slices", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rec := httptest.NewRecorder()
			c, _ := json.Marshal(vm)
			var ind bytes.Buffer
			ind.Grow(2 * len(c))
			json.Indent(&ind, c, "", "  ")
			rec.Write(append(ind.Bytes(), '\n'))
		}
	})
}
