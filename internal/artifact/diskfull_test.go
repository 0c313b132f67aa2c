package artifact

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/testenv"
)

// A pull into a file system too small for the new assets is refused before
// writing, and the old assets stay.
func TestPullIntoFullDiskLeavesOldAssets(t *testing.T) {
	testenv.RequireRoot(t)
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	small := t.TempDir()
	os.WriteFile(filepath.Join(small, "vmlinux"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(small, "golden-rootfs.ext4"), []byte("g"), 0o644)
	os.WriteFile(filepath.Join(small, "agent-rootfs.ext4"), []byte("a"), 0o644)
	if _, err := c.PushBase(ctxT(t), small, Base{"linux-amd64", "buildroot", "v1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PushBase(ctxT(t), baseDir(t, "big"), Base{"linux-amd64", "buildroot", "v2"}); err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	dst := filepath.Join(mnt, "current")
	if _, err := c.PullBase(ctxT(t), dst, Base{"linux-amd64", "buildroot", "v1"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.PullBase(ctxT(t), dst, Base{"linux-amd64", "buildroot", "v2"})
	if err == nil || !strings.Contains(err.Error(), "not enough space in "+dst) {
		t.Fatalf("pull of 12 MiB into 4 MiB: %v", err)
	}
	sameFiles(t, small, dst, "vmlinux", "golden-rootfs.ext4", "agent-rootfs.ext4")
	assertNoStaging(t, dst)
}
