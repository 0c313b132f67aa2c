package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A binary found on PATH is kept, but a kept path that no longer names an
// executable is never handed out: the next lookup walks PATH again.
func TestFindBinaryFollowsABinaryThatMovesOrGoes(t *testing.T) {
	stopClock(t)
	first, second := t.TempDir(), t.TempDir()
	t.Setenv("PATH", first+string(os.PathListSeparator)+second)
	find := func() (string, error) { return findBinary("", "mergen-test-vmm") }

	inFirst := installVMM(t, first)
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
	inSecond := installVMM(t, second)
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
	inFirst = installVMM(t, first)
	if p, err := find(); err != nil || p != inFirst {
		t.Fatalf("reinstalled: found %q, %v; want %s", p, err, inFirst)
	}
	t.Setenv("PATH", second)
	if p, err := find(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("with PATH=%s: found %q, %v; want ErrUnavailable", second, p, err)
	}
}

// A binary installed ahead of the one found, in an earlier entry of PATH,
// is used once the lookup that found the other is keepFound old.
func TestFindBinarySeesOneInstalledAheadWithinASecond(t *testing.T) {
	now := stopClock(t)
	first, second := t.TempDir(), t.TempDir()
	t.Setenv("PATH", first+string(os.PathListSeparator)+second)
	later := installVMM(t, second)
	if got, err := findBinary("", "mergen-test-vmm"); err != nil || got != later {
		t.Fatalf("found %q, %v; want %s", got, err, later)
	}
	ahead := installVMM(t, first)
	*now = now.Add(keepFound / 2)
	if got, err := findBinary("", "mergen-test-vmm"); err != nil || got != later {
		t.Fatalf("within the second: found %q, %v; want the kept %s", got, err, later)
	}
	*now = now.Add(keepFound / 2)
	if got, err := findBinary("", "mergen-test-vmm"); err != nil || got != ahead {
		t.Fatalf("a second after the lookup: found %q, %v; want %s, ahead on PATH", got, err, ahead)
	}
}

// stopClock makes onPath's clock one the test moves, and forgets what
// onPath kept, for the test and after it.
func stopClock(t *testing.T) *time.Time {
	now := time.Now()
	onPath.mu.Lock()
	onPath.found, onPath.now = map[pathKey]kept{}, func() time.Time { return now }
	onPath.mu.Unlock()
	t.Cleanup(func() {
		onPath.mu.Lock()
		onPath.found, onPath.now = map[pathKey]kept{}, time.Now
		onPath.mu.Unlock()
	})
	return &now
}

// installVMM writes an executable mergen-test-vmm into dir.
func installVMM(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "mergen-test-vmm")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
