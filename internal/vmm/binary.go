package vmm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mergenhq/mergen/internal/config"
)

// findBinary resolves an explicitly configured path, or else the default
// name on PATH. The error wraps ErrUnavailable.
//
// What a walk of PATH finds is kept (see onPath): every create pins its
// VMM's absolute path (Resolve), and a walk stats each entry of PATH in
// turn.
func findBinary(configured, def string) (string, error) {
	name := configured
	if name == "" {
		name = def
	}
	key := pathKey{name, config.Env()("PATH")}
	walk := !strings.Contains(name, "/")
	if walk {
		if p, ok := onPath.get(key); ok {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s binary %q not found: %w", ErrUnavailable, def, name, err)
	}
	if walk && filepath.IsAbs(p) {
		onPath.put(key, p)
	}
	return p, nil
}

// pathKey is a name looked up on one value of PATH.
type pathKey struct{ name, path string }

// onPath keeps where names were found on PATH, for at most keepFound. A
// kept path is used while it still names an executable regular file (one
// stat, where a walk takes one per entry of PATH until the name is found);
// when it no longer does, or was found keepFound ago, PATH is walked
// again. So a binary moved or removed is found anew at once, and one
// installed later in an earlier entry of PATH from the next walk on. A
// new value of PATH is a new lookup.
var onPath = binaryCache{found: map[pathKey]kept{}, now: time.Now}

// keepFound bounds how long a lookup is trusted: creates at any rate walk
// PATH about once a second, and a binary installed ahead of the one
// found is used within that second.
const keepFound = time.Second

// maxKeptBinaries bounds onPath: a daemon looks up a handful of names
// on one PATH; past the bound, lookups are simply not kept.
const maxKeptBinaries = 32

type binaryCache struct {
	mu    sync.Mutex
	found map[pathKey]kept
	now   func() time.Time // tests move it
}

// kept is where a name was found, and when.
type kept struct {
	path string
	at   time.Time
}

func (c *binaryCache) get(k pathKey) (string, bool) {
	c.mu.Lock()
	e, ok := c.found[k]
	fresh := ok && c.now().Sub(e.at) < keepFound
	c.mu.Unlock()
	if !fresh {
		return "", false
	}
	if fi, err := os.Stat(e.path); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		c.mu.Lock()
		delete(c.found, k)
		c.mu.Unlock()
		return "", false
	}
	return e.path, true
}

func (c *binaryCache) put(k pathKey, p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.found[k]; ok || len(c.found) < maxKeptBinaries {
		c.found[k] = kept{p, c.now()}
	}
}
