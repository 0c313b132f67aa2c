package manager

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/mergenhq/mergen/internal/errdefs"
)

// resolveDisk checks a kernel, initrd or disk path from an API request: it
// must be absolute, exist, be a regular file, and — after following every
// symlink — lie inside one of the allowed roots, so that a caller cannot
// attach an arbitrary host file (say /etc/shadow) to a VM. It returns the
// resolved path, which is what gets stored and attached.
func resolveDisk(field, path string, roots []string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", errdefs.Invalid("%s: %q must be an absolute path", field, path)
	}
	real, err := filepath.EvalSymlinks(filepath.Clean(path))
	if errors.Is(err, fs.ErrNotExist) {
		return "", errdefs.Invalid("%s: %s does not exist", field, path)
	}
	if err != nil {
		return "", errdefs.Invalid("%s: %s: %w", field, path, err)
	}
	if !insideAny(real, roots) {
		return "", errdefs.Invalid("%s: %s is outside the allowed disk roots (%s)", field, path, strings.Join(roots, ", "))
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", errdefs.Invalid("%s: %s: %w", field, path, err)
	}
	if !st.Mode().IsRegular() {
		return "", errdefs.Invalid("%s: %s is not a regular file", field, path)
	}
	return real, nil
}

func insideAny(path string, roots []string) bool {
	for _, r := range roots {
		rr, err := filepath.EvalSymlinks(r)
		if err != nil {
			continue // a root that does not exist holds nothing
		}
		rel, err := filepath.Rel(rr, path)
		if err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && rel != "." {
			return true
		}
	}
	return false
}
