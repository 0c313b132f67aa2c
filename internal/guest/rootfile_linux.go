package guest

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// writeInRoot atomically replaces root/dir/name with data, owned by uid:gid
// (-1: init's own) with mode perm, creating dir (0755, init's) when missing. root is the
// payload's root, which the payload may have changed while running (an
// identity arrives at any time): dir is resolved with openat2's
// RESOLVE_IN_ROOT, so a symbolic link in it resolves as it would for the
// payload, inside root, never to init's own files. The content goes to a
// temporary file that is renamed over name, so a payload reading the file
// sees the old or the new one whole.
func writeInRoot(root, dir, name string, data []byte, perm uint32, uid, gid int) error {
	target := path.Join("/", dir, name)
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("write %s: open the payload's root: %w", target, err)
	}
	defer unix.Close(rfd)
	dfd, err := openDirInRoot(root, rfd, path.Clean("./"+dir))
	if err != nil {
		return fmt.Errorf("write %s: directory: %w", target, err)
	}
	defer unix.Close(dfd)

	tmp := "." + name + ".mergen-tmp"
	// A leftover of an earlier write cut short (the upper layer may be on
	// the data disk) must not make O_EXCL fail.
	if err := unix.Unlinkat(dfd, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("write %s: remove %s: %w", target, tmp, err)
	}
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	if err != nil {
		return fmt.Errorf("write %s: create: %w", target, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	err = func() error {
		defer f.Close()
		if uid != -1 || gid != -1 {
			if err := f.Chown(uid, gid); err != nil {
				return err
			}
		}
		if err := f.Chmod(os.FileMode(perm)); err != nil { // not the umask's
			return err
		}
		if _, err := f.Write(data); err != nil {
			return err
		}
		return f.Sync()
	}()
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, name)
	}
	if err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("write %s: %w", target, err)
	}
	return nil
}

// openDirInRoot opens dir (relative, clean) below the root open as rfd,
// making the directories that are missing.
func openDirInRoot(root string, rfd int, dir string) (int, error) {
	fd, err := openat2InRoot(rfd, dir)
	if errors.Is(err, unix.ENOSYS) {
		// Kernels before 5.6 have no openat2: fall back to a plain lookup,
		// which follows links as seen from init.
		p := filepath.Join(root, dir)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return -1, err
		}
		return unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	if !errors.Is(err, unix.ENOENT) || dir == "." {
		return fd, err
	}
	parent, err := openDirInRoot(root, rfd, path.Dir(dir))
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	if err := unix.Mkdirat(parent, path.Base(dir), 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("mkdir %s: %w", dir, err)
	}
	return openat2InRoot(rfd, dir)
}

func openat2InRoot(rfd int, dir string) (int, error) {
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for range 16 {
		fd, err := unix.Openat2(rfd, dir, &how)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue // a rename raced the lookup
		}
		return fd, err
	}
	return -1, fmt.Errorf("%s: lookup kept racing with renames: %w", dir, unix.EAGAIN)
}
