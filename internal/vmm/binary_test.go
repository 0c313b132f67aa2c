package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A binary found on PATH is kept, but a kept path that no longer names an
// executable is never handed out: the next lookup walks PATH again.
func TestFindBinaryFollowsABinaryThatMovesOrGoes(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	t.Setenv("PATH", first+string(os.PathListSeparator)+second)
	install := func(dir string) string {
		p := filepath.Join(dir, "mergen-test-vmm")
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	find := func() (string, error) { return findBinary("", "mergen-test-vmm") }

	inFirst := install(first)
	if p, err := find(); err != nil || p != inFirst {
		t.Fatalf("found %q, %v; want %s", p, err, inFirst)
	}
	if p, err := find(); err != nil || p != inFirst {
		t.Fatalf("found again %q, %v; want %s", p, err, inFirst)
	}

	// Moved to a later entry of PATH.
	if err := os.Remove(inFirst); err != nil {
		t.Fatal(err)
	}
	inSecond := install(second)
	if p, err := find(); err != nil || p != inSecond {
		t.Fatalf("after the move: found %q, %v; want %s", p, err, inSecond)
	}

	// No longer executable, then gone.
	if err := os.Chmod(inSecond, 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := find(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("not executable: found %q, %v; want ErrUnavailable", p, err)
	}
	if err := os.Remove(inSecond); err != nil {
		t.Fatal(err)
	}
	if p, err := find(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("removed: found %q, %v; want ErrUnavailable", p, err)
	}

	// Another PATH is another lookup, even with the binary still in the
	// first one.
	inFirst = install(first)
	if p, err := find(); err != nil || p != inFirst {
		t.Fatalf("reinstalled: found %q, %v; want %s", p, err, inFirst)
	}
	t.Setenv("PATH", second)
	if p, err := find(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("with PATH=%s: found %q, %v; want ErrUnavailable", second, p, err)
	}
}
