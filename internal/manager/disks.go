package manager

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/filecache"
)

// diskRules say where a VM's kernel, initrd and disks may come from: below
// one of the allowed roots (the base assets, the images root, the volumes
// dir, MGR_DISK_ROOTS), never in one of the areas that hold daemon state
// (config.NoDiskAreas), whatever the roots say; a writable data disk only
// from the volumes dir or MGR_DISK_ROOTS, since the base assets and images
// are shared read-only by every VM.
type diskRules struct {
	listed   []string // the allowed roots in configured order, for messages
	allowed  []string // every allowed root, as configured (cleaned), innermost first
	writable []string // the roots a writable data disk may come from
	noDisks  []string // config.NoDiskAreas, as configured and resolved
	volumes  string
	// placed are the defaults placed so far (see placeDefault).
	placed *placedDefaults
}

// placedDefaults remember where each default (MGR_DEFAULT_*) was placed,
// by the identity of the file its path led to then (filecache.Identity:
// device, inode, size, modification and change times). Placing one follows
// every link of its path, checks it against the daemon's areas and the
// allowed roots, and opens it as the start stage will: about ten system
// calls for each default of each create, a tenth of a create's processor
// time with the four defaults of a plain create. The stat that tells the
// file's identity is made for every create; a default is placed again as
// soon as its path leads to another file (a link moved, the file replaced
// or changed). Only placements that succeeded are kept.
type placedDefaults struct {
	mu     sync.Mutex
	byPath map[string]placedDefault
}

type placedDefault struct {
	file         filecache.Identity
	stored, root string
}

// newDiskRules builds the rules once, when the manager is made, and with
// them the daemon-state areas resolved (about fifty lstats, a twentieth of
// a create's processor time when it was done for each create). Those areas
// are the daemon's own files and directories, placed by its configuration:
// the daemon creates them, and only root can move one or put a link in
// its place while the daemon runs. An area that does not exist yet is
// resolved as far as it exists. What a caller chooses, a disk's path and
// the allowed root it lies below, is still resolved on every create.
func newDiskRules(c config.Config) diskRules {
	r := diskRules{volumes: c.VolumesDir, placed: &placedDefaults{byPath: map[string]placedDefault{}}}
	clean := func(ps []string) []string {
		var out []string
		for _, p := range ps {
			if filepath.IsAbs(p) && !slices.Contains(out, filepath.Clean(p)) {
				out = append(out, filepath.Clean(p))
			}
		}
		return out
	}
	innermostFirst := func(ps []string) []string {
		// A disk belongs to the innermost root holding it, the tightest
		// confinement for the start stage.
		out := clean(ps)
		slices.SortStableFunc(out, func(a, b string) int { return len(b) - len(a) })
		return out
	}
	r.listed = clean(c.AllowedDiskRoots())
	r.allowed = innermostFirst(c.AllowedDiskRoots())
	r.writable = innermostFirst(append([]string{c.VolumesDir}, c.DiskRoots...))
	for _, a := range c.NoDiskAreas() {
		r.noDisks = append(r.noDisks, a)
		if real := resolveExisting(a); real != a {
			r.noDisks = append(r.noDisks, real)
		}
	}
	return r
}

// resolveExisting is path with every link in its existing part resolved;
// the part that does not exist yet is kept as it is.
func resolveExisting(path string) string {
	real, err := filepath.EvalSymlinks(path)
	if err == nil {
		return real
	}
	dir := filepath.Dir(path)
	if dir == path {
		return path
	}
	return filepath.Join(resolveExisting(dir), filepath.Base(path))
}

// within reports whether path is dir or lies below it (both clean).
func within(path, dir string) bool {
	return path == dir || dir == "/" || strings.HasPrefix(path, dir+"/")
}

// forbidden is the daemon-state area path lies in, or "".
func (r diskRules) forbidden(path string) string {
	for _, a := range r.noDisks {
		if within(path, a) {
			return a
		}
	}
	return ""
}

// resolve checks a kernel, initrd or disk path from an API request: it must
// be absolute, exist, lie outside the daemon's state and below an allowed
// root (after following links), and be a regular file, so that a caller
// cannot attach an arbitrary host file (say /etc/shadow, another VM's
// hooks.json or the forwarder's key) to a VM. It returns the path to store
// and the root it lies below: the path as given when no link lies between
// the root and the file, else the resolved path below the resolved root.
// The start stage opens the stored path below that root without following
// links, so the file the VMM gets is the one checked here.
func (r diskRules) resolve(field, path string, writable bool) (stored, root string, err error) {
	if !filepath.IsAbs(path) {
		return "", "", errdefs.Invalid("%s: %q must be an absolute path", field, path)
	}
	clean := filepath.Clean(path)
	if a := r.forbidden(clean); a != "" {
		return "", "", refuseArea(field, path, "", a)
	}
	real, err := filepath.EvalSymlinks(clean)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", errdefs.Invalid("%s: %s does not exist", field, path)
	}
	if err != nil {
		return "", "", errdefs.Invalid("%s: %s: %v", field, path, err)
	}
	if a := r.forbidden(real); a != "" {
		return "", "", refuseArea(field, path, real, a)
	}
	roots := r.allowed
	if writable {
		roots = r.writable
	}
	stored, root, err = locate(clean, real, roots)
	if err != nil {
		return "", "", errdefs.Invalid("%s: %s %v", field, path, err)
	}
	if root != "" {
		return stored, root, nil
	}
	if writable {
		if _, other, _ := locate(clean, real, r.allowed); other != "" {
			return "", "", errdefs.Invalid("%s: %s lies in %s, whose disks every VM shares read-only; a writable data disk must come from the volumes dir (%s) or MGR_DISK_ROOTS", field, path, other, r.volumes)
		}
	}
	return "", "", errdefs.Invalid("%s: %s is outside the allowed disk roots (%s)", field, path, strings.Join(r.listed, ", "))
}

// placeDefault is resolveDefault for the file fi, which the default's path
// leads to now, answered from the last placement of the same path when it
// led to the same file.
func (r diskRules) placeDefault(field, env, path string, fi fs.FileInfo) (stored, root string, err error) {
	id := filecache.IdentityOf(fi)
	ok := id != (filecache.Identity{})
	if ok {
		r.placed.mu.Lock()
		p, known := r.placed.byPath[path]
		r.placed.mu.Unlock()
		if known && p.file == id {
			return p.stored, p.root, nil
		}
	}
	stored, root, err = r.resolveDefault(field, env, path)
	if err == nil && ok {
		r.placed.mu.Lock()
		r.placed.byPath[path] = placedDefault{file: id, stored: stored, root: root}
		r.placed.mu.Unlock()
	}
	return stored, root, err
}

// resolveDefault places an operator's default (MGR_DEFAULT_*), which exists
// and is a regular file: trusted to lie where the operator put it, but
// never in the daemon's state. Below an allowed root it is confined to that
// root like a requested disk; elsewhere to its own directory.
func (r diskRules) resolveDefault(field, env, path string) (stored, root string, err error) {
	clean := filepath.Clean(path)
	real, err := filepath.EvalSymlinks(clean)
	if err != nil {
		return "", "", errdefs.Invalid("%s: the default %s (%s): %v", field, path, env, err)
	}
	for _, p := range []string{clean, real} {
		if a := r.forbidden(p); a != "" {
			return "", "", errdefs.Invalid("%s: the default %s (%s) lies in %s, which holds the daemon's state; disks may never come from there", field, path, env, a)
		}
	}
	stored, root, err = locate(clean, real, r.allowed)
	if err != nil {
		return "", "", errdefs.Invalid("%s: the default %s (%s) %v", field, path, env, err)
	}
	if root == "" {
		stored, root = real, filepath.Dir(real)
		if err := openable(root, stored); err != nil {
			return "", "", errdefs.Invalid("%s: the default %s (%s) %v", field, path, env, err)
		}
	}
	return stored, root, nil
}

// refuseArea is the refusal of path, found (itself, or resolved to real)
// in the daemon-state area.
func refuseArea(field, path, real, area string) error {
	if real != "" && real != filepath.Clean(path) {
		path += " (" + real + ")"
	}
	if real == area || filepath.Clean(path) == area {
		return errdefs.Invalid("%s: %s is a file of the daemon's state; disks may never come from there", field, path)
	}
	return errdefs.Invalid("%s: %s lies in %s, which holds the daemon's state; disks may never come from there", field, path, area)
}

// locate finds the innermost root in roots that holds the file: first the
// path as given (clean) below a root as configured, with no link between
// them; else the resolved path (real) below a resolved root. root is empty
// when no root holds it; err says what is wrong with a file a root holds.
func locate(clean, real string, roots []string) (stored, root string, err error) {
	for _, r := range roots {
		if within(clean, r) && clean != r {
			err := openable(r, clean)
			if err == nil || !errors.Is(err, beneath.ErrLink) {
				return clean, r, err
			}
		}
	}
	for _, r := range roots {
		rr, err := filepath.EvalSymlinks(r)
		if err != nil {
			continue // a root that does not exist holds nothing
		}
		if within(real, rr) && real != rr {
			return real, rr, openable(rr, real)
		}
	}
	return "", "", nil
}

// openable opens path below root as the start stage will, and says in a
// few words what is wrong.
func openable(root, path string) error {
	f, err := beneath.Open(root, path, os.O_RDONLY)
	switch {
	case err == nil:
		return f.Close()
	case errors.Is(err, beneath.ErrNotRegular):
		return errors.New("is not a regular file")
	case errors.Is(err, beneath.ErrLink):
		return err
	}
	return fmt.Errorf("cannot be opened: %v", err)
}
