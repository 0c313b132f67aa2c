package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// fsTopDirFlag is FS_TOPDIR_FL (chattr +T): the directory is the top of
// separate hierarchies, so ext4 places each new directory in it in a block
// group of its own choosing (the Orlov allocator's rule for the root),
// rather than beside the parent.
const fsTopDirFlag = 0x00020000

// spreadVMDirs marks the config root as a top directory where the file
// system has such a mark (ext4), when the caller may (its owner; other
// callers leave it as it is).
//
// Why: on ext4 without a journal, allocating an inode skips, one by one,
// every inode of the group deleted in the last minutes (five while its
// inode table block is unwritten). Every VM directory and file was
// allocated in the config root's group, where the deletes of every VM (and
// of anything else beside the root) pile up: with a few thousand recent
// deletes a create spent most of its CPU in that scan (perf: ext4's
// recently_deleted under openat and mkdir). Spread over the groups, each
// VM's inodes meet few of them. File systems with a journal skip that scan
// and are only spread.
func spreadVMDirs(root string) {
	f, err := os.Open(root)
	if err != nil {
		return
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil || flags&fsTopDirFlag != 0 {
		return // no such flags here, or already set
	}
	// Best effort: the mark only changes where new inodes go.
	_ = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsTopDirFlag))
}
