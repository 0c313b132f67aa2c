package guest

import (
	"archive/tar"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/execproto"
	"golang.org/x/sys/unix"
)

// read sends a tar of p (a file or a directory tree, in the payload's
// root) on stdout, then exit 0.
func (s *execServer) read(ss *session, p string) error {
	if err := tarFromRoot(s.root, p, ss.enc.Writer(execproto.StreamStdout)); err != nil {
		return err
	}
	return ss.enc.JSON(execproto.StreamExit, execproto.Exit{})
}

// write extracts the tar the host sends on stdin below dir (in the
// payload's root), then answers exit 0. The rest of the host's input is
// read to its end first, so the answer follows what the host sent.
func (s *execServer) write(ss *session, dir string) error {
	in := &stdinReader{dec: ss.dec}
	err := untarInRoot(s.root, dir, in)
	if err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, in); err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	return ss.enc.JSON(execproto.StreamExit, execproto.Exit{})
}

// stdinReader reads the host's stdin frames as one stream, until the empty
// frame that ends it. Frames of other streams are skipped.
type stdinReader struct {
	dec  *execproto.Decoder
	rest []byte
	eof  bool
}

func (r *stdinReader) Read(b []byte) (int, error) {
	for len(r.rest) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		st, p, err := r.dec.Next()
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the host left before the end
		}
		if err != nil {
			return 0, err
		}
		if st != execproto.StreamStdin {
			continue
		}
		r.rest, r.eof = p, len(p) == 0
	}
	n := copy(b, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

// openRoot opens the payload's root for lookups below it.
func openRoot(root string) (int, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open the payload's root: %w", err)
	}
	return fd, nil
}

// openInRoot opens p (absolute, as the payload sees it) below the root
// open as rfd: links resolve inside the root, ".." stops at it.
func openInRoot(rfd int, p string, flags uint64) (int, error) {
	how := unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	for range 16 {
		fd, err := unix.Openat2(rfd, path.Clean("./"+p), &how)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue // a rename raced the lookup
		}
		return fd, err
	}
	return -1, unix.EAGAIN
}

// tarFromRoot writes a tar of p to w: its base name at the top, a
// directory with everything below it. Regular files, directories and
// symbolic links (as links, never followed below p) are copied with their
// modes, owners and times; sockets, fifos and devices are left out.
func tarFromRoot(root, p string, w io.Writer) error {
	rfd, err := openRoot(root)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	defer unix.Close(rfd)
	// O_PATH first: opening a fifo or a device to read could block or act.
	pfd, err := openInRoot(rfd, p, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	name := path.Base(path.Clean(p))
	if name == "/" {
		name = "."
	}
	tw := tar.NewWriter(w)
	buf := make([]byte, copyBuffer)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
	default:
		return fmt.Errorf("read %s: not a regular file or a directory", p)
	}
	// Reopen for reading the object the O_PATH descriptor found.
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if err := addToTar(tw, fd, name, p, buf); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	return nil
}

func tarHeader(st *unix.Stat_t, name string) *tar.Header {
	return &tar.Header{Name: name, Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()), Format: tar.FormatPAX}
}

// addToTar adds the file or directory open as fd (which it closes) under
// name; where names it in errors.
func addToTar(tw *tar.Writer, fd int, name, where string, buf []byte) error {
	f := os.NewFile(uintptr(fd), where)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("read %s: %w", where, err)
	}
	h := tarHeader(&st, name)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		h.Typeflag, h.Size = tar.TypeReg, st.Size
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("read %s: %w", where, err)
		}
		// Exactly the size in the header: a file that grows meanwhile is
		// cut, one that shrinks is an error of the tar writer.
		if _, err := io.CopyBuffer(tw, io.LimitReader(f, st.Size), buf); err != nil {
			return fmt.Errorf("read %s: %w", where, err)
		}
		return nil
	case unix.S_IFDIR:
	default:
		return nil
	}
	h.Typeflag, h.Name = tar.TypeDir, name+"/"
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("read %s: %w", where, err)
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read %s: %w", where, err)
	}
	sort.Strings(names)
	for _, n := range names {
		child, cwhere := path.Join(name, n), path.Join(where, n)
		var cst unix.Stat_t
		if err := unix.Fstatat(fd, n, &cst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed meanwhile
			}
			return fmt.Errorf("read %s: %w", cwhere, err)
		}
		switch cst.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, err := readlinkat(fd, n)
			if err != nil {
				return fmt.Errorf("read %s: %w", cwhere, err)
			}
			h := tarHeader(&cst, child)
			h.Typeflag, h.Linkname = tar.TypeSymlink, target
			if err := tw.WriteHeader(h); err != nil {
				return fmt.Errorf("read %s: %w", cwhere, err)
			}
		case unix.S_IFREG, unix.S_IFDIR:
			// O_NOFOLLOW: an entry replaced by a link meanwhile is not
			// followed out of the tree.
			cfd, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
			if err != nil {
				return fmt.Errorf("read %s: %w", cwhere, err)
			}
			if err := addToTar(tw, cfd, child, cwhere, buf); err != nil {
				return err
			}
		}
	}
	return nil
}

func readlinkat(dfd int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		if len(buf) >= 64<<10 {
			return "", errors.New("link target too long")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// untarInRoot extracts the tar read from r below dir, in the payload's
// root. Every path is resolved with RESOLVE_IN_ROOT, so links in the tree
// (old ones, or ones the tar itself makes) stay inside the root; an entry
// whose name leaves dir is refused, and so are device nodes and hard links
// to outside the tar's tree. A file is written under a temporary name and
// renamed into place once whole: a full disk or a cut stream leaves the
// old file (or none), never half of the new one. Modes, owners and
// modification times are kept.
func untarInRoot(root, dir string, r io.Reader) error {
	rfd, err := openRoot(root)
	if err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	defer unix.Close(rfd)
	dfd, err := openDirInRoot(root, rfd, path.Clean("./"+dir))
	if err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	unix.Close(dfd)
	tr := tar.NewReader(r)
	buf := make([]byte, copyBuffer)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("write %s: tar: %w", dir, err)
		}
		if err := extract(root, rfd, dir, h, tr, buf); err != nil {
			return err
		}
	}
}

// inside cleans a tar name relative to dir; ok is false when it leaves it.
func inside(name string) (string, bool) {
	c := path.Clean("./" + strings.TrimPrefix(name, "/"))
	return c, c != ".." && !strings.HasPrefix(c, "../")
}

func extract(root string, rfd int, dir string, h *tar.Header, r io.Reader, buf []byte) error {
	rel, ok := inside(h.Name)
	if !ok {
		return fmt.Errorf("write %s: tar entry %q leaves the directory", dir, h.Name)
	}
	target := path.Join(dir, rel)
	fail := func(err error) error { return fmt.Errorf("write %s: %w", target, err) }
	mode := uint32(h.Mode & 0o7777)
	if rel == "." {
		if h.Typeflag == tar.TypeDir {
			return nil // dir itself: left as it is
		}
		return fail(errors.New("a tar entry that is not a directory names the target directory"))
	}
	pfd, err := openDirInRoot(root, rfd, path.Clean("./"+path.Dir(target)))
	if err != nil {
		return fail(err)
	}
	defer unix.Close(pfd)
	base := path.Base(target)

	switch h.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fail(err)
		}
		fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(err)
		}
		defer unix.Close(fd)
		if err := unix.Fchown(fd, h.Uid, h.Gid); err != nil {
			return fail(err)
		}
		if err := unix.Fchmod(fd, mode); err != nil {
			return fail(err)
		}
		return nil
	case tar.TypeReg:
		return replace(pfd, base, fail, func(tmp string) error {
			fd, err := unix.Openat(pfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
			if err != nil {
				return err
			}
			f := os.NewFile(uintptr(fd), target)
			defer f.Close()
			if _, err := io.CopyBuffer(onlyWriter{f}, r, buf); err != nil {
				return err
			}
			if err := f.Chown(h.Uid, h.Gid); err != nil {
				return err
			}
			if err := f.Chmod(os.FileMode(mode) | modeBits(mode)); err != nil {
				return err
			}
			// A full disk may show only when the data reaches it.
			if err := f.Sync(); err != nil {
				return err
			}
			return f.Close()
		}, h)
	case tar.TypeSymlink:
		return replace(pfd, base, fail, func(tmp string) error {
			if err := unix.Symlinkat(h.Linkname, pfd, tmp); err != nil {
				return err
			}
			return unix.Fchownat(pfd, tmp, h.Uid, h.Gid, unix.AT_SYMLINK_NOFOLLOW)
		}, h)
	case tar.TypeLink:
		src, ok := inside(h.Linkname)
		if !ok || src == "." {
			return fail(fmt.Errorf("hard link to %q: outside the tar's directory", h.Linkname))
		}
		sfd, err := openInRoot(rfd, path.Join(dir, src), unix.O_PATH|unix.O_NOFOLLOW)
		if err != nil {
			return fail(fmt.Errorf("hard link to %s: %w", h.Linkname, err))
		}
		defer unix.Close(sfd)
		var st unix.Stat_t
		if err := unix.Fstat(sfd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fail(fmt.Errorf("hard link to %s: not a regular file", h.Linkname))
		}
		return replace(pfd, base, fail, func(tmp string) error {
			return unix.Linkat(sfd, "", pfd, tmp, unix.AT_EMPTY_PATH)
		}, nil)
	case tar.TypeFifo:
		return replace(pfd, base, fail, func(tmp string) error {
			if err := unix.Mknodat(pfd, tmp, unix.S_IFIFO|mode, 0); err != nil {
				return err
			}
			return unix.Fchownat(pfd, tmp, h.Uid, h.Gid, unix.AT_SYMLINK_NOFOLLOW)
		}, h)
	case tar.TypeChar, tar.TypeBlock:
		return fail(errors.New("device nodes are refused"))
	}
	return fail(fmt.Errorf("tar entry type %q is not supported", h.Typeflag))
}

// modeBits are the setuid, setgid and sticky bits of a tar mode, which
// os.FileMode keeps apart from the permission bits.
func modeBits(mode uint32) os.FileMode {
	var m os.FileMode
	if mode&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

// onlyWriter hides *os.File's ReadFrom, so the copy goes through the
// fixed buffer rather than a splice that would read r in other sizes.
type onlyWriter struct{ io.Writer }

// replace makes base in the directory pfd with create, under a temporary
// name renamed over base once made; a failure removes the temporary name.
// h, when given, sets the modification time.
func replace(pfd int, base string, fail func(error) error, create func(tmp string) error, h *tar.Header) error {
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := "." + base + ".mergen-tmp-" + hex.EncodeToString(rnd[:])
	if len(tmp) > 255 {
		tmp = ".mergen-tmp-" + hex.EncodeToString(rnd[:])
	}
	err := create(tmp)
	if err == nil && h != nil && !h.ModTime.IsZero() {
		ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
		err = unix.UtimesNanoAt(pfd, tmp, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err == nil {
		err = unix.Renameat(pfd, tmp, pfd, base)
	}
	if err != nil {
		unix.Unlinkat(pfd, tmp, 0)
		// The temporary name is no business of the host's.
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fail(err)
	}
	return nil
}
