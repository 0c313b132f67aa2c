package forwarder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/store"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func slogText(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// writeMeta stores m as <root>/<m.ID>/meta.json.
func writeMeta(t testing.TB, root string, m store.Meta) {
	t.Helper()
	dir := filepath.Join(root, m.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, store.FileMeta), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeRaw(t testing.TB, root, dir, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, dir, store.FileMeta), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const (
	idA = "084604f6-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
	idB = "084604f6-9999-4e5f-8a9b-0c1d2e3f4a5b" // same short id as idA
	idC = "c0ffee00-0000-4000-8000-000000000001"
	idD = "d00dfeed-0000-4000-8000-000000000002"
	idE = "e0e0e0e0-0000-4000-8000-000000000003"
)

// labelTags are FWD_LABEL_TAGS's default.
var labelTags = []string{"name", "app"}

func TestResolverPrecedence(t *testing.T) {
	root := t.TempDir()
	vm := func(id string, tags map[string]string) store.Meta {
		return store.Meta{ID: id, GuestIP: "127.0.0.1", HTTPPort: 8080, Netns: store.NetnsName(id), Tags: tags}
	}
	writeMeta(t, root, vm(idA, map[string]string{"app": "shop"}))
	writeMeta(t, root, vm(idB, map[string]string{"app": "blog", "name": "Blog-Main"}))
	writeMeta(t, root, vm(idC, map[string]string{"app": "api"}))
	writeMeta(t, root, vm(idD, map[string]string{"app": "api"}))
	// A tag value equal to another VM's short id loses to the id.
	// Tags outside the label tags are not labels: "x" cannot squat "shop".
	writeMeta(t, root, vm(idE, map[string]string{"app": "c0ffee00", "alias": "under_score", "x": "shop", "owner": "squat"}))
	// Not VMs or not usable: skipped, never fatal.
	writeRaw(t, root, ".trash-123", `{"id":".trash-123","tags":{"app":"ghost"}}`)
	writeRaw(t, root, "broken", `{"id": "broken", "tags": {`)
	writeRaw(t, root, "mismatch", `{"id":"someone-else","tags":{"app":"mismatch"}}`)
	writeRaw(t, root, "f00ba400-0000-4000-8000-000000000009", `{"id":"f00ba400-0000-4000-8000-000000000009","httpPort":80,"guestIP":"127.0.0.1","netns":"../../etc","tags":{"app":"escape"}}`)

	r := NewResolver(root, "/run/netns", labelTags, time.Hour, discard())
	cases := []struct {
		label   string
		wantID  string
		wantErr error
		errHas  string
	}{
		{label: idA, wantID: idA},                               // full id
		{label: "c0ffee00", wantID: idC},                        // short id beats idE's tag value
		{label: "c0ffee00-0000", wantID: idC},                   // longer unique prefix
		{label: "084604f6", wantErr: ErrAmbiguous, errHas: idB}, // short id shared
		{label: "084604f6-9999", wantID: idB},                   // a longer prefix disambiguates
		{label: "shop", wantID: idA},                            // tag value
		{label: "blog-main", wantID: idB},                       // the name tag too, case-folded
		{label: "squat", wantErr: ErrNotFound},                  // not a label tag
		{label: "api", wantErr: ErrAmbiguous, errHas: "tag value"},
		{label: "c0ffee", wantErr: ErrNotFound},   // prefixes under 8 characters do not match
		{label: "ghost", wantErr: ErrNotFound},    // dot directories are not VMs
		{label: "mismatch", wantErr: ErrNotFound}, // id must match its directory
		{label: "nothing", wantErr: ErrNotFound},
	}
	for _, c := range cases {
		got, err := r.Resolve(context.Background(), c.label)
		if c.wantErr != nil {
			if !errors.Is(err, c.wantErr) || !strings.Contains(fmt.Sprint(err), c.errHas) {
				t.Errorf("Resolve(%q) = %v, %v; want error %v mentioning %q", c.label, got, err, c.wantErr, c.errHas)
			}
			continue
		}
		if err != nil || got.ID != c.wantID {
			t.Errorf("Resolve(%q) = %+v, %v; want %s", c.label, got, err, c.wantID)
		}
	}

	esc, err := r.Resolve(context.Background(), "escape")
	if err != nil || esc.Problem == "" || esc.NetnsPath != "" {
		t.Errorf("netns escaping the root must resolve to an unusable target, got %+v, %v", esc, err)
	}
}

func TestResolverTargetProblems(t *testing.T) {
	root := t.TempDir()
	cases := []struct {
		meta    store.Meta
		problem string // substring; empty means usable
	}{
		{store.Meta{ID: "a0000000-1", GuestIP: "127.0.0.1", HTTPPort: 80, Netns: "mergen-a0000000"}, ""},
		{store.Meta{ID: "a0000000-2", GuestIP: "127.0.0.1", HTTPPort: 0}, "httpPort"},
		{store.Meta{ID: "a0000000-3", GuestIP: "127.0.0.1", HTTPPort: 70000}, "httpPort"},
		{store.Meta{ID: "a0000000-4", GuestIP: "not-an-ip", HTTPPort: 80}, "guestIP"},
		{store.Meta{ID: "a0000000-5", GuestIP: "127.0.0.1", HTTPPort: 80, Netns: "a/b"}, "netns"},
		{store.Meta{ID: "a0000000-6", GuestIP: "127.0.0.1", HTTPPort: 80, Netns: ".."}, "netns"},
	}
	for _, c := range cases {
		writeMeta(t, root, c.meta)
	}
	r := NewResolver(root, "/ns", labelTags, time.Hour, discard())
	for _, c := range cases {
		got, err := r.Resolve(context.Background(), c.meta.ID)
		if err != nil {
			t.Fatalf("Resolve(%s): %v", c.meta.ID, err)
		}
		if c.problem == "" {
			if got.Problem != "" || got.NetnsPath != "/ns/"+c.meta.Netns || got.Addr.String() != "127.0.0.1:80" {
				t.Errorf("%s: got %+v, want usable target in /ns/%s", c.meta.ID, got, c.meta.Netns)
			}
			continue
		}
		if !strings.Contains(got.Problem, c.problem) || !strings.Contains(got.Problem, c.meta.ID) {
			t.Errorf("%s: problem %q, want one naming the VM and %q", c.meta.ID, got.Problem, c.problem)
		}
	}
}

// The index is reused within the TTL (no scan per lookup): a changed tag
// of an existing VM is seen after the TTL, a hit after the TTL is answered
// from the old index while a refresh runs; a VM created since the last
// scan is found on its first lookup, however fresh the index.
func TestResolverTTL(t *testing.T) {
	root := t.TempDir()
	now := time.Unix(1000, 0)
	r := NewResolver(root, "/ns", labelTags, 5*time.Second, discard())
	r.now = func() time.Time { return now }
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: 80, Tags: map[string]string{"app": "one"}})
	if _, err := r.Resolve(context.Background(), "one"); err != nil {
		t.Fatal(err)
	}
	// Retag the existing VM: its directory stays, the root is unchanged.
	later := time.Now().Add(time.Minute)
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: 80, Tags: map[string]string{"app": "renamed"}})
	os.Chtimes(filepath.Join(root, idA, store.FileMeta), later, later)
	now = now.Add(4 * time.Second)
	if _, err := r.Resolve(context.Background(), "renamed"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("within the TTL a changed VM must not be seen (no rescan), got %v", err)
	}
	now = now.Add(2 * time.Second)
	if got, err := r.Resolve(context.Background(), "renamed"); err != nil || got.ID != idA {
		t.Fatalf("a miss after the TTL must rescan: %v, %v", got, err)
	}
	// A new VM, a moment after the rescan.
	writeMeta(t, root, store.Meta{ID: idC, GuestIP: "127.0.0.1", HTTPPort: 80, Tags: map[string]string{"app": "two"}})
	if got, err := r.Resolve(context.Background(), "two"); err != nil || got.ID != idC {
		t.Fatalf("a VM created since the last scan must be found at once: %v, %v", got, err)
	}
	if err := os.RemoveAll(filepath.Join(root, idC)); err != nil {
		t.Fatal(err)
	}
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve(context.Background(), "two"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a deleted VM must be gone after a refresh, got %v", err)
	}
}

func TestResolverMissingRoot(t *testing.T) {
	r := NewResolver(filepath.Join(t.TempDir(), "absent"), "/ns", labelTags, time.Second, discard())
	if _, err := r.Resolve(context.Background(), "app"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a missing config root means no VMs, got %v", err)
	}
}

// BenchmarkResolve measures a lookup in an index of 5000 VMs.
func BenchmarkResolve(b *testing.B) {
	root := b.TempDir()
	for i := range 5000 {
		id := fmt.Sprintf("%08x-0000-4000-8000-%012d", i*7919, i)
		writeMeta(b, root, store.Meta{ID: id, GuestIP: "127.0.0.1", HTTPPort: 80, Tags: map[string]string{"app": fmt.Sprintf("app%d", i)}})
	}
	r := NewResolver(root, "/ns", labelTags, time.Hour, discard())
	if err := r.Refresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := r.Resolve(context.Background(), fmt.Sprintf("app%d", i%5000)); err != nil {
			b.Fatal(err)
		}
	}
}
