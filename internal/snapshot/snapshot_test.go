package snapshot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/store"
)

type fixture struct {
	s    *Store
	l    layout.Layout
	base string // a shared read-only file the snapshots depend on
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	dir := t.TempDir()
	l := layout.Layout{ConfigRoot: filepath.Join(dir, "config"), RunRoot: filepath.Join(dir, "run"), DataRoot: filepath.Join(dir, "data")}
	base := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(base, []byte("base disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	return fixture{s: New(l), l: l, base: base}
}

// take commits a snapshot with a memory file and a data disk.
func (f fixture) take(t *testing.T, memory string) Record {
	t.Helper()
	id := store.NewID()
	staging, err := f.s.Stage(id)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(staging, "memory"), []byte(memory), 0o600)
	os.WriteFile(filepath.Join(staging, "disks", DataDisk), []byte("data"), 0o600)
	b, err := Fingerprint("rootfs", f.base)
	if err != nil {
		t.Fatal(err)
	}
	rec := Record{ID: id, CreatedAt: time.Now(), VMM: "qemu", VMMFiles: []string{"memory"}, HasData: true, Bases: []Base{b}}
	if err := f.s.Commit(staging, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestACommittedSnapshotIsCompleteChecksummedAndListed(t *testing.T) {
	f := newFixture(t)
	rec := f.take(t, "guest memory")
	if len(rec.Files) != 2 || rec.Files[0].Name != "memory" || rec.Files[1].Name != "disks/"+DataDisk {
		t.Fatalf("files %+v", rec.Files)
	}
	if rec.SizeBytes != int64(len("guest memory")+len("data")) {
		t.Fatalf("size %d", rec.SizeBytes)
	}
	got, err := f.s.Get(rec.ID)
	if err != nil || got.Files[0].SHA256 != rec.Files[0].SHA256 {
		t.Fatalf("Get: %+v, %v", got, err)
	}
	if fi, _ := os.Stat(f.l.Snapshot(rec.ID).Record); fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(filepath.Join(f.l.Snapshot(rec.ID).Dir, "memory")); fi.Mode().Perm() != 0o400 {
		t.Fatalf("a committed file is writable: %v", fi.Mode().Perm())
	}
	list, err := f.s.List()
	if err != nil || len(list) != 1 || list[0].ID != rec.ID {
		t.Fatalf("List: %+v, %v", list, err)
	}
	if r, err := f.s.Resolve(rec.ID[:8]); err != nil || r.ID != rec.ID {
		t.Fatalf("Resolve by prefix: %+v, %v", r, err)
	}
	if _, err := f.s.Resolve(rec.ID[:5]); !errdefs.IsNotFound(err) {
		t.Fatalf("a 5-character prefix: %v", err)
	}
	if err := f.s.Verify(rec); err != nil {
		t.Fatalf("Verify of an intact snapshot: %v", err)
	}
}

// A crash leaves staging and trash directories; neither is a snapshot, and
// Sweep removes both.
func TestHalfWrittenSnapshotsAreNeverListedAndAreSwept(t *testing.T) {
	f := newFixture(t)
	kept := f.take(t, "m")
	staging, err := f.s.Stage(store.NewID())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(staging, "memory"), []byte("half"), 0o600)
	trash := filepath.Join(f.l.SnapshotsDir(), layout.TrashPrefix+"x")
	os.Mkdir(trash, 0o700)
	if ids, _ := f.s.IDs(); len(ids) != 1 || ids[0] != kept.ID {
		t.Fatalf("IDs with leftovers: %v", ids)
	}
	if err := f.s.Sweep(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(f.l.SnapshotsDir())
	if len(entries) != 1 || entries[0].Name() != kept.ID {
		t.Fatalf("after Sweep: %v", entries)
	}
}

func TestVerifyRefusesDamageAndChangedBases(t *testing.T) {
	cases := []struct {
		name, says string
		damage     func(f fixture, rec Record)
	}{
		{"a flipped byte", "corrupted", func(f fixture, rec Record) {
			p := filepath.Join(f.l.Snapshot(rec.ID).Dir, "memory")
			os.Chmod(p, 0o600) // committed files are read-only
			os.WriteFile(p, []byte("guest memorY"), 0o600)
		}},
		{"a cut file", "truncated", func(f fixture, rec Record) {
			p := filepath.Join(f.l.Snapshot(rec.ID).Dir, "memory")
			os.Chmod(p, 0o600)
			os.Truncate(p, 3)
		}},
		{"a missing data disk", DataDisk, func(f fixture, rec Record) {
			os.Remove(filepath.Join(f.l.Snapshot(rec.ID).Disks, DataDisk))
		}},
		{"a base disk rewritten", "changed since", func(f fixture, rec Record) {
			later := time.Now().Add(time.Hour)
			os.Chtimes(f.base, later, later)
		}},
		{"a base disk gone", "is gone", func(f fixture, rec Record) { os.Remove(f.base) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			rec := f.take(t, "guest memory")
			if err := f.s.Verify(rec); err != nil { // and remember it as verified
				t.Fatal(err)
			}
			c.damage(f, rec)
			err := f.s.Verify(rec)
			if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("Verify after %s: %v; want a conflict saying %q", c.name, err, c.says)
			}
		})
	}
}

// A restore holds the snapshot while it reads it; a delete meanwhile is
// refused, and goes through once the restore let go.
func TestDeleteWaitsForNoRestore(t *testing.T) {
	f := newFixture(t)
	rec := f.take(t, "m")
	_, release, err := f.s.Use(context.Background(), rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.s.Delete(rec.ID); !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("Delete during a restore: %v", err)
	}
	if _, err := f.s.Get(rec.ID); err != nil {
		t.Fatalf("the refused delete removed the snapshot: %v", err)
	}
	release()
	if err := f.s.Delete(rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.Get(rec.ID); !errdefs.IsNotFound(err) {
		t.Fatalf("Get after delete: %v", err)
	}
	if entries, _ := os.ReadDir(f.l.SnapshotsDir()); len(entries) != 0 {
		t.Fatalf("delete left %v", entries)
	}
	if _, err := os.Stat(f.l.Snapshot(rec.ID).Lock); !os.IsNotExist(err) {
		t.Fatalf("delete left the lock: %v", err)
	}
	if err := f.s.Delete(rec.ID); !errdefs.IsNotFound(err) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestGetRefusesWhatIsNotASnapshot(t *testing.T) {
	f := newFixture(t)
	for _, id := range []string{"../etc", "", "x"} {
		if _, err := f.s.Get(id); !errdefs.IsNotFound(err) {
			t.Fatalf("Get(%q): %v", id, err)
		}
	}
	rec := f.take(t, "m")
	os.WriteFile(f.l.Snapshot(rec.ID).Record, []byte(`{"version":99,"id":"`+rec.ID+`"}`), 0o600)
	if _, err := f.s.Get(rec.ID); err == nil || !strings.Contains(err.Error(), "version 99") {
		t.Fatalf("a record of a later version: %v", err)
	}
}
