package artifact

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/progress"
)

// sparseBaseDir writes base assets whose golden disk is 16 MiB with data
// at its start, across a part boundary (5 MiB) and at its end, holes
// elsewhere; the agent disk is empty.
func sparseBaseDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "golden-rootfs.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 10000) // not a whole number of blocks
	for _, off := range []int64{0, 5<<20 - 3000, 16<<20 - int64(len(chunk))} {
		rand.Read(chunk)
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "vmlinux"), []byte("kernel"), 0o644)
	os.WriteFile(filepath.Join(dir, "agent-rootfs.ext4"), nil, 0o644)
	return dir
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// A sparse disk comes down byte for byte and sparse; an empty file comes
// down empty; progress ends at each file's size. So it does through the
// page cache, as on a file system without direct I/O.
func TestPullKeepsHolesAndBytes(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	src := sparseBaseDir(t)
	if _, err := c.PushBase(ctxT(t), src, Base{"linux-amd64", "buildroot", "v1"}); err != nil {
		t.Fatal(err)
	}
	for _, buffered := range []bool{false, true} {
		t.Run(fmt.Sprintf("buffered=%v", buffered), func(t *testing.T) {
			tr := progress.New()
			c.opt.Progress = tr
			c.bufferedWrites = buffered
			dst := t.TempDir()
			if _, err := c.PullBase(ctxT(t), dst, Base{"linux-amd64", "buildroot", "v1"}); err != nil {
				t.Fatal(err)
			}
			sameFiles(t, src, dst, "vmlinux", "golden-rootfs.ext4", "agent-rootfs.ext4")
			disk := filepath.Join(dst, "golden-rootfs.ext4")
			if got := allocated(t, disk); got > 1<<20 {
				t.Fatalf("pulled 16 MiB disk with 30 kB of data takes %d bytes: holes were filled", got)
			}
			for _, s := range tr.Snapshot() {
				if s.Done != s.Total {
					t.Fatalf("progress of %s ended at %d of %d", s.Name, s.Done, s.Total)
				}
			}
		})
	}
}

// Changing an object on the server is caught by the manifest's SHA-256,
// computed while the parts arrive: a change in any part, the last (short)
// one included, is refused, and so is an object shorter or longer than its
// manifest says; the good local files stay and nothing is installed.
func TestPullRefusesAChangedPartOrLength(t *testing.T) {
	srv, c, old, dst := installedV1(t)
	plat, fl := "linux-amd64", "buildroot"
	size := int64(12<<20 + 3) // baseDir's golden disk: seed + 12 MiB
	for _, tc := range []struct {
		name   string
		change func(f *os.File) error
		want   string
	}{
		{"first part", func(f *os.File) error { _, err := f.WriteAt([]byte("X"), 1); return err }, "sha256 mismatch"},
		{"middle part", func(f *os.File) error { _, err := f.WriteAt([]byte("XXXX"), 7<<20); return err }, "sha256 mismatch"},
		{"last part", func(f *os.File) error { _, err := f.WriteAt([]byte("X"), size-1); return err }, "sha256 mismatch"},
		{"shorter", func(f *os.File) error { return f.Truncate(size - 1) }, "size 12582914, manifest says 12582915"},
		{"longer", func(f *os.File) error { return f.Truncate(size + 1) }, "size 12582916, manifest says 12582915"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := "v-" + strings.ReplaceAll(tc.name, " ", "-")
			if _, err := c.PushBase(ctxT(t), baseDir(t, "new"), Base{plat, fl, v}); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(srv.object("team/mergen/linux-amd64/buildroot/"+v+"/buildroot-disk.ext4"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.change(f); err != nil {
				t.Fatal(err)
			}
			f.Close()
			_, err = c.PullBase(ctxT(t), dst, Base{plat, fl, v})
			if err == nil || !strings.Contains(err.Error(), "download buildroot-disk.ext4: "+tc.want) {
				t.Fatalf("pull of a changed object: %v", err)
			}
			sameFiles(t, old, dst, baseNames...)
			assertNoStaging(t, dst)
		})
	}
}

// writeData leaves all-zero blocks as holes and writes everything else,
// whatever the alignment of the data, of the buffer's end and of its
// memory, directly or through the page cache.
func TestWriteDataSkipsOnlyZeroBlocks(t *testing.T) {
	const n = 10*4096 + 123
	for _, tc := range []struct {
		name     string
		buffered bool
		p        []byte
	}{
		{"direct", false, alignedBuf(n)},
		{"direct, memory not aligned", false, alignedBuf(n + 1)[1:]},
		{"buffered", true, alignedBuf(n)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			rand.Read(p[4096+7 : 4096+9])   // inside block 1
			rand.Read(p[3*4096-1 : 3*4096]) // last byte of block 2
			rand.Read(p[5*4096 : 7*4096])   // blocks 5 and 6
			rand.Read(p[len(p)-1:])         // the short tail
			path := filepath.Join(t.TempDir(), "f")
			f, err := createTarget(path, tc.buffered)
			if err != nil {
				t.Fatal(err)
			}
			const off = 3 * 4096
			if err := f.f.Truncate(off + int64(len(p))); err != nil {
				t.Fatal(err)
			}
			if err := writeData(f, p, off); err != nil {
				t.Fatal(err)
			}
			if err := f.sync(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[off:], p) || !bytes.Equal(got[:off], make([]byte, off)) {
				t.Fatal("content differs")
			}
			if a := allocated(t, path); a > 6*4096 {
				t.Fatalf("%d bytes allocated for 5 blocks of data", a)
			}
		})
	}
}

// On a file system with direct I/O, a pulled part's whole pages go to the
// device without passing through the page cache; the short tail of the
// file, which O_DIRECT cannot take, does.
func TestDirectWritesBypassThePageCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := createTarget(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_DIOALIGN, &st); err != nil || st.Mask&unix.STATX_DIOALIGN == 0 || st.Dio_offset_align == 0 {
		t.Skipf("SKIP: the file system of %s reports no direct I/O (statx dioalign); pulls write through its page cache here", path)
	}
	if f.direct == nil {
		t.Fatal("the file system reports direct I/O but the target has no direct descriptor")
	}
	p := alignedBuf(8*4096 + 100)
	rand.Read(p)
	if err := f.f.Truncate(int64(len(p))); err != nil {
		t.Fatal(err)
	}
	if err := writeData(f, p, 0); err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m, err := unix.Mmap(int(r.Fd()), 0, len(p), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, 9)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	for i, v := range vec[:8] {
		if v&1 != 0 {
			t.Fatalf("page %d of the directly written pages is in the page cache", i)
		}
	}
	if vec[8]&1 == 0 {
		t.Fatal("the short tail did not go through the page cache")
	}
}
