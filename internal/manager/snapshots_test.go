package manager_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/snapshot"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/wire"
)

// A stopped VM has no memory to snapshot: a conflict naming it, and no
// snapshot, staged or not.
func TestSnapshotOfAStoppedVMIsAConflict(t *testing.T) {
	h := newHost(t, nil)
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.mgr.Snapshot(context.Background(), vm.ID, wire.SnapshotRequest{})
	if !errdefs.IsConflict(err) || !contains(err.Error(), vm.ID, "not running") {
		t.Fatalf("Snapshot of a stopped VM = %v; want a conflict naming it", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(h.cfg.DataRoot, "snapshots")); len(entries) != 0 {
		t.Fatalf("a refused snapshot left %v", entries)
	}
	if _, err := h.mgr.Snapshot(context.Background(), store.NewID(), wire.SnapshotRequest{}); !errdefs.IsNotFound(err) {
		t.Fatalf("Snapshot of an unknown VM = %v", err)
	}
}

// fakeSnapshot commits a snapshot record of a QEMU VM of this host's
// default kernel and root disk, with a memory file, as if taken by the
// running QEMU (version): enough for a restore's checks.
func fakeSnapshot(t *testing.T, h *host, version string) snapshot.Record {
	t.Helper()
	snaps := snapshot.New(h.store.Layout)
	id := store.NewID()
	staging, err := snaps.Stage(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "memory"), []byte("guest memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := snapshot.Record{
		ID: id, CreatedAt: time.Now(), SourceVM: store.NewID(), VMM: "qemu", VMMVersion: version,
		VCPU: 1, MemMiB: 256,
		Kernel: h.cfg.DefaultKernel, Disks: store.Disks{Rootfs: h.cfg.DefaultRootfs},
		DiskRoots: map[string]string{"kernel": filepath.Dir(h.cfg.DefaultKernel), "rootfs": filepath.Dir(h.cfg.DefaultRootfs)},
		VMMFiles:  []string{"memory"}, TapName: "tap-source",
	}
	for field, p := range map[string]string{"kernel": rec.Kernel, "rootfs": rec.Disks.Rootfs} {
		b, err := snapshot.Fingerprint(field, p)
		if err != nil {
			t.Fatal(err)
		}
		rec.Bases = append(rec.Bases, b)
	}
	if err := snaps.Commit(staging, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// A restore takes its shape, VMM and disks from the snapshot: a request
// that asks for others is refused naming the field, and nothing is made.
func TestARestoreKeepsTheSnapshotsShapeAndDisks(t *testing.T) {
	h := newHost(t, nil)
	rec := fakeSnapshot(t, h, "9.9.9-never")
	for _, c := range []struct {
		name string
		req  wire.CreateRequest
		says []string
	}{
		{"another vcpu count", wire.CreateRequest{VCPU: 2}, []string{"vcpu: 2", "1 vCPUs"}},
		{"another memory size", wire.CreateRequest{MemMiB: 512}, []string{"memMiB: 512", "256 MiB"}},
		{"another VMM", wire.CreateRequest{VMM: "firecracker"}, []string{"vmm:", "taken with qemu"}},
		{"a disk", wire.CreateRequest{PayloadDisk: h.disk(t, "p.ext4")}, []string{"payloadDisk: a VM restored from a snapshot has the snapshot's"}},
		{"boot arguments", wire.CreateRequest{BootArgs: "quiet"}, []string{"bootArgs:"}},
		{"bridge mode", wire.CreateRequest{Bridge: &wire.BridgeRequest{Name: "br0", GuestIP: "10.9.0.5", GatewayIP: "10.9.0.1", Netmask: "255.255.255.0"}}, []string{"bridge:"}},
		{"an unknown snapshot", wire.CreateRequest{Snapshot: store.NewID()}, []string{"snapshot:", "not found"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := c.req
			if req.Snapshot == "" {
				req.Snapshot = rec.ID
			}
			_, err := h.mgr.Create(context.Background(), req)
			if !errdefs.IsInvalid(err) || !contains(err.Error(), c.says...) {
				t.Fatalf("Create = %v; want invalid saying %q", err, c.says)
			}
		})
	}
	// Giving the snapshot's own shape is fine; this host's QEMU is not the
	// version that took it, which is a conflict naming both.
	_, err := h.mgr.Create(context.Background(), wire.CreateRequest{Snapshot: rec.ID[:8], VCPU: 1, MemMiB: 256})
	if errdefs.IsUnavailable(err) {
		t.Fatalf("QEMU is needed to compare versions (make deps installs it): %v", err)
	}
	if !errdefs.IsConflict(err) || !contains(err.Error(), "9.9.9-never", "cannot load it") {
		t.Fatalf("Create from a snapshot of another QEMU version = %v", err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Fatalf("refused restores left %v", left)
	}
}

// A restore checks the snapshot's files and the shared files it needs
// before anything is made.
func TestARestoreRefusesADamagedSnapshot(t *testing.T) {
	h := newHost(t, nil)
	q, _ := vmm.New("qemu", vmm.Resolve("qemu", h.cfg.Driver))
	v, err := q.Version(context.Background())
	if err != nil {
		t.Fatalf("QEMU is needed (make deps installs it): %v", err)
	}
	rec := fakeSnapshot(t, h, v)
	memory := filepath.Join(h.store.Layout.Snapshot(rec.ID).Dir, "memory")
	os.Chmod(memory, 0o600)
	if err := os.WriteFile(memory, []byte("guest memorY"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = h.mgr.Create(context.Background(), wire.CreateRequest{Snapshot: rec.ID})
	if !errdefs.IsConflict(err) || !contains(err.Error(), rec.ID, "memory", "corrupted") {
		t.Fatalf("restore of a corrupted snapshot = %v", err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Fatalf("the refused restore left %v", left)
	}
}

// A ready snapshot belongs to an image and starts a VM at once.
func TestReadyNeedsAnImageAutoStartAndAPort(t *testing.T) {
	h := newHost(t, nil)
	payload := h.disk(t, "payload.ext4")
	for _, c := range []struct {
		req  wire.CreateRequest
		says string
	}{
		{wire.CreateRequest{Ready: &wire.ReadyRequest{Port: 80}, AutoStart: true}, "ready: needs payloadDisk"},
		{wire.CreateRequest{Ready: &wire.ReadyRequest{Port: 80}, PayloadDisk: payload}, "ready: needs autoStart"},
		{wire.CreateRequest{Ready: &wire.ReadyRequest{}, PayloadDisk: payload, AutoStart: true}, "ready.port"},
		{wire.CreateRequest{Ready: &wire.ReadyRequest{Port: 80}, PayloadDisk: payload, AutoStart: true, DataDisk: h.disk(t, "d.ext4")}, "dataDisk"},
	} {
		_, err := h.mgr.Create(context.Background(), c.req)
		if !errdefs.IsInvalid(err) || !contains(err.Error(), c.says) {
			t.Fatalf("Create(%+v) = %v; want invalid saying %q", c.req, err, c.says)
		}
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Fatalf("refused creates left %v", left)
	}
}
