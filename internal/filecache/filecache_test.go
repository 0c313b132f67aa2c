package filecache

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

func TestLoadSeesReplacementAndRemoval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.json")
	if err := atomicfile.WriteFile(path, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	decodes := 0
	decode := func(b []byte) (string, bool, error) { decodes++; return string(b), true, nil }
	var c Cache[string]
	for i := 0; i < 3; i++ {
		if v, err := c.Load(path, decode); err != nil || v != "one" {
			t.Fatalf("load %d: %q, %v", i, v, err)
		}
	}
	if decodes != 1 {
		t.Fatalf("an unchanged file was decoded %d times, want 1", decodes)
	}
	// Another writer replaces the file by rename, same size: a new inode.
	other := filepath.Join(filepath.Dir(path), "other")
	if err := os.WriteFile(other, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, path); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Load(path, decode); err != nil || v != "two" {
		t.Fatalf("after rename: %q, %v; want two", v, err)
	}
	// Rewritten in place, same size, with a later modification time.
	if err := os.WriteFile(path, []byte("six"), 0o644); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Load(path, decode); err != nil || v != "six" {
		t.Fatalf("after rewrite in place: %q, %v; want six", v, err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Load(path, decode); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after remove: %v, want not exist", err)
	}
	if c.Len() != 0 {
		t.Fatalf("a removed file is still cached (%d entries)", c.Len())
	}
}

func TestLoadDoesNotCacheWhatDecodeRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	decodes := 0
	var c Cache[int]
	for i := 0; i < 2; i++ {
		if _, err := c.Load(path, func([]byte) (int, bool, error) { decodes++; return 1, false, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if decodes != 2 || c.Len() != 0 {
		t.Fatalf("decodes %d, entries %d; want 2, 0", decodes, c.Len())
	}
	var nilCache *Cache[int]
	if v, err := nilCache.Load(path, func([]byte) (int, bool, error) { return 7, true, nil }); err != nil || v != 7 {
		t.Fatalf("nil cache: %d, %v", v, err)
	}
}
