package filecopy

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A sparse disk keeps its holes and its bytes: the copy reads the same and
// allocates no more than the original.
func TestCloneKeepsContentAndHoles(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 10 << 20, size - 4096} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(off >> 20)}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := Clone(src, dst, 0o600); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("the copy differs from the original")
	}
	var ss, ds unix.Stat_t
	unix.Stat(src, &ss)
	unix.Stat(dst, &ds)
	if ds.Blocks > ss.Blocks+64 { // a few blocks of slack for metadata
		t.Fatalf("copy allocates %d blocks, the original %d: holes were filled", ds.Blocks, ss.Blocks)
	}
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

// An existing destination is never overwritten, and a failed copy leaves
// no file behind.
func TestCloneRefusesExistingAndCleansUp(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.WriteFile(src, []byte("new"), 0o600)
	os.WriteFile(dst, []byte("old"), 0o600)
	if err := Clone(src, dst, 0o600); err == nil {
		t.Fatal("Clone overwrote an existing file")
	}
	if b, _ := os.ReadFile(dst); string(b) != "old" {
		t.Fatalf("destination now %q", b)
	}
	if err := Clone(filepath.Join(dir, "missing"), filepath.Join(dir, "x"), 0o600); err == nil {
		t.Fatal("Clone of a missing file succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Fatalf("failed copy left its destination: %v", err)
	}
}

func TestLinkSharesTheFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.WriteFile(src, []byte("memory"), 0o400)
	if err := Link(src, dst, 0o400); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(src)
	b, _ := os.Stat(dst)
	if !os.SameFile(a, b) {
		t.Fatal("Link on one file system did not hard-link")
	}
}
