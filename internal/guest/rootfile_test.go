package guest

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// writeInRoot resolves inside the payload's root: links the payload made
// point into its own tree, never to init's files.
func TestWriteInRootStaysInTheRoot(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("untouched"), 0o644)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(filepath.Join(root, "var/run"), 0o755)
	// /run -> /var/run (absolute: resolved in the root), /etc/hostname -> a
	// file outside the root.
	os.Symlink("/var/run", filepath.Join(root, "run"))
	os.Symlink(victim, filepath.Join(root, "etc/hostname"))

	uid, gid := os.Getuid(), os.Getgid()
	if err := writeInRoot(root, "/run/mergen", "env", []byte("A='1'\n"), 0o600, uid, gid); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(filepath.Join(root, "var/run/mergen/env"))
	if err != nil {
		t.Fatalf("the file is not under the root's /var/run: %v", err)
	}
	if st.Mode() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Errorf("mode %v uid %d, want 0600 %d", st.Mode(), st.Sys().(*syscall.Stat_t).Uid, uid)
	}
	if err := writeInRoot(root, "/run/mergen", "env", []byte("A='2'\n"), 0o600, uid, gid); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "var/run/mergen/env")); string(b) != "A='2'\n" {
		t.Errorf("rewritten env file holds %q", b)
	}

	if err := writeNetFiles(root, "vm1", nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "untouched" {
		t.Errorf("a file outside the root was written: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(b) != "vm1\n" {
		t.Errorf("/etc/hostname = %q", b)
	}
	ents, _ := os.ReadDir(filepath.Join(root, "etc"))
	for _, e := range ents {
		if strings.Contains(e.Name(), "tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}
