// Package exepages drops the running executable's pages from the
// process's page tables, for a long-running program whose start touched
// much more of its executable than its work uses.
//
// At start Go runs the initialisation of every package linked into the
// binary, and the kernel maps each page touched together with its
// neighbours that are in the page cache (fault-around, 64 KiB by default).
// In `mergen server` that is 15-16 MiB, of which the code it runs
// afterwards is a part: the rest is start-up's own, and packages only the
// CLI uses (the S3 client, image conversion), resident in the daemon for
// its whole life all the same.
//
// Guarantees:
//   - Only mappings of the executable that cannot be written (text,
//     read-only data) and hold no private copy of a page (smaps
//     Anonymous: 0 kB, as in a static Go binary; a dynamically
//     relocated read-only segment has copies and is left alone) are
//     dropped. Every page of such a mapping is the file's own: the next
//     access maps it again from the page cache, unchanged.
//   - Nothing is evicted from the page cache: a dropped page in use again
//     costs a minor fault, not a read from disk.
package exepages

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Span is one mapping of the executable that may be dropped.
type Span struct {
	Start, End uintptr
	RssKiB     int // resident before it was dropped
}

// Release drops the resident pages of the executable's unwritable
// mappings (see the package comment) and returns how many KiB were
// resident in them.
func Release() (int, error) {
	fi, err := os.Stat("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("release executable pages: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("release executable pages: no device and inode for /proc/self/exe")
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("release executable pages: %w", err)
	}
	spans, err := Releasable(smaps, uint64(st.Dev), st.Ino)
	if err != nil {
		return 0, fmt.Errorf("release executable pages: %w", err)
	}
	kib := 0
	for _, s := range spans {
		// By address, not through a []byte: the mapping is not Go memory.
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, s.Start, s.End-s.Start, unix.MADV_DONTNEED); e != 0 {
			return kib, fmt.Errorf("release executable pages %#x-%#x: %w", s.Start, s.End, e)
		}
		kib += s.RssKiB
	}
	return kib, nil
}

// Releasable reads smaps (the format of /proc/PID/smaps) and returns the
// mappings of the file with device dev and inode ino that are private,
// unwritable and hold no anonymous (privately copied) page.
func Releasable(smaps []byte, dev, ino uint64) ([]Span, error) {
	var (
		out  []Span
		cur  *Span
		anon = -1
	)
	flush := func() {
		if cur != nil && anon == 0 {
			out = append(out, *cur)
		}
		cur, anon = nil, -1
	}
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") { // a mapping's header: range perms offset dev inode [path]
			flush()
			if len(f) < 5 {
				return nil, fmt.Errorf("smaps: malformed mapping %q", line)
			}
			lo, hi, ok := strings.Cut(f[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			maj, min, ok2 := strings.Cut(f[3], ":")
			dmaj, err3 := strconv.ParseUint(maj, 16, 32)
			dmin, err4 := strconv.ParseUint(min, 16, 32)
			inode, err5 := strconv.ParseUint(f[4], 10, 64)
			if !ok || !ok2 || err1 != nil || err2 != nil || err3 != nil || err4 != nil || err5 != nil || end < start {
				return nil, fmt.Errorf("smaps: malformed mapping %q", line)
			}
			perms := f[1]
			if inode == ino && unix.Mkdev(uint32(dmaj), uint32(dmin)) == dev &&
				len(perms) == 4 && perms[1] != 'w' && perms[3] == 'p' {
				cur = &Span{Start: uintptr(start), End: uintptr(end)}
			}
			continue
		}
		if cur == nil || len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Rss:", "Anonymous:":
			n, err := strconv.Atoi(f[1])
			if err != nil {
				return nil, fmt.Errorf("smaps: malformed %q", line)
			}
			if f[0] == "Rss:" {
				cur.RssKiB = n
			} else {
				anon = n
			}
		}
	}
	flush()
	return out, sc.Err()
}
