package beneath

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// tree is a root holding a disk, a directory, links of every kind, and a
// canary outside the root that no open may ever reach.
type tree struct {
	root, disk, canary string
}

func newTree(t *testing.T) tree {
	t.Helper()
	base := t.TempDir()
	tr := tree{root: filepath.Join(base, "root"), disk: filepath.Join(base, "root", "images", "app", "disk.img"), canary: filepath.Join(base, "canary")}
	for _, d := range []string{filepath.Dir(tr.disk), filepath.Join(base, "outside-dir")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, tr.disk, "disk")
	write(t, tr.canary, "canary")
	write(t, filepath.Join(base, "outside-dir", "disk.img"), "canary")
	link(t, tr.canary, filepath.Join(tr.root, "images", "out.img"))                         // inside → outside, absolute
	link(t, "../../canary", filepath.Join(tr.root, "images", "out-rel.img"))                // inside → outside, relative
	link(t, "app/disk.img", filepath.Join(tr.root, "images", "in.img"))                     // inside → inside
	link(t, "app", filepath.Join(tr.root, "images", "app-link"))                            // a directory link inside
	link(t, filepath.Join(base, "outside-dir"), filepath.Join(tr.root, "images", "escape")) // a directory link out
	if err := syscall.Mkfifo(filepath.Join(tr.root, "images", "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	return tr
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func link(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// resolvers: the kernel's openat2 and the component walk used without it.
var resolvers = map[string]resolver{"openat2": openat2, "walk": walk}

func TestOpenRefusesLinksEscapesAndNonRegularFiles(t *testing.T) {
	tr := newTree(t)
	img := filepath.Join(tr.root, "images")
	cases := []struct {
		name, path string
		want       error
	}{
		{"final link pointing outside", filepath.Join(img, "out.img"), ErrLink},
		{"final relative link pointing outside", filepath.Join(img, "out-rel.img"), ErrLink},
		{"final link pointing inside", filepath.Join(img, "in.img"), ErrLink},
		{"link in a parent component, inside", filepath.Join(img, "app-link", "disk.img"), ErrLink},
		{"link in a parent component, outside", filepath.Join(img, "escape", "disk.img"), ErrLink},
		{"dot-dot out of the root", "images/../../canary", ErrEscape},
		{"dot-dot out of the root, absolute", img + "/../../canary", ErrEscape},
		{"absolute path elsewhere", tr.canary, ErrEscape},
		{"directory", filepath.Join(img, "app"), ErrNotRegular},
		{"FIFO", filepath.Join(img, "fifo"), ErrNotRegular},
		{"missing", filepath.Join(img, "missing.img"), fs.ErrNotExist},
	}
	for rname, res := range resolvers {
		for _, c := range cases {
			t.Run(rname+"/"+c.name, func(t *testing.T) {
				done := make(chan struct{})
				var f *os.File
				var err error
				go func() { f, err = open(tr.root, c.path, os.O_RDONLY, res); close(done) }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("open blocked (a FIFO opened?)")
				}
				if err == nil {
					f.Close()
					t.Fatalf("open %s succeeded, want %v", c.path, c.want)
				}
				if !errors.Is(err, c.want) {
					t.Fatalf("open %s: %v, want %v", c.path, err, c.want)
				}
			})
		}
	}
}

// A regular file below the root opens, read-only or writable, by absolute
// or relative name, through a root that is itself a link (the operator's
// choice); the file is the inode the path names, and /proc/self/fd/N names
// it again.
func TestOpenGivesTheFileItself(t *testing.T) {
	tr := newTree(t)
	rootLink := filepath.Join(filepath.Dir(tr.root), "root-link")
	link(t, tr.root, rootLink)
	want, err := os.Stat(tr.disk)
	if err != nil {
		t.Fatal(err)
	}
	for rname, res := range resolvers {
		for _, c := range []struct{ root, name string }{
			{tr.root, tr.disk},
			{tr.root, "images/app/disk.img"},
			{rootLink, filepath.Join(rootLink, "images", "app", "disk.img")},
			{tr.root, filepath.Join(tr.root, "images", ".", "app", "disk.img")},
		} {
			for _, flag := range []int{os.O_RDONLY, os.O_RDWR} {
				f, err := open(c.root, c.name, flag, res)
				if err != nil {
					t.Fatalf("%s: open %s below %s: %v", rname, c.name, c.root, err)
				}
				got, err := f.Stat()
				if err != nil || !os.SameFile(got, want) {
					t.Errorf("%s: open %s gave another file (%v)", rname, c.name, err)
				}
				again, err := os.Stat(FDPath(f))
				if err != nil || !os.SameFile(again, want) {
					t.Errorf("%s: %s does not name the file (%v)", rname, FDPath(f), err)
				}
				if flag == os.O_RDWR {
					if _, err := f.WriteAt([]byte("D"), 0); err != nil {
						t.Errorf("%s: write through the writable file: %v", rname, err)
					}
				} else if _, err := f.WriteAt([]byte("D"), 0); err == nil {
					t.Errorf("%s: a read-only open is writable", rname)
				}
				f.Close()
			}
		}
	}
	if b, _ := os.ReadFile(tr.canary); string(b) != "canary" {
		t.Errorf("the canary changed: %q", b)
	}
}

func TestOpenRefusesOtherFlags(t *testing.T) {
	tr := newTree(t)
	for _, flag := range []int{os.O_WRONLY, os.O_RDWR | os.O_CREATE, os.O_RDONLY | os.O_TRUNC} {
		if f, err := Open(tr.root, tr.disk, flag); err == nil {
			f.Close()
			t.Errorf("flag %#x accepted", flag)
		}
	}
}

// OpenPath resolves as Open does but opens nothing: a socket below the
// root comes back as a path descriptor of the socket, through which a
// client connects; a link in its place (even to a socket inside the root)
// or on the way is refused, as is a path out of the root.
func TestOpenPathGivesTheSocketNotALinkToOne(t *testing.T) {
	tr := newTree(t)
	// A short directory: a socket address holds 107 bytes.
	dir, err := os.MkdirTemp("", "beneath-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	inRoot := filepath.Join(tr.root, "run", "api.sock")
	os.Mkdir(filepath.Dir(inRoot), 0o755)
	if err := os.Rename(sock, inRoot); err != nil {
		t.Fatal(err)
	}
	link(t, "api.sock", filepath.Join(tr.root, "run", "link.sock"))
	link(t, "run", filepath.Join(tr.root, "run-link"))

	f, err := OpenPath(tr.root, "run/api.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("OpenPath gave %v, %v; want the socket", fi.Mode(), err)
	}
	c, err := net.Dial("unix", FDPath(f))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "hi" {
		t.Errorf("through %s: %q", FDPath(f), b)
	}
	for name, want := range map[string]error{"run/link.sock": ErrLink, "run-link/api.sock": ErrLink, "../canary": ErrEscape, tr.canary: ErrEscape} {
		if f, err := OpenPath(tr.root, name); !errors.Is(err, want) {
			if err == nil {
				f.Close()
			}
			t.Errorf("OpenPath(%s) = %v, want %v", name, err, want)
		}
	}
}
