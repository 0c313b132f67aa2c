// Package layer applies OCI image layers (tar streams) to a directory with
// the semantics of the OCI image spec: whiteouts and opaque directories,
// hard links, symlinks, device nodes, ownership, modes and xattrs.
//
// Guarantee: no entry of a layer can create, change or remove anything
// outside the root directory, nor remove the root itself. Entries that try
// (".." components, absolute names, parents or hard-link targets that
// resolve through a symlink leading out of the root, whiteouts naming no
// entry such as ".wh.", ".wh.." or ".wh...") are refused with an error
// naming the entry. Every removal is checked to be strictly below the root
// before it happens.
//
// A layer can be bounded (Limits): its uncompressed size and its number of
// entries; past a bound, application stops with an error wrapping ErrLimit.
package layer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// metaPrefix starts aufs's own metadata (.wh..wh.plnk, .wh..wh.aufs):
	// never a whiteout of a file, since no layer can hold a file whose
	// name starts with .wh.
	metaPrefix  = whiteoutPrefix + whiteoutPrefix
	maxSymlinks = 40 // same bound as the kernel's ELOOP
)

// ErrLimit is wrapped by the error of a layer that goes past its Limits.
var ErrLimit = errors.New("layer goes past the extraction limit")

// Limits bound one layer. A zero field is no bound.
type Limits struct {
	// MaxBytes bounds the uncompressed layer: the tar stream read and the
	// file content written (a sparse entry counts its full size).
	MaxBytes int64
	// MaxEntries bounds the number of tar entries.
	MaxEntries int
}

// Options of one application.
type Options struct {
	// Attrs, when not nil, receives the owner, mode, device numbers and
	// xattrs of every entry (see ApplyRecording).
	Attrs  Attrs
	Limits Limits
}

// Stats counts what Apply did, so callers can report skipped entries.
type Stats struct {
	Entries        int
	Bytes          int64
	SkippedDevices int // device nodes skipped because the process cannot mknod
}

// Attr is what an unprivileged process cannot put on disk for one path:
// owner, the full mode, device numbers and privileged xattrs. Keys of Attrs
// are slash paths relative to the root.
type Attr struct {
	Uid, Gid           int
	Mode               int64
	Typeflag           byte // tar.TypeChar or tar.TypeBlock for devices
	Devmajor, Devminor int64
	Xattrs             map[string]string
}

// Attrs records Attr per path while layers are applied.
type Attrs map[string]Attr

// Apply extracts the uncompressed tar stream r on top of root. When the
// process is not root, ownership is not applied and device nodes are skipped
// (counted in Stats); everything else is identical.
func Apply(root string, r io.Reader) (Stats, error) {
	return ApplyRecording(root, r, nil)
}

// ApplyRecording is Apply that also records, in attrs, the owner, mode,
// device numbers and xattrs of every entry, so that a process without
// privileges can still produce an exact archive of the result. Device nodes
// it cannot create become empty placeholder files. Whiteouts and
// replacements drop the records of what they remove.
func ApplyRecording(root string, r io.Reader, attrs Attrs) (Stats, error) {
	return ApplyWith(root, r, Options{Attrs: attrs})
}

// ApplyWith is Apply with options: recording and limits. A layer that goes
// past a limit stops where it is with an error wrapping ErrLimit; what it
// wrote so far stays (callers apply layers in a staging directory).
func ApplyWith(root string, r io.Reader, o Options) (Stats, error) {
	a := applier{root: filepath.Clean(root), asRoot: os.Geteuid() == 0, created: map[string]bool{}, attrs: o.Attrs, limits: o.Limits}
	cr := &countingReader{r: r}
	a.read = cr
	tr := tar.NewReader(cr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return a.stats, fmt.Errorf("read layer: %w", err)
		}
		if limit := a.limits.MaxEntries; limit > 0 && a.stats.Entries >= limit {
			return a.stats, fmt.Errorf("layer entry %q: %w: more than %d entries", h.Name, ErrLimit, limit)
		}
		if err := a.overSize(0); err != nil {
			return a.stats, fmt.Errorf("layer entry %q: %w", h.Name, err)
		}
		if err := a.entry(h, tr); err != nil {
			return a.stats, fmt.Errorf("layer entry %q: %w", h.Name, err)
		}
		a.stats.Entries++
	}
	return a.stats, nil
}

// countingReader counts the bytes of the (uncompressed) tar stream.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// overSize reports whether the stream read so far, or the content written
// plus more bytes about to be, goes past MaxBytes.
func (a *applier) overSize(more int64) error {
	limit := a.limits.MaxBytes
	if limit <= 0 {
		return nil
	}
	if a.read.n > limit || more > limit-a.stats.Bytes {
		return fmt.Errorf("%w: more than %d bytes uncompressed", ErrLimit, limit)
	}
	return nil
}

type applier struct {
	root   string
	asRoot bool
	stats  Stats
	// created holds the paths this layer wrote, so an opaque marker that
	// appears after them in the same layer hides only lower layers.
	created map[string]bool
	attrs   Attrs
	limits  Limits
	read    *countingReader
	buf     []byte // file content copies
}

// remove deletes the path at host and everything under it, after checking
// that it lies strictly below the root: no entry, whatever its name, may
// remove the root or anything outside it.
func (a *applier) remove(host string) error {
	rel, err := filepath.Rel(a.root, host)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return fmt.Errorf("removal of %s refused: not strictly inside the root", host)
	}
	if err := os.RemoveAll(host); err != nil {
		return err
	}
	a.forget(host)
	return nil
}

// key is the record key of a host path inside the root: records follow the
// resolved location, which is where an archive of the tree will find it.
func (a *applier) key(host string) string {
	rel, err := filepath.Rel(a.root, host)
	if err != nil {
		return host
	}
	return filepath.ToSlash(rel)
}

// forget drops the records of the path at host and everything under it.
func (a *applier) forget(host string) {
	if a.attrs == nil {
		return
	}
	rel := a.key(host)
	delete(a.attrs, rel)
	for k := range a.attrs {
		if strings.HasPrefix(k, rel+"/") {
			delete(a.attrs, k)
		}
	}
}

func (a *applier) record(host string, h *tar.Header) {
	if a.attrs == nil {
		return
	}
	rel := a.key(host)
	at := Attr{Uid: h.Uid, Gid: h.Gid, Mode: h.Mode & 0o7777}
	if h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock {
		at.Typeflag, at.Devmajor, at.Devminor = h.Typeflag, h.Devmajor, h.Devminor
	}
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if at.Xattrs == nil {
				at.Xattrs = map[string]string{}
			}
			at.Xattrs[name] = v
		}
	}
	a.attrs[rel] = at
}

// clean validates a tar name and returns it as a slash path relative to the
// root ("" for the root itself).
func clean(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", errors.New("absolute path refused")
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", errors.New("path with '..' refused")
		}
	}
	c := path.Clean(name)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// resolveParent returns the host path of rel's parent directory, following
// symlinks inside the root the way the guest will see them (absolute targets
// are relative to the root). A symlink that leads out of the root is an error.
func (a *applier) resolveParent(rel string) (string, error) {
	dir, base := path.Split(rel)
	p, err := a.resolve(strings.TrimSuffix(dir, "/"), 0)
	if err != nil {
		return "", err
	}
	return filepath.Join(p, base), nil
}

// resolve follows every component of rel, symlinks included, and returns the
// host path; it never leaves the root.
func (a *applier) resolve(rel string, depth int) (string, error) {
	cur := "" // resolved, relative to root, slash separated
	parts := strings.Split(rel, "/")
	for i := 0; i < len(parts); i++ {
		part := parts[i]
		if part == "" || part == "." {
			continue
		}
		if part == ".." {
			if cur == "" {
				return "", errors.New("path leads out of the root")
			}
			cur = path.Dir(cur)
			if cur == "." {
				cur = ""
			}
			continue
		}
		next := path.Join(cur, part)
		host := filepath.Join(a.root, filepath.FromSlash(next))
		fi, err := os.Lstat(host)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			// Missing components are created later as directories; regular
			// components are taken as they are.
			cur = next
			continue
		}
		depth++
		if depth > maxSymlinks {
			return "", errors.New("too many levels of symbolic links")
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", err
		}
		rest := strings.Join(parts[i+1:], "/")
		var joined string
		if strings.HasPrefix(target, "/") {
			joined = strings.TrimPrefix(target, "/")
		} else {
			// A relative target must stay inside the root on its own: a
			// link such as "../../etc" from a shallow directory is an
			// escape attempt, not something to clamp silently.
			joined = path.Join(cur, target)
			if joined == ".." || strings.HasPrefix(joined, "../") {
				return "", fmt.Errorf("symlink %s -> %s leads out of the root", next, target)
			}
		}
		if rest != "" {
			joined = joined + "/" + rest
		}
		return a.resolve(joined, depth)
	}
	return filepath.Join(a.root, filepath.FromSlash(cur)), nil
}

func (a *applier) entry(h *tar.Header, r io.Reader) error {
	rel, err := clean(h.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		// The root itself: only its metadata.
		if h.Typeflag == tar.TypeDir {
			return a.meta(a.root, h)
		}
		return nil
	}
	base := path.Base(rel)
	dirRel := path.Dir(rel)
	if dirRel == "." {
		dirRel = ""
	}

	if base == opaqueMarker {
		dir, err := a.resolve(dirRel, 0)
		if err != nil {
			return err
		}
		return a.opaque(dir, dirRel)
	}
	if strings.HasPrefix(base, metaPrefix) {
		return nil // aufs metadata, not part of the image
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		name := strings.TrimPrefix(base, whiteoutPrefix)
		// ".wh." names nothing; ".wh.." and ".wh..." would name the
		// directory holding the whiteout and its parent.
		if name == "" || name == "." || name == ".." {
			return fmt.Errorf("whiteout %q names no entry: refused", base)
		}
		p, err := a.resolveParent(path.Join(dirRel, name))
		if err != nil {
			return err
		}
		if err := a.remove(p); err != nil {
			return fmt.Errorf("whiteout: %w", err)
		}
		return nil
	}

	target, err := a.resolveParent(rel)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	// An entry replaces what lower layers had at this path, except that a
	// directory over a directory merges.
	if fi, err := os.Lstat(target); err == nil {
		if !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
			if err := a.remove(target); err != nil {
				return err
			}
		}
	}
	a.created[rel] = true
	if h.Typeflag != tar.TypeLink {
		a.record(target, h)
	}

	mode := uint32(h.Mode & 0o7777)
	switch h.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(target, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tars still use TypeRegA
		if err := a.overSize(h.Size); err != nil {
			return err
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		// io.Copy would hand f 32 KiB at a time (os.File.ReadFrom
		// falls back to that for a tar stream); one larger buffer per
		// layer writes most files in one or a few calls.
		if a.buf == nil {
			a.buf = make([]byte, 256<<10)
		}
		n, err := io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{r}, a.buf)
		a.stats.Bytes += n
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case tar.TypeSymlink:
		// The link text is stored as given: it is resolved in the guest,
		// and any later entry going through it is checked by resolve.
		return a.lmeta(target, h, os.Symlink(h.Linkname, target))
	case tar.TypeLink:
		lrel, err := clean(h.Linkname)
		if err != nil || lrel == "" {
			return fmt.Errorf("hard link target %q refused", h.Linkname)
		}
		src, err := a.resolveParent(lrel)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", h.Linkname, err)
		}
		fi, err := os.Lstat(src)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", h.Linkname, err)
		}
		if fi.IsDir() {
			return fmt.Errorf("hard link target %q is a directory", h.Linkname)
		}
		return os.Link(src, target)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		var kind uint32
		switch h.Typeflag {
		case tar.TypeChar:
			kind = unix.S_IFCHR
		case tar.TypeBlock:
			kind = unix.S_IFBLK
		default:
			kind = unix.S_IFIFO
		}
		if !a.asRoot && kind != unix.S_IFIFO {
			a.stats.SkippedDevices++
			if a.attrs == nil {
				return nil
			}
			// A placeholder keeps the path in the tree; the archive
			// writer turns it back into a device from the record.
			f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			f.Close()
			return nil
		}
		dev := unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
		if err := unix.Mknod(target, kind|mode, int(dev)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
	default:
		return fmt.Errorf("unsupported tar entry type %q", string(h.Typeflag))
	}
	return a.meta(target, h)
}

// opaque empties dir of everything that did not come from the current layer.
func (a *applier) opaque(dir, dirRel string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if a.created[path.Join(dirRel, e.Name())] {
			continue
		}
		if err := a.remove(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("opaque directory: %w", err)
		}
	}
	return nil
}

// meta applies ownership, xattrs, mode and times. Ownership goes first
// because chown clears setuid and setgid bits.
func (a *applier) meta(p string, h *tar.Header) error {
	if a.asRoot {
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			return err
		}
	}
	if err := a.xattrs(p, h); err != nil {
		return err
	}
	mode := uint32(h.Mode & 0o7777)
	if !a.asRoot && a.attrs != nil {
		// Without root, a 0555 directory or a 0000 file would lock this
		// process out of the tree it is still building and archiving; the
		// record keeps the true mode.
		if h.Typeflag == tar.TypeDir {
			mode |= 0o700
		} else {
			mode |= 0o600
		}
	}
	if err := unix.Chmod(p, mode); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// lmeta is meta for symlinks: no mode (Linux ignores it), owner and times.
func (a *applier) lmeta(p string, h *tar.Header, created error) error {
	if created != nil {
		return created
	}
	if a.asRoot {
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			return err
		}
	}
	if err := a.xattrs(p, h); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func (a *applier) xattrs(p string, h *tar.Header) error {
	for k, v := range h.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		// trusted.* and security.* need privileges; without them the
		// attribute cannot be kept and the caller is not root anyway.
		if !a.asRoot && (strings.HasPrefix(name, "trusted.") || strings.HasPrefix(name, "security.")) {
			continue
		}
		if err := unix.Lsetxattr(p, name, []byte(v), 0); err != nil {
			return fmt.Errorf("xattr %s: %w", name, err)
		}
	}
	return nil
}
