package artifact

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// target is the file a download writes into. Where the file system takes
// O_DIRECT, the data goes from the part buffers to the device: a dense
// pull through the page cache spent as much processor time on the kernel's
// copy, page bookkeeping and writeback as on its SHA-256, on two cores
// shared with the server, and those writes had to reach the disk before
// install anyway. The fsync before install still runs: it flushes the
// device's cache and commits the file's block allocation. Pieces O_DIRECT
// cannot take (a short tail, an unaligned offset) go through the page
// cache by a second descriptor; every page is written one way only, as
// direct writes cover whole pages.
type target struct {
	f      *os.File // buffered: sizing, unaligned pieces, the fsync
	direct *os.File // O_DIRECT on the same file, or nil
	align  int      // of offset, length and memory for direct writes
}

// pageSize is the smallest direct-write alignment used (see target).
var pageSize = os.Getpagesize()

// createTarget creates (truncates) path for writing, with a direct
// descriptor when the file system supports one.
func createTarget(path string, buffered bool) (*target, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	t := &target{f: f, align: pageSize}
	if buffered {
		return t, nil
	}
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_DIOALIGN, &st); err == nil && st.Mask&unix.STATX_DIOALIGN != 0 {
		if st.Dio_offset_align == 0 {
			return t, nil // the file system says no
		}
		t.align = max(t.align, int(st.Dio_offset_align), int(st.Dio_mem_align))
	}
	// A kernel without the statx field just gets asked; a file system
	// without O_DIRECT refuses the open.
	if d, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0); err == nil {
		t.direct = d
	}
	return t, nil
}

// chunk is how much of a part is read before it is written. Direct: large,
// as each write waits for the device. Buffered: small enough to be copied
// into the page cache while still in the processor's cache (a whole part
// written at once is copied from memory: a profile of 512 MiB pulls put
// that copy at twice the cost), and large enough to keep the writes few.
func (t *target) chunk() int {
	if t.direct != nil {
		return 4 << 20
	}
	return 256 << 10
}

// writeAt writes p at off: its aligned front directly when it can, the
// rest through the page cache.
func (t *target) writeAt(p []byte, off int64) error {
	a := t.align
	if t.direct != nil && off%int64(a) == 0 && aligned(p, a) {
		if n := len(p) &^ (a - 1); n > 0 {
			if _, err := t.direct.WriteAt(p[:n], off); err != nil {
				return err
			}
			p, off = p[n:], off+int64(n)
		}
	}
	if len(p) == 0 {
		return nil
	}
	_, err := t.f.WriteAt(p, off)
	return err
}

// startWriteback asks the kernel to start writing the range to disk now,
// without waiting for it; direct writes are there already. It only moves
// work earlier: what makes the file durable is still the fsync before
// install, which also reports any write that failed, so an error here (a
// file system without the call) is of no consequence.
func (t *target) startWriteback(off, n int64) {
	if t.direct != nil {
		return
	}
	rc, err := t.f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}

// sync makes the file durable and closes it.
func (t *target) sync() error {
	err := t.f.Sync()
	if cerr := t.close(); err == nil {
		err = cerr
	}
	return err
}

func (t *target) close() error {
	if t.direct != nil {
		t.direct.Close()
	}
	return t.f.Close()
}

// alignedBuf returns n bytes starting at a multiple of pageSize, as
// direct writes want of their memory.
func alignedBuf(n int) []byte {
	b := make([]byte, n+pageSize)
	skip := -int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) & (pageSize - 1)
	return b[skip : skip+n : skip+n]
}

func aligned(p []byte, a int) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))&uintptr(a-1) == 0
}
