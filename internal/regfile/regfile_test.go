package regfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A file opened here behaves as one from os.OpenFile for what the store
// does with it: created exclusively with its mode under the umask, written,
// synced, read back; closed on exec; blocking; errors name the path.
func TestOpenBehavesAsOSOpenFile(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	p := filepath.Join(t.TempDir(), "f")
	f, err := Open(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("descriptor flags %#x, %v: want close-on-exec", flags, err)
	}
	if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Errorf("status flags %#x, %v: want blocking", fl, err)
	}
	if _, err := f.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, %v: want 0644 (0666 under umask 022)", fi.Mode(), err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "hello" {
		t.Errorf("read back %q, %v", b, err)
	}

	_, err = Open(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	var pe *os.PathError
	if !errors.Is(err, fs.ErrExist) || !errors.As(err, &pe) || pe.Path != p {
		t.Errorf("exclusive create of an existing file: %v; want a PathError naming it, satisfying fs.ErrExist", err)
	}
	if _, err := Open(filepath.Join(p, "x"), os.O_RDONLY, 0); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("open below a file: %v, want ENOTDIR", err)
	}

	d, err := Open(filepath.Dir(p), os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Errorf("sync of a directory: %v", err)
	}
}

// BenchmarkOpenClose: an open and close of a regular file here, against
// os.OpenFile's in the same run.
func BenchmarkOpenClose(b *testing.B) {
	p := filepath.Join(b.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		open func(string, int, os.FileMode) (*os.File, error)
	}{{"regfile", Open}, {"baseline-os.OpenFile", os.OpenFile}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				f, err := c.open(p, os.O_RDONLY, 0)
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}
