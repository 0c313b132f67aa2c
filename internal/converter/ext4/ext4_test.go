package ext4

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/testenv"
)

// Images of many small files need more inodes than mkfs.ext4 gives a file
// system of that size by default.
func TestFromDirFitsManySmallFiles(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "tree")
	for d := 0; d < 10; d++ {
		sub := filepath.Join(dir, fmt.Sprintf("pkg%02d", d))
		os.MkdirAll(sub, 0o755)
		for f := 0; f < 1000; f++ {
			os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%04d.js", f)), []byte("x"), 0o644)
		}
	}
	out := filepath.Join(t.TempDir(), "img.ext4")
	if err := FromDir(context.Background(), dir, out, Options{Label: "many", Headroom: 0.1}); err != nil {
		t.Fatal(err)
	}
	got, err := exec.Command(testenv.Tool(t, "debugfs"), "-R", "ls /pkg09", out).Output()
	if err != nil || !strings.Contains(string(got), "f0999.js") {
		t.Fatalf("last file missing: %v\n%.300s", err, got)
	}
}

func TestFromDirRefusesALongLabelAndLeavesNothing(t *testing.T) {
	out := filepath.Join(t.TempDir(), "img.ext4")
	err := FromDir(context.Background(), t.TempDir(), out, Options{Label: strings.Repeat("x", 17)})
	if err == nil || !strings.Contains(err.Error(), "label") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("image written")
	}
}

// The image has 4 KiB blocks whatever its size (mke2fs alone picks 1 KiB
// below 512 MiB), and DirDone runs once the directory was read: removing the
// tree there leaves a complete image, and FromDir returns after it.
func TestFromDirUses4KiBBlocksAndReleasesTheDirectory(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc", "motd"), []byte("hello from the image\n"), 0o644)
	out := filepath.Join(t.TempDir(), "img.ext4")
	removed := false
	err := FromDir(context.Background(), dir, out, Options{Label: "small", Headroom: 0.1, DirDone: func() {
		os.RemoveAll(dir)
		removed = true
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !removed || !os.IsNotExist(err) {
		t.Errorf("FromDir returned before DirDone finished (removed %v, stat %v)", removed, err)
	}
	stats, err := exec.Command(testenv.Tool(t, "debugfs"), "-R", "stats", out).Output()
	if err != nil || !strings.Contains(string(stats), "Block size:               4096") {
		t.Errorf("block size: %v\n%.600s", err, stats)
	}
	got, err := exec.Command(testenv.Tool(t, "debugfs"), "-R", "cat /etc/motd", out).Output()
	if err != nil || string(got) != "hello from the image\n" {
		t.Errorf("/etc/motd after the tree was removed: %v %q", err, got)
	}
}
