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
