// Package ext4 makes ext4 disk images from a directory with mkfs.ext4 -d,
// without loop mounts, and checks them with e2fsck.
//
// As root, mkfs.ext4 copies owners, modes, links, device nodes and xattrs
// from the directory as they are; the image is then identical to what the
// directory holds.
package ext4

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
)

// Options describe one image.
type Options struct {
	Label    string // filesystem label (at most 16 bytes)
	SizeMiB  int64  // 0: computed from the content with Headroom
	Headroom float64
	ReadOnly bool // set the read-only feature: the kernel mounts it read-only
	// DirDone, if set, is called by FromDir once mkfs.ext4 has read the
	// directory, and runs while the image is checked; FromDir returns
	// after it. Removing a large tree there costs no time of its own.
	DirDone func()
}

// SizeFor returns a size in MiB for the content of dir: the blocks its files
// take (hard links counted once per name, a harmless overestimate), one inode
// each, the journal, and the headroom fraction on top.
func SizeFor(dir string, headroom float64) (int64, error) {
	mib, _, err := measure(dir, headroom)
	return mib, err
}

// measure returns the size in MiB and the number of inodes to give a file
// system for dir. The inode count matters: mkfs.ext4's default of one inode
// per 16 KiB runs out on images made of many small files (node_modules).
func measure(dir string, headroom float64) (int64, int64, error) {
	var blocks, inodes int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() || fi.Mode()&fs.ModeSymlink != 0 || fi.IsDir() {
			blocks += (fi.Size() + 4095) / 4096
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	bytes := blocks*4096 + inodes*256
	if headroom < 0 {
		headroom = 0
	}
	mib := int64(float64(bytes)*(1+headroom))/(1<<20) + 1
	// Journal, group descriptors and reserved blocks need room of their own
	// that does not scale with tiny inputs.
	mib += 16 + mib/20
	return mib, int64(float64(inodes)*(1+headroom)) + 1024, nil
}

// FromDir writes an ext4 image of dir to out (replaced atomically) and checks
// it with e2fsck -fn.
func FromDir(ctx context.Context, dir, out string, o Options) error {
	if len(o.Label) > 16 {
		return fmt.Errorf("ext4 %s: label %q longer than 16 bytes", out, o.Label)
	}
	size, inodes, err := measure(dir, o.Headroom)
	if err != nil {
		return fmt.Errorf("ext4 %s: size of %s: %w", out, dir, err)
	}
	if o.SizeMiB > 0 {
		size = o.SizeMiB
	}
	// Never more inodes than 4 KiB blocks: mkfs refuses that.
	inodes = min(inodes, size<<20/4096)
	tmp := out + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("ext4 %s: %w", out, err)
	}
	err = f.Truncate(size << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("ext4 %s: %w", out, err)
	}
	args := []string{"-q", "-F", "-t", "ext4", "-L", o.Label, "-d", dir,
		// 4 KiB blocks, the size measure counts in: below 512 MiB mke2fs
		// would pick 1 KiB ("small"), which writes the content in four
		// times as many system calls and gives the guest blocks smaller
		// than its pages.
		"-b", "4096",
		// 256-byte inodes keep nanosecond times and inline xattrs.
		"-I", "256", "-N", fmt.Sprint(inodes), "-E", "root_owner=0:0"}
	args = append(args, tmp)
	if err := run(ctx, "mkfs.ext4", args...); err != nil {
		os.Remove(tmp)
		if strings.Contains(err.Error(), "Could not allocate block") || strings.Contains(err.Error(), "No space left") {
			return fmt.Errorf("ext4 %s: %d MiB is too small for %s (raise --size-mib): %w", out, size, dir, err)
		}
		return fmt.Errorf("ext4 %s: %w", out, err)
	}
	if o.DirDone != nil {
		done := make(chan struct{})
		go func() {
			defer close(done)
			o.DirDone()
		}()
		defer func() { <-done }()
	}
	// mkfs.ext4 refuses to populate a read-only filesystem, so the
	// feature is set once the content is in.
	if o.ReadOnly {
		if err := run(ctx, "tune2fs", "-O", "read-only", tmp); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("ext4 %s: %w", out, err)
		}
	}
	if err := Check(ctx, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("ext4 %s: %w", out, err)
	}
	if err := syncFile(tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("ext4 %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("ext4 %s: %w", out, err)
	}
	return nil
}

// FromTar writes an ext4 image of the tar file to out (replaced atomically)
// without privileges: hcsshim's tar2ext4 writes the file system with the
// owners, modes, devices and xattrs of the archive, leaving no free blocks;
// the image is then grown to the size computed from dir (the same tree,
// unpacked) with resize2fs, labelled with tune2fs and checked with e2fsck.
func FromTar(ctx context.Context, tarPath, dir, out string, o Options) error {
	if len(o.Label) > 16 {
		return fmt.Errorf("ext4 %s: label %q longer than 16 bytes", out, o.Label)
	}
	size := o.SizeMiB
	if size <= 0 {
		var err error
		if size, err = SizeFor(dir, o.Headroom); err != nil {
			return fmt.Errorf("ext4 %s: size of %s: %w", out, dir, err)
		}
	}
	tmp := out + ".tmp"
	fail := func(err error) error {
		os.Remove(tmp)
		return fmt.Errorf("ext4 %s: %w", out, err)
	}
	in, err := os.Open(tarPath)
	if err != nil {
		return fail(err)
	}
	defer in.Close()
	f, err := os.Create(tmp)
	if err != nil {
		return fail(err)
	}
	err = tar2ext4.ConvertTarToExt4(in, f, tar2ext4.MaximumDiskSize(size<<20))
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil && fi.Size() > size<<20 {
			err = fmt.Errorf("content needs %d MiB, more than %d MiB (raise --size-mib)", fi.Size()>>20, size)
		}
	}
	if err == nil {
		err = f.Truncate(size << 20)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	if err := run(ctx, "resize2fs", "-f", tmp, fmt.Sprintf("%dM", size)); err != nil {
		return fail(err)
	}
	if err := run(ctx, "tune2fs", "-L", o.Label, tmp); err != nil {
		return fail(err)
	}
	if o.ReadOnly {
		if err := run(ctx, "tune2fs", "-O", "read-only", tmp); err != nil {
			return fail(err)
		}
	}
	if err := Check(ctx, tmp); err != nil {
		return fail(err)
	}
	if err := syncFile(tmp); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fail(err)
	}
	return nil
}

// Check runs e2fsck -fn: a forced, read-only check that changes nothing.
func Check(ctx context.Context, img string) error {
	if err := run(ctx, "e2fsck", "-fn", img); err != nil {
		return fmt.Errorf("e2fsck: %w", err)
	}
	return nil
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
