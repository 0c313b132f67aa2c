package atomicfile_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

// Create writes a new file with its mode and refuses to replace one that
// exists, leaving no temporary file either way.
func TestCreateNeverReplacesAFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "token")
	if err := atomicfile.Create(p, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := atomicfile.Create(p, []byte("second\n"), 0o644)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create = %v; want fs.ErrExist", err)
	}
	b, _ := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if string(b) != "first\n" || fi.Mode().Perm() != 0o600 {
		t.Errorf("file holds %q with mode %04o; want the first content, 0600", b, fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d entries in the directory; want the file alone", len(entries))
	}
}

// A Pending replacement is invisible until it is placed, and a discarded
// one leaves the target as it was and no temporary file.
func TestPendingIsSeenOnlyOncePlaced(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "generation")
	if err := atomicfile.WriteFile(p, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	next, err := atomicfile.Prepare(p, []byte("2"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Sync(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "1" {
		t.Fatalf("before Place the file holds %q; want the old content", b)
	}
	if err := next.Place(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if string(b) != "2" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("after Place: %q, mode %04o; want the new content, 0600", b, fi.Mode().Perm())
	}
	gone, err := atomicfile.Prepare(p, []byte("3"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	gone.Discard()
	if b, _ := os.ReadFile(p); string(b) != "2" {
		t.Fatalf("after Discard the file holds %q; want it unchanged", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("%d entries; want the file alone", len(entries))
	}
}
