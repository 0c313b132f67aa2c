package layout

import (
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

// joined is Layout.VM's paths as filepath.Join gives them, one join per
// path: what VM must return, however it builds them.
func joined(l Layout, id string) VM {
	cfg := filepath.Join(l.ConfigRoot, id)
	run := filepath.Join(l.RunRoot, id)
	data := filepath.Join(l.DataRoot, "vms", id)
	locks := filepath.Join(l.RunRoot, "locks")
	return VM{
		ID: id, ConfigDir: cfg,
		VMConfig: filepath.Join(cfg, "vm.json"), Meta: filepath.Join(cfg, "meta.json"), Hooks: filepath.Join(cfg, "hooks.json"),
		LifecycleHooks: filepath.Join(cfg, "lifecycle-hooks.json"), Env: filepath.Join(cfg, "env"), Health: filepath.Join(cfg, "health.json"),
		RunDir: run, Socket: filepath.Join(run, "vmm.sock"), PIDFile: filepath.Join(run, "vmm.pid"), Paused: filepath.Join(run, "paused"),
		AgentSecret:   filepath.Join(run, "agent.secret"),
		SupervisorPID: filepath.Join(run, "supervisor.pid"), SupervisorState: filepath.Join(run, "supervisor.state.json"),
		SupervisorLog: filepath.Join(run, "supervisor.log"), SupervisorLock: filepath.Join(run, "supervisor.lock"),
		SupervisorOp: filepath.Join(run, "supervisor.op.lock"),
		Lock:         filepath.Join(locks, id+".lock"), StageLock: filepath.Join(locks, id+".stage.lock"),
		DataDir: data, ConsoleLog: filepath.Join(data, "console.log"), ConsoleLogOld: filepath.Join(data, "console.log.1"),
		RestoreDir: filepath.Join(data, "restore"), RestoredDisk: filepath.Join(data, "data.ext4"),
	}
}

func TestVMPathsAreJoinedAndClean(t *testing.T) {
	roots := []Layout{
		{ConfigRoot: "/etc/mergen/vm.d", RunRoot: "/run/mergen", DataRoot: "/var/lib/mergen"},
		{ConfigRoot: "/etc/mergen/vm.d/", RunRoot: "/run//mergen/", DataRoot: "/var/lib/../lib/mergen"},
		{ConfigRoot: "vm.d", RunRoot: "./run", DataRoot: "data"},
		{ConfigRoot: "/", RunRoot: "/", DataRoot: "/"},
		{},
	}
	ids := []string{"0b9f6c1e-3d2a-4f5b-8c7d-9e0f1a2b3c4d", "%i", "", ".", "..", "a/b", "a/../b"}
	for _, l := range roots {
		for _, id := range ids {
			want := joined(l, id)
			if got := l.VM(id); !reflect.DeepEqual(got, want) {
				t.Errorf("layout %+v, id %q:\n got %+v\nwant %+v", l, id, got, want)
			}
			if got := l.MetaFile(id); got != want.Meta {
				t.Errorf("layout %+v, id %q: MetaFile %q, want %q", l, id, got, want.Meta)
			}
			if got := l.SupervisorStateFile(id); got != want.SupervisorState {
				t.Errorf("layout %+v, id %q: SupervisorStateFile %q, want %q", l, id, got, want.SupervisorState)
			}
			meta, vmConfig, socket, paused := l.ListFiles(id)
			if got, want := []string{meta, vmConfig, socket, paused}, []string{want.Meta, want.VMConfig, want.Socket, want.Paused}; !slices.Equal(got, want) {
				t.Errorf("layout %+v, id %q: ListFiles %q, want %q", l, id, got, want)
			}
		}
	}
}
