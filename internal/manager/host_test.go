package manager_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv/hosttest"
)

// host is a mergen host in temporary directories: its configuration, its
// store and a manager without a service manager (start and stop answer
// unavailable). The base assets directory holds a kernel and a root file
// system, so a create request may leave both out; disks is the volumes
// directory, an allowed disk root that takes every kind of disk (writable
// data disks too), for requests that name their own; images is the images
// root, whose disks are shared read-only.
type host struct {
	dir    string // holds the roots; what lies directly in it is outside them
	cfg    config.Config
	store  *store.Store
	mgr    *manager.Manager
	disks  string
	images string
}

// errNoSupervisor is why the test hosts' managers cannot start VMs.
var errNoSupervisor = errors.New("no service manager in this test")

// newHost builds a host; env overrides the variables the defaults table
// would otherwise give.
func newHost(t *testing.T, env map[string]string) *host {
	t.Helper()
	hh := hosttest.New(t, env)
	cfg := hh.Cfg
	h := &host{dir: hh.Dir, cfg: cfg, store: hh.Store, disks: cfg.VolumesDir, images: cfg.ImagesRoot}
	for _, dir := range []string{h.disks, h.images} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h.mgr = manager.New(manager.Options{Config: cfg, Store: hh.Store, SupervisorErr: errNoSupervisor})
	return h
}

func writeFile(t *testing.T, path, content string) { hosttest.WriteFile(t, path, content) }

// disk writes a small regular file into the host's disk directory.
func (h *host) disk(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(h.disks, name)
	writeFile(t, p, name)
	return p
}

// leftovers lists what the config and data roots hold besides the
// allocation lock and generation counter: VM directories, staging or trash
// directories, per-VM data.
func (h *host) leftovers(t *testing.T) []string {
	t.Helper()
	var out []string
	entries, err := os.ReadDir(h.cfg.ConfigRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != ".alloc.lock" && e.Name() != ".generation" {
			out = append(out, filepath.Join(h.cfg.ConfigRoot, e.Name()))
		}
	}
	if entries, err := os.ReadDir(filepath.Join(h.cfg.DataRoot, "vms")); err == nil {
		for _, e := range entries {
			out = append(out, filepath.Join(h.cfg.DataRoot, "vms", e.Name()))
		}
	}
	return out
}

// holdPort keeps a TCP port bound on the loopback address for the test's
// duration and returns it.
func holdPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// freePort returns a TCP port that nothing held a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func itoa(n int) string { return strconv.Itoa(n) }

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
