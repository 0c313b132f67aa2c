package snapshot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/store"
)

// A snapshot's files staged by someone else than Commit (a pull) are
// installed under the record they came with, read back unchanged, and
// never replace a snapshot of the same id.
func TestInstallCommitsAStagedCopy(t *testing.T) {
	from, to := newFixture(t), newFixture(t)
	src, dst := from.s, to.s
	rec := from.take(t, "guest memory")

	staging, err := dst.Stage(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rec.Files {
		b, err := os.ReadFile(filepath.Join(src.Paths(rec.ID).Dir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(staging, f.Name), b, 0o644)
	}
	if err := dst.Install(staging, rec); err != nil {
		t.Fatal(err)
	}
	got, err := dst.Get(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Verify(got); err != nil {
		t.Fatalf("installed copy does not verify: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dst.Paths(rec.ID).Dir, "memory")); err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("installed memory file: %v %v; want mode 0400", fi.Mode(), err)
	}

	// A second copy of the same id is refused and leaves the first alone.
	again, _ := dst.Stage(rec.ID)
	for _, f := range rec.Files {
		os.WriteFile(filepath.Join(again, f.Name), []byte(strings.Repeat("x", int(f.Size))), 0o644)
	}
	if err := dst.Install(again, rec); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("install over an existing snapshot: %v, want fs.ErrExist", err)
	}
	dst.Discard(again)
	if err := dst.Verify(got); err != nil {
		t.Fatalf("existing snapshot changed by a refused install: %v", err)
	}

	// A staged file of the wrong size is not installed.
	other := rec
	other.ID = store.NewID()
	short, _ := dst.Stage(other.ID)
	os.WriteFile(filepath.Join(short, "memory"), []byte("guest"), 0o644)
	os.WriteFile(filepath.Join(short, "disks", DataDisk), []byte("data disk"), 0o644)
	if err := dst.Install(short, other); err == nil || !strings.Contains(err.Error(), "memory is 5 bytes") {
		t.Fatalf("install of a short file: %v", err)
	}
	dst.Discard(short)
	if _, err := os.Stat(dst.Paths(other.ID).Dir); !os.IsNotExist(err) {
		t.Fatalf("refused install left %s: %v", other.ID, err)
	}
}

func TestDecodeRecordRefusesAnotherIDOrVersion(t *testing.T) {
	id, other := store.NewID(), store.NewID()
	b, err := EncodeRecord(Record{Version: RecordVersion, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := DecodeRecord(id, b); err != nil || rec.ID != id {
		t.Fatalf("decode: %+v %v", rec, err)
	}
	if _, err := DecodeRecord(other, b); err == nil || !strings.Contains(err.Error(), "its record is of snapshot \""+id+"\"") {
		t.Fatalf("decode as another id: %v", err)
	}
	b, _ = EncodeRecord(Record{Version: RecordVersion + 1, ID: id})
	if _, err := DecodeRecord(id, b); err == nil || !strings.Contains(err.Error(), "record version 2; this mergen reads version 1") {
		t.Fatalf("decode of a newer version: %v", err)
	}
}

func TestCheck(t *testing.T) {
	sum := strings.Repeat("0f", 32)
	kernel := Base{Field: "kernel", Path: "/srv/base/vmlinux"}
	rootfs := Base{Field: "rootfs", Path: "/srv/base/rootfs.ext4"}
	withBases := func(r Record) Record {
		r.Kernel, r.Disks.Rootfs, r.Bases = kernel.Path, rootfs.Path, []Base{rootfs, kernel}
		return r
	}
	cases := map[string]struct {
		rec  Record
		want string
	}{
		"ok":            {rec: Record{VMMFiles: []string{"memory"}, HasData: true, Files: []File{{Name: "memory", SHA256: sum}, {Name: "disks/data.ext4", SHA256: sum}}}},
		"ok with bases": {rec: withBases(Record{DiskRoots: map[string]string{"kernel": "/srv", "rootfs": "/srv/base"}})},
		"escape":        {rec: Record{Files: []File{{Name: "../memory"}}}, want: "not a file name inside"},
		"absolute":      {rec: Record{Files: []File{{Name: "/etc/shadow"}}}, want: "not a file name inside"},
		"unclean":       {rec: Record{Files: []File{{Name: "disks/../memory"}}}, want: "not a file name inside"},
		"record":        {rec: Record{Files: []File{{Name: "snapshot.json"}}}, want: "not a file name inside"},
		"twice":         {rec: Record{Files: []File{{Name: "memory"}, {Name: "memory"}}}, want: "listed twice"},
		"vmm unlisted":  {rec: Record{VMMFiles: []string{"../../etc/passwd"}}, want: "not among the snapshot's checksummed files"},
		"data unlisted": {rec: Record{HasData: true, Files: []File{{Name: "memory"}}}, want: "hasData"},
		"host data":     {rec: Record{Disks: store.Disks{Data: "/etc/shadow"}}, want: "a snapshot's data disk is its own"},
		"unfingerprinted payload": {rec: func() Record {
			r := withBases(Record{})
			r.Disks.Payload = "/etc/shadow"
			return r
		}(), want: "gives 3 host files and fingerprints 2"},
		"fingerprint of another file": {rec: func() Record {
			r := withBases(Record{})
			r.Kernel = "/etc/shadow"
			return r
		}(), want: "its kernel /etc/shadow is not fingerprinted"},
		"relative path": {rec: func() Record {
			r := withBases(Record{})
			r.Kernel, r.Bases[1].Path = "vmlinux", "vmlinux"
			return r
		}(), want: "not a clean absolute path"},
		"outside its root": {rec: withBases(Record{DiskRoots: map[string]string{"kernel": "/srv/other"}}), want: "does not lie below its root /srv/other"},
		"root of nothing":  {rec: withBases(Record{DiskRoots: map[string]string{"initrd": "/srv"}}), want: `diskRoots names "initrd"`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := tc.rec.Check()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}
