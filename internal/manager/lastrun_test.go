package manager_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/wire"
)

// A VM's document says how its last run ended, from what the detached
// supervisor recorded and what the console log says; lists leave it out.
func TestTheDocumentSaysWhyTheLastRunEnded(t *testing.T) {
	h := newHost(t, nil)
	sup, err := supervisor.New("detached", supervisor.OptionsFrom(h.cfg))
	if err != nil {
		t.Fatal(err)
	}
	h.mgr = manager.New(manager.Options{Config: h.cfg, Store: h.store, Supervisor: sup})
	ctx := context.Background()
	vm, err := h.mgr.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.mgr.Get(ctx, vm.ID)
	if err != nil || got.LastRun != nil {
		t.Fatalf("never run: lastRun = %+v, %v; want none", got.LastRun, err)
	}

	p := h.store.Paths(vm.ID)
	if err := os.MkdirAll(p.RunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The guest powered off after the payload was not found; QEMU then
	// exited by itself with status 0, but the run is not what was asked.
	writeFile(t, p.SupervisorState, `{"activeState":"inactive","subState":"dead","result":"success",`+
		`"exitCode":"exited","exitStatus":"0","exited":"2026-01-02T03:04:05Z","updated":"2026-01-02T03:04:05Z"}`)
	if err := os.MkdirAll(filepath.Dir(p.ConsoleLog), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.ConsoleLogOld, "[    0.000000] Linux version 6.1.0 (builder@ci) #1 SMP\nmergen-init: exit status 0\n")
	writeFile(t, p.ConsoleLog, "[    0.000000] Linux version 6.1.0 (builder@ci) #1 SMP\n"+
		"mergen-init: starting (kernel uptime 0.398s)\n"+
		"mergen-init: error: entrypoint: \"/app/server\" does not exist in the image or is not executable\n"+
		"mergen-init: exit status 127\n"+
		"\x1b[0m[    0.934211] reboot: Power down\n")
	got, err = h.mgr.Get(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	lr := got.LastRun
	if lr == nil || lr.Reason != wire.ReasonInitError || lr.Result != "success" || lr.ExitCode == nil || *lr.ExitCode != 0 ||
		lr.InitExitCode == nil || *lr.InitExitCode != 127 ||
		lr.InitMessage != `entrypoint: "/app/server" does not exist in the image or is not executable` ||
		lr.EndedAt.IsZero() || len(lr.ConsoleTail) != 5 || lr.ConsoleTail[4] != `\x1b[0m[    0.934211] reboot: Power down` {
		t.Fatalf("lastRun = %+v", lr)
	}
	t.Logf("lastRun: %+v", lr)

	// A VMM killed by a signal, with a guest that had not ended.
	writeFile(t, p.SupervisorState, `{"activeState":"failed","subState":"failed","result":"signal",`+
		`"exitCode":"killed","exitStatus":"KILL","updated":"2026-01-02T03:04:05Z"}`)
	writeFile(t, p.ConsoleLog, "[    0.000000] Linux version 6.1.0 (builder@ci) #1 SMP\nmergen-init: payload started: pid 50, uid 0, gid 0, argv [\"/bin/sleep\" \"1000\"]\n")
	got, _ = h.mgr.Get(ctx, vm.ID)
	if lr := got.LastRun; lr == nil || lr.Reason != wire.ReasonVMMSignal || lr.Signal != "KILL" || lr.ExitCode != nil || lr.InitExitCode != nil {
		t.Fatalf("killed VMM: lastRun = %+v", lr)
	}

	// on-failure:3 gave up: the last of four runs failed like the others
	// (the payload's status 3 made QEMU exit with 3<<1|1).
	writeFile(t, p.SupervisorState, `{"activeState":"failed","subState":"failed","result":"exit-code","gaveUp":true,"restarts":3,`+
		`"exitCode":"exited","exitStatus":"7","exited":"2026-01-02T03:04:05Z","updated":"2026-01-02T03:04:05Z"}`)
	writeFile(t, p.ConsoleLog, "[    0.000000] Linux version 6.1.0 (builder@ci) #1 SMP\n[payload] bye\n"+
		"mergen-init: payload exited with status 3\nmergen-init: exit status 3\n")
	got, _ = h.mgr.Get(ctx, vm.ID)
	if lr := got.LastRun; got.Restarts != 3 || lr == nil || !lr.GaveUp || lr.Reason != wire.ReasonPayloadExit || lr.Result != "exit-code" ||
		lr.Message != "the payload exited with status 3; the restart limit was reached: the restart policy gave up after 3 restarts" {
		t.Fatalf("policy gave up: restarts %d, lastRun = %+v", got.Restarts, lr)
	}

	list, err := h.mgr.List(ctx)
	if err != nil || len(list) != 1 || list[0].LastRun != nil || list[0].State != "failed" {
		t.Fatalf("List = %+v, %v; want the failed VM without lastRun", list, err)
	}
}
