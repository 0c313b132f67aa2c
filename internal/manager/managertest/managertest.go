// Package managertest builds managers over many VMs for the benchmarks of
// the list path, in the manager and in the API alike.
package managertest

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv/hosttest"
	"github.com/mergenhq/mergen/internal/wire"
)

// stoppedState is what the detached supervisor's process records when its
// VM has run and ended cleanly.
const stoppedState = `{"activeState":"inactive","subState":"dead","result":"success","updated":"2026-11-30T18:00:00Z","exitCode":"exited","exitStatus":"0","exited":"2026-11-30T18:00:00Z"}` + "\n"

// StoppedVMs creates n VMs (one published port each) under the detached
// supervisor on a fresh host, and leaves in each VM's run directory the
// state record of a run that ended, so a list reads every file a VM at rest
// has. env adds settings to the host's (MGR_VMM, say). No root needed.
func StoppedVMs(tb testing.TB, n int, env map[string]string) (*hosttest.Host, *manager.Manager) {
	tb.Helper()
	settings := map[string]string{"MGR_SUPERVISOR": "detached", "MGR_GUEST_CIDR": "172.30.0.0/20", "MGR_PORT_START": "20000", "MGR_PORT_END": "40000"}
	for k, v := range env {
		settings[k] = v
	}
	hh := hosttest.New(tb, settings)
	sup, err := supervisor.New("detached", supervisor.OptionsFrom(hh.Cfg))
	if err != nil {
		tb.Fatal(err)
	}
	m := manager.New(manager.Options{Config: hh.Cfg, Store: hh.Store, Supervisor: sup, Log: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	for range n {
		vm, err := m.Create(ctx, wire.CreateRequest{Ports: []wire.Port{{Guest: 80}}})
		if err != nil {
			tb.Fatal(err)
		}
		p := hh.Store.Paths(vm.ID)
		if err := os.MkdirAll(p.RunDir, 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := atomicfile.WriteFile(p.SupervisorState, []byte(stoppedState), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return hh, m
}
