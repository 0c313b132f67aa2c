package store_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/store"
)

// The config root is marked as a top directory (chattr +T) where the file
// system keeps such flags, so that VM directories spread over its groups.
func TestOpenMarksTheConfigRootATopDirectory(t *testing.T) {
	root := filepath.Join(t.TempDir(), "vm.d")
	if _, err := store.Open(layout.Layout{ConfigRoot: root, RunRoot: t.TempDir(), DataRoot: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		t.Skipf("SKIP: the file system of %s keeps no inode flags (%v): nothing to mark", root, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if flags&0x00020000 == 0 {
		t.Fatalf("config root flags %#x: FS_TOPDIR_FL is not set", flags)
	}
}
