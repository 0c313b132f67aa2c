package converter

import (
	"archive/tar"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/converter/layer"
	"github.com/mergenhq/mergen/internal/imagemeta"
)

// OutputDir returns imagesRoot/<ref> for a source. A registry reference
// keeps its shape as a path (ghcr.io/org/app:1.2.3 becomes
// <imagesRoot>/ghcr.io/org/app:1.2.3), after checking it parses as a
// reference and that no component is empty, ".", "..", hidden, or a name the
// converter uses inside an image dir. oci: and docker-archive: sources become
// one component: the source with every character outside [A-Za-z0-9._-]
// replaced by '_'. Whatever the source, the result is strictly inside the
// images root.
func OutputDir(imagesRoot, source string) (string, error) {
	if source == "" {
		return "", fmt.Errorf("output dir: image reference is empty")
	}
	if imagesRoot == "" {
		return "", fmt.Errorf("output dir: no images root (MGR_IMAGES_ROOT)")
	}
	if len(source) > 255 {
		return "", fmt.Errorf("output dir: image reference %q is longer than 255 characters", source)
	}
	root := filepath.Clean(imagesRoot)
	var rel string
	if strings.HasPrefix(source, prefixOCI) || strings.HasPrefix(source, prefixDocker) {
		rel = flatName(source)
	} else {
		if _, err := name.ParseReference(source); err != nil {
			return "", fmt.Errorf("output dir: image reference %q: %w", source, err)
		}
		for _, part := range strings.Split(source, "/") {
			switch {
			case part == "", part == ".", part == "..", strings.HasPrefix(part, "."),
				part == CacheDir, part == imagemeta.PayloadDir, strings.ContainsRune(part, 0):
				return "", fmt.Errorf("output dir: image reference %q: path component %q is not allowed", source, part)
			}
		}
		rel = filepath.FromSlash(source)
	}
	dir := filepath.Join(root, rel)
	if r, err := filepath.Rel(root, dir); err != nil || r == "." || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("output dir: image reference %q does not map to a directory under %s", source, root)
	}
	return dir, nil
}

func flatName(source string) string {
	var b strings.Builder
	for _, r := range source {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

func tarHeader(p, rel string, fi fs.FileInfo, inodes map[uint64]string, attrs layer.Attrs) (*tar.Header, error) {
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		var err error
		if link, err = os.Readlink(p); err != nil {
			return nil, err
		}
	}
	h, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return nil, err
	}
	h.Name = filepath.ToSlash(rel)
	if fi.IsDir() {
		h.Name += "/"
	}
	h.Uname, h.Gname = "", ""
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		h.Uid, h.Gid = int(st.Uid), int(st.Gid)
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			if first, seen := inodes[st.Ino]; seen {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				inodes[st.Ino] = h.Name
			}
		}
	}
	// Only the permission bits and setuid/setgid/sticky: FileInfoHeader
	// already encodes them in the tar form.
	if names, err := listXattrs(p); err == nil {
		for _, n := range names {
			v := make([]byte, 64<<10)
			sz, err := unix.Lgetxattr(p, n, v)
			if err != nil {
				continue
			}
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+n] = string(v[:sz])
		}
		if h.PAXRecords != nil {
			h.Format = tar.FormatPAX
		}
	}
	// Without privileges the tree on disk lacks owners, devices and some
	// xattrs; the records made while applying the layers hold the truth.
	if at, ok := attrs[filepath.ToSlash(rel)]; ok && h.Typeflag != tar.TypeLink {
		h.Uid, h.Gid, h.Mode = at.Uid, at.Gid, at.Mode
		if at.Typeflag != 0 {
			h.Typeflag, h.Devmajor, h.Devminor, h.Size = at.Typeflag, at.Devmajor, at.Devminor, 0
		}
		for k, v := range at.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
			h.Format = tar.FormatPAX
		}
	}
	return h, nil
}

func listXattrs(p string) ([]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			names = append(names, s)
		}
	}
	return names, nil
}
