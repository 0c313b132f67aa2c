// Package beneath opens a file that must lie below a root directory without
// following any symbolic link on the way: the file a VM is given is the
// file that was validated, whoever can write inside the root in between.
//
// Open resolves the path with openat2(2) and RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS, so neither ".." nor a link (in the last component or
// in a directory above it, pointing inside the root or out of it) is
// followed; where openat2 is unavailable (kernels before 5.6, or a seccomp
// filter that refuses it) it walks the path one component at a time with
// O_PATH|O_NOFOLLOW, which refuses the same things. The result is checked to
// be a regular file before it is opened for reading or writing, so that a
// device node or a FIFO put in the file's place is never opened (opening
// some devices has effects; opening a FIFO blocks).
//
// OpenPath resolves the same way but opens nothing: it returns a path
// descriptor of whatever the name holds (a unix socket, say), for a caller
// that checks its type and uses it only through that descriptor.
//
// Guarantees: the returned file is the inode that the path named, through
// directories below root only, at the moment of the call. The root itself
// is opened as given, following links: it is the operator's configuration,
// not the caller's.
package beneath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Errors Open wraps, for callers that tell the cases apart.
var (
	ErrLink       = errors.New("a symbolic link is in the way (links are not followed)")
	ErrEscape     = errors.New("the path leaves its root")
	ErrNotRegular = errors.New("not a regular file")
)

// Open opens name, which lies beneath the directory root, for reading
// (flag os.O_RDONLY) or reading and writing (os.O_RDWR). name is either
// relative to root or an absolute path that starts with root. The file has
// close-on-exec set, as every file Go opens; a caller that hands it to
// another program clears it.
func Open(root, name string, flag int) (*os.File, error) {
	return open(root, name, flag, openat2)
}

// rel is name relative to root, unchanged: ".." components are left for
// the resolution to refuse, not cleaned away.
func rel(root, name string) (string, error) {
	if !filepath.IsAbs(root) {
		return "", fmt.Errorf("root %q is not an absolute path", root)
	}
	if !filepath.IsAbs(name) {
		return name, nil
	}
	r := filepath.Clean(root)
	if r == "/" {
		return strings.TrimLeft(name, "/"), nil
	}
	after, ok := strings.CutPrefix(name, r+"/")
	if !ok {
		return "", fmt.Errorf("%s is not below %s: %w", name, r, ErrEscape)
	}
	return after, nil
}

// resolver opens rel beneath the directory dirfd as an O_PATH descriptor.
type resolver func(dirfd int, rel string) (int, error)

// OpenPath resolves name below root as Open does (no "..", no link on the
// way or in its place) and returns an O_PATH descriptor of whatever it
// names, of any type, without opening it: for a caller that checks the
// type itself and uses the file only through the descriptor, such as a
// unix socket connected to through its /proc/self/fd link.
func OpenPath(root, name string) (*os.File, error) {
	fd, err := pathFD(root, name, openat2)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// pathFD is the O_PATH descriptor of name below root.
func pathFD(root, name string, resolve resolver) (int, error) {
	r, err := rel(root, name)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", name, err)
	}
	if r == "" || strings.ContainsRune(r, 0) {
		return -1, fmt.Errorf("open %s: empty or invalid path below %s", name, root)
	}
	dirfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: root %s: %w", name, root, err)
	}
	defer unix.Close(dirfd)
	pathfd, err := resolve(dirfd, r)
	if err != nil {
		return -1, fmt.Errorf("open %s below %s: %w", name, root, err)
	}
	return pathfd, nil
}

func open(root, name string, flag int, resolve resolver) (*os.File, error) {
	if flag != os.O_RDONLY && flag != os.O_RDWR {
		return nil, fmt.Errorf("open %s: flag %#x: only O_RDONLY or O_RDWR", name, flag)
	}
	pathfd, err := pathFD(root, name, resolve)
	if err != nil {
		return nil, err
	}
	defer unix.Close(pathfd)
	var st unix.Stat_t
	if err := unix.Fstat(pathfd, &st); err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("open %s: %w (%s)", name, ErrNotRegular, fileType(st.Mode))
	}
	// Reopening the O_PATH descriptor through its /proc link opens the
	// very inode it holds; the path is not looked up again.
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pathfd), flag|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	var got unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil || got.Dev != st.Dev || got.Ino != st.Ino {
		unix.Close(fd)
		return nil, fmt.Errorf("open %s: reopened a different file (%v)", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// openat2 resolves with the kernel's guarantees, falling back to walk where
// the system call is missing or filtered. EAGAIN (a rename raced the
// lookup) is retried.
func openat2(dirfd int, rel string) (int, error) {
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for range 16 {
		fd, err := unix.Openat2(dirfd, rel, &how)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
			// No openat2 here, or a seccomp filter refusing it: an O_PATH
			// lookup itself never fails with EPERM (missing search
			// permission is EACCES).
			return walk(dirfd, rel)
		case errors.Is(err, unix.ELOOP):
			return -1, ErrLink
		case errors.Is(err, unix.EXDEV):
			return -1, ErrEscape
		}
		return -1, err
	}
	return -1, fmt.Errorf("%s: lookup kept racing with renames: %w", rel, unix.EAGAIN)
}

// walk is the fallback: one component at a time, each opened O_PATH |
// O_NOFOLLOW relative to the one before, refusing "..", links, and a
// non-directory in the middle.
func walk(dirfd int, rel string) (int, error) {
	parts := strings.Split(rel, "/")
	cur, err := unix.Dup(dirfd)
	if err != nil {
		return -1, err
	}
	for i, p := range parts {
		last := i == len(parts)-1
		switch p {
		case "", ".":
			if last {
				unix.Close(cur)
				return -1, fmt.Errorf("%s: names a directory", rel)
			}
			continue
		case "..":
			unix.Close(cur)
			return -1, ErrEscape
		}
		next, err := unix.Openat(cur, p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(next, &st); err != nil {
			unix.Close(next)
			return -1, err
		}
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			unix.Close(next)
			return -1, ErrLink
		case !last && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			unix.Close(next)
			return -1, unix.ENOTDIR
		}
		cur = next
	}
	return cur, nil
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return "unknown type"
}

// FDPath is the path through which a process that inherited f at the same
// descriptor number opens the same file: /proc/self/fd/N.
func FDPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }
