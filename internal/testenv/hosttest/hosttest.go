// Package hosttest gives the control plane's package tests one way to make
// a host: short temporary roots (a VM's socket path must fit in a unix
// socket address, which t.TempDir's long names can overflow), the
// configuration read from the defaults table with a test's overrides, an
// opened store, and placeholder base assets where the defaults point.
// Only tests import it.
package hosttest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/store"
)

// Host is a configuration and a store over fresh temporary roots.
type Host struct {
	Dir   string // holds the roots; what lies directly in it is outside them
	Cfg   config.Config
	Store *store.Store
}

// New makes a host. env overrides the defaults; by default the VMM is
// named (firecracker), so nothing depends on what is installed, and the
// lifecycle binary is a path where nothing is, so nothing runs it by
// accident.
func New(t testing.TB, env map[string]string) *Host {
	t.Helper()
	d, err := os.MkdirTemp("", "mergen-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	vars := map[string]string{
		"MGR_CONFIG_ROOT":   filepath.Join(d, "vm.d"),
		"MGR_DATA_ROOT":     filepath.Join(d, "data"),
		"MGR_RUN_ROOT":      filepath.Join(d, "run"),
		"MGR_VMM":           "firecracker",
		"MGR_LIFECYCLE_BIN": filepath.Join(d, "no-lifecycle"),
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.FromEnv(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(cfg.Layout())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{cfg.DefaultKernel, cfg.DefaultRootfs} {
		WriteFile(t, p, filepath.Base(p))
	}
	return &Host{Dir: d, Cfg: cfg, Store: st}
}

// WriteFile writes content to path, making its directory.
func WriteFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
