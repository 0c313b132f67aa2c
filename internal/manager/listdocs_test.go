package manager_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/proc"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv/hosttest"
	"github.com/mergenhq/mergen/internal/wire"
)

// listHost is a manager under the detached supervisor (whose states are
// files any process can write) and, beside it, a second store over the
// same roots: what another process (a lifecycle stage, the CLI) sees and
// writes, sharing no memory with the manager.
type listHost struct {
	mgr   *manager.Manager
	other *store.Store
}

func newListHost(t *testing.T) *listHost { return newListHostIn(t, nil) }

// newListHostIn is newListHost with env's roots (or other settings).
func newListHostIn(t *testing.T, env map[string]string) *listHost {
	t.Helper()
	vars := map[string]string{"MGR_SUPERVISOR": "detached", "MGR_VMM": "qemu"}
	for k, v := range env {
		vars[k] = v
	}
	hh := hosttest.New(t, vars)
	sup, err := supervisor.New("detached", supervisor.OptionsFrom(hh.Cfg))
	if err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(hh.Cfg.Layout())
	if err != nil {
		t.Fatal(err)
	}
	return &listHost{mgr: manager.New(manager.Options{Config: hh.Cfg, Store: hh.Store, Supervisor: sup}), other: other}
}

// listed is ListEncoded's answer, each document checked against List's
// (the documents built anew, nothing kept) encoded by encoding/json: the
// kept documents are never stale and never differ from a fresh one.
func (h *listHost) listed(t *testing.T) (manager.EncodedVMs, []wire.VM) {
	t.Helper()
	ctx := context.Background()
	docs, err := h.mgr.ListEncoded(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := h.mgr.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if docs.Len() != len(fresh) {
		t.Fatalf("ListEncoded has %d VMs, List %d", docs.Len(), len(fresh))
	}
	for i, v := range fresh {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		got := docs.AppendDoc([]byte("before"), i)
		if !bytes.Equal(got, append([]byte("before"), want...)) || docs.Size(i) != len(want) {
			t.Fatalf("document %d (vm %s) of size %d kept as\n%s\nbuilt anew\n%s", i, v.ID, docs.Size(i), got, want)
		}
	}
	return docs, fresh
}

// writeState records VM id's state as the supervising process does.
func writeState(t *testing.T, p string, st map[string]any) {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A list keeps each VM's document encoded and answers with it while the
// VM is unchanged: the same bytes, not encoded again.
func TestListEncodedKeepsUnchangedDocuments(t *testing.T) {
	h := newListHost(t)
	ctx := context.Background()
	for _, req := range []wire.CreateRequest{
		{Tags: map[string]string{"name": "web", "team": "a<b>&c"}, Metadata: json.RawMessage(`{"k": [1, 2]}`)},
		{Ports: []wire.Port{{Guest: 80}}, HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}}},
		{Bridge: &wire.BridgeRequest{Name: "br0", Netmask: "255.255.255.0", GuestIP: "10.9.0.2", GatewayIP: "10.9.0.1"}},
	} {
		if _, err := h.mgr.Create(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	first, _ := h.listed(t)
	second, _ := h.listed(t)
	for i := 0; i < first.Len(); i++ {
		if first.KeptDoc(i) != second.KeptDoc(i) {
			t.Errorf("document %d of an unchanged VM was encoded again", i)
		}
	}
}

// With a service manager that does not answer, a VM whose VMM has no
// socket has nothing more to ask: its document is kept as under one that
// answers. Once its socket is there, the VMM is asked on every list and
// its document is built anew.
func TestListEncodedKeepsDocumentsWhenTheServiceManagerIsAway(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	hh := hosttest.New(t, map[string]string{"MGR_SUPERVISOR": "systemd", "MGR_VMM": "qemu"})
	sup, err := supervisor.New("systemd", supervisor.OptionsFrom(hh.Cfg))
	if err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(hh.Cfg.Layout())
	if err != nil {
		t.Fatal(err)
	}
	h := &listHost{mgr: manager.New(manager.Options{Config: hh.Cfg, Store: hh.Store, Supervisor: sup}), other: other}
	ctx := context.Background()
	var ids []string
	for range 2 {
		v, err := h.mgr.Create(ctx, wire.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.ID)
	}
	first, fresh := h.listed(t)
	if fresh[0].Service.Available {
		t.Fatalf("the service manager answered: %+v", fresh[0].Service)
	}
	second, _ := h.listed(t)
	for i := range 2 {
		if first.KeptDoc(i) != second.KeptDoc(i) {
			t.Errorf("document %d of an unchanged VM without a socket was encoded again", i)
		}
	}

	// A socket nobody answers on: the VMM is asked (and does not answer).
	sock := h.other.Paths(ids[0]).Socket
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	third, fresh := h.listed(t)
	fourth, _ := h.listed(t)
	with := 0 // the VM with the socket
	if fresh[1].ID == ids[0] {
		with = 1
	}
	if !fresh[with].VMMState.SocketPresent {
		t.Fatalf("vm %s: the socket is not seen: %+v", ids[0], fresh[with].VMMState)
	}
	if third.KeptDoc(with) == fourth.KeptDoc(with) || third.KeptDoc(with) == second.KeptDoc(with) {
		t.Error("the document of a VM with a socket was kept, though only its VMM can say its state")
	}
	if third.KeptDoc(1-with) != second.KeptDoc(1-with) || fourth.KeptDoc(1-with) != second.KeptDoc(1-with) {
		t.Error("the document of the VM without a socket was encoded again")
	}
}

// A document is kept without its paths, which the answer writes from the
// VM's id: roots with the odd characters a supervisor allows, or that
// hold the placeholder ids the pieces around an id are found with, still
// give the very document encoding/json does (pathsJSON's own test takes
// roots JSON escapes).
func TestListEncodedWritesPathsOfAnyRoots(t *testing.T) {
	for _, name := range []string{"a+b@c:d", "00000000-0000-4000-8000-000000000000"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), name)
			h := newListHostIn(t, map[string]string{
				"MGR_CONFIG_ROOT": filepath.Join(dir, "vm.d"),
				"MGR_DATA_ROOT":   filepath.Join(dir, "data"),
			})
			for i := 0; i < 2; i++ {
				if _, err := h.mgr.Create(context.Background(), wire.CreateRequest{}); err != nil {
					t.Fatal(err)
				}
			}
			h.listed(t)
			h.listed(t)
		})
	}
}

// Whatever changes a VM, whichever process changes it, the next list
// shows it: a record rewritten, vm.json rewritten, a state recorded by the
// supervising process, a socket appearing, the pause marker, a VM deleted
// and one created by another process.
func TestListEncodedSeesEveryChange(t *testing.T) {
	h := newListHost(t)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 3; i++ {
		vm, err := h.mgr.Create(ctx, wire.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, vm.ID)
	}
	h.listed(t)
	id := ids[1]
	p := h.other.Paths(id)
	at := func(t *testing.T) wire.VM {
		t.Helper()
		_, vms := h.listed(t)
		for _, v := range vms {
			if v.ID == id {
				return v
			}
		}
		t.Fatalf("vm %s not listed", id)
		return wire.VM{}
	}

	t.Run("record rewritten by another process", func(t *testing.T) {
		meta, err := h.other.ReadMeta(id)
		if err != nil {
			t.Fatal(err)
		}
		meta.Tags = map[string]string{"name": "renamed"}
		meta.VCPU = 3
		b, err := store.MarshalMeta(meta)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.other.WriteFile(id, store.FileMeta, b); err != nil {
			t.Fatal(err)
		}
		if v := at(t); v.Name != "renamed" || v.VCPU != 3 {
			t.Errorf("after the record was rewritten: name %q, vcpu %d; want renamed, 3", v.Name, v.VCPU)
		}
	})
	t.Run("vm.json rewritten", func(t *testing.T) {
		b, err := h.other.ReadFile(id, store.FileVMConfig)
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["accel"], cfg["accelReason"] = "tcg", "rewritten by another process"
		if b, err = json.Marshal(cfg); err != nil {
			t.Fatal(err)
		}
		if err := h.other.WriteFile(id, store.FileVMConfig, b); err != nil {
			t.Fatal(err)
		}
		if v := at(t); v.VMMState.Accelerator != "tcg" || v.VMMState.AcceleratorNote != "rewritten by another process" {
			t.Errorf("after vm.json was rewritten: accelerator %q (%q)", v.VMMState.Accelerator, v.VMMState.AcceleratorNote)
		}
	})
	t.Run("state recorded by the supervising process", func(t *testing.T) {
		writeState(t, p.SupervisorState, map[string]any{"activeState": "failed", "subState": "failed", "result": "exit-code", "restarts": 2, "updated": "2026-11-30T18:00:00Z"})
		if v := at(t); v.State != "failed" || v.Restarts != 2 {
			t.Errorf("after a failed run was recorded: state %q, restarts %d; want failed, 2", v.State, v.Restarts)
		}
		if err := os.Remove(p.SupervisorState); err != nil {
			t.Fatal(err)
		}
		if v := at(t); v.State != wire.StateStopped || v.Restarts != 0 {
			t.Errorf("after the state was removed: state %q, restarts %d; want stopped, 0", v.State, v.Restarts)
		}
	})
	t.Run("running, socket and pause marker", func(t *testing.T) {
		// A main process that outlived its supervising process: active.
		self := proc.Self()
		writeState(t, p.SupervisorState, map[string]any{"activeState": "active", "subState": "running", "mainPID": self.PID, "mainStart": self.Start, "updated": "2026-11-30T18:00:00Z"})
		if v := at(t); v.State != wire.StateRunning || v.VMMState.SocketPresent {
			t.Errorf("active without a socket: state %q, socket present %v; want running, no socket", v.State, v.VMMState.SocketPresent)
		}
		ln, err := net.Listen("unix", p.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if v := at(t); !v.VMMState.SocketPresent || v.VMMState.State != wire.StateRunning {
			t.Errorf("with its socket: socket present %v, vmm state %q; want present, running", v.VMMState.SocketPresent, v.VMMState.State)
		}
		hosttest.WriteFile(t, p.Paused, "")
		if v := at(t); v.State != wire.StatePaused {
			t.Errorf("with the pause marker: state %q, want paused", v.State)
		}
		if err := os.Remove(p.Paused); err != nil {
			t.Fatal(err)
		}
		if v := at(t); v.State != wire.StateRunning {
			t.Errorf("without the pause marker: state %q, want running", v.State)
		}
	})
	t.Run("deleted and created by another process", func(t *testing.T) {
		gone := ids[0]
		if err := h.other.Delete(gone); err != nil {
			t.Fatal(err)
		}
		meta, err := h.other.ReadMeta(ids[2])
		if err != nil {
			t.Fatal(err)
		}
		meta.ID = store.NewID()
		metaJSON, err := store.MarshalMeta(meta)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.other.Create(meta.ID, map[string][]byte{store.FileMeta: metaJSON}); err != nil {
			t.Fatal(err)
		}
		_, vms := h.listed(t)
		listed := map[string]bool{}
		for _, v := range vms {
			listed[v.ID] = true
		}
		if listed[gone] || !listed[meta.ID] || len(vms) != 3 {
			t.Errorf("listed %v; want %s gone and %s there, 3 VMs", listed, gone, meta.ID)
		}
	})
}

// The metrics count the VMs by the state their listed documents say.
func TestMetricsCountListedStates(t *testing.T) {
	h := newListHost(t)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := h.mgr.Create(ctx, wire.CreateRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	_, vms := h.listed(t)
	writeState(t, filepath.Join(vms[0].Paths.RunDir, "supervisor.state.json"), map[string]any{"activeState": "failed", "subState": "failed", "updated": "2026-11-30T18:00:00Z"})
	families := (&host{mgr: h.mgr}).scrape(t)
	for state, want := range map[string]float64{"failed": 1, "stopped": 1} {
		if got := metricValue(t, families, "mergen_vms", map[string]string{"state": state}); got != want {
			t.Errorf("mergen_vms{state=%s} = %v, want %v", state, got, want)
		}
	}
}
