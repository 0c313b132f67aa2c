// Package filecopy makes private copies of disk images cheaply: a reflink
// when the file system shares extents (btrfs, XFS), else a sparse copy that
// skips the holes, so a restored VM's copy of a mostly empty data disk costs
// what the disk holds, not its size.
package filecopy

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Clone copies src to dst (created, never overwritten, with mode perm) and
// syncs it. dst is removed again when the copy fails.
func Clone(src, dst string, perm os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, perm)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("copy %s to %s: %w", src, dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	if err := sparseCopy(in, out); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}

// sparseCopy copies the data regions of in (SEEK_DATA/SEEK_HOLE) with
// copy_file_range, and sets out's size so trailing holes stay holes.
func sparseCopy(in, out *os.File) error {
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	ifd, ofd := int(in.Fd()), int(out.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		if err := copyRange(ifd, ofd, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return out.Truncate(size)
}

// copyRange copies n bytes at off from ifd to the same offset of ofd.
func copyRange(ifd, ofd int, off, n int64) error {
	roff, woff := off, off
	for n > 0 {
		c, err := unix.CopyFileRange(ifd, &roff, ofd, &woff, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
				return copyPlain(ifd, ofd, roff, n)
			}
			return fmt.Errorf("copy_file_range: %w", err)
		}
		if c == 0 {
			return fmt.Errorf("copy_file_range: %w", io.ErrUnexpectedEOF)
		}
		n -= int64(c)
	}
	return nil
}

// copyPlain is copyRange through a buffer, for file systems that refuse
// copy_file_range.
func copyPlain(ifd, ofd int, off, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		c, err := unix.Pread(ifd, buf[:min(n, int64(len(buf)))], off)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if c == 0 {
			return fmt.Errorf("read: %w", io.ErrUnexpectedEOF)
		}
		if _, err := unix.Pwrite(ofd, buf[:c], off); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

// Link gives dst the content of src: a hard link when both are on one file
// system (a read-only snapshot file shared by the VMs restored from it),
// else a Clone.
func Link(src, dst string, perm os.FileMode) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	} else if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EMLINK) {
		return fmt.Errorf("link %s: %w", src, err)
	}
	return Clone(src, dst, perm)
}
