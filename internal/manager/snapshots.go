package manager

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/alloc"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/filecopy"
	"github.com/mergenhq/mergen/internal/hooks"
	"github.com/mergenhq/mergen/internal/snapshot"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/vmnet"
	"github.com/mergenhq/mergen/internal/wire"
)

// Snapshot takes a snapshot of VM id: it pauses the guest (unless it is
// paused already), has the VMM write its memory and device state, copies
// the VM's data disk while nothing can write it, and resumes the guest
// (unless it was paused, or req.Stop asks to stop the VM instead). The
// snapshot is committed only once complete; any failure leaves none.
func (m *Manager) Snapshot(ctx context.Context, id string, req wire.SnapshotRequest) (snap wire.Snapshot, err error) {
	defer func(start time.Time) { m.metrics.observe(opSnapshot, start, err) }(time.Now())
	meta, unlock, err := m.lockVM(ctx, "snapshot", id)
	if err != nil {
		return wire.Snapshot{}, err
	}
	defer unlock()
	rec, err := m.takeSnapshot(ctx, meta, "")
	if err != nil {
		return wire.Snapshot{}, err
	}
	m.log.Info("snapshot taken", "vm", meta.ID, "snapshot", rec.ID, "bytes", rec.SizeBytes, "pausedMs", rec.DurationMs)
	if req.Stop {
		if err := m.stop(ctx, meta); err != nil {
			return snapshotDoc(rec), fmt.Errorf("snapshot %s of vm %s is taken, but stopping the vm failed: %w", rec.ID, meta.ID, err)
		}
	}
	return snapshotDoc(rec), nil
}

// takeSnapshot snapshots meta's VM, which the caller holds locked, and
// returns the committed record; ready, when set, marks it as that image
// key's ready snapshot.
func (m *Manager) takeSnapshot(ctx context.Context, meta store.Meta, ready string) (snapshot.Record, error) {
	id := meta.ID
	driver, err := vmm.New(meta.VMM, meta.Driver)
	if err != nil {
		return snapshot.Record{}, fmt.Errorf("snapshot vm %s: %w", id, err)
	}
	p := m.store.Paths(id)
	st, err := driver.Status(ctx, p.Socket)
	if err != nil || (!st.Running && !st.Paused) {
		return snapshot.Record{}, errdefs.Conflict("snapshot vm %s: the vm is not running (a snapshot captures a running or paused guest; start it first)", id)
	}
	spec := store.Spec(meta, p)
	version, err := driver.Version(ctx)
	if err != nil {
		return snapshot.Record{}, fmt.Errorf("snapshot vm %s: %w", id, err)
	}
	shape, err := driver.Shape(spec)
	if err != nil {
		return snapshot.Record{}, fmt.Errorf("snapshot vm %s: %w", id, err)
	}
	rec := snapshot.Record{
		ID: m.newID(), CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
		SourceVM: id, SourceName: meta.Tags[NameTag],
		VMM: meta.VMM, VMMVersion: version, Shape: shape,
		VCPU: meta.VCPU, MemMiB: meta.MemMiB, Kernel: meta.Kernel, Initrd: meta.Initrd,
		Disks: meta.Disks, DiskRoots: maps.Clone(meta.DiskRoots), HasData: meta.Disks.Data != "",
		HTTPPort: meta.HTTPPort, TapName: meta.TapName, Ready: ready,
	}
	if ready == "" {
		// A restore keeps the VM's health check unless it asks for
		// another; an image's ready snapshot belongs to no one's check.
		rec.HealthCheck = meta.HealthCheck
	}
	rec.Disks.Data = ""
	delete(rec.DiskRoots, "dataDisk")
	for _, f := range meta.Files() {
		if f.Field == "dataDisk" {
			continue
		}
		b, err := snapshot.Fingerprint(f.Field, f.Path)
		if err != nil {
			return snapshot.Record{}, fmt.Errorf("snapshot vm %s: %w", id, err)
		}
		rec.Bases = append(rec.Bases, b)
	}
	staging, err := m.snaps.Stage(rec.ID)
	if err != nil {
		return snapshot.Record{}, fmt.Errorf("snapshot vm %s: %w", id, err)
	}
	committed := false
	defer func() {
		if !committed {
			m.snaps.Discard(staging)
		}
	}()

	began := time.Now()
	if !st.Paused {
		if err := driver.Pause(ctx, p.Socket); err != nil {
			return snapshot.Record{}, fmt.Errorf("snapshot vm %s: pause: %w", id, err)
		}
	}
	files, err := driver.Snapshot(ctx, spec, staging)
	if err == nil && rec.HasData {
		// The guest is paused and the VMM has flushed its writes: the copy
		// is the disk the memory image knows.
		err = filecopy.Clone(meta.Disks.Data, filepath.Join(staging, "disks", snapshot.DataDisk), 0o600)
	}
	if !st.Paused {
		// Resumed on failure too: the guest must not stay paused because
		// a snapshot could not be written.
		if rerr := driver.Resume(context.WithoutCancel(ctx), p.Socket); rerr != nil {
			err = errors.Join(err, fmt.Errorf("resume: %w", rerr))
		}
	}
	rec.DurationMs = time.Since(began).Milliseconds()
	if err != nil {
		return snapshot.Record{}, snapshotFailed(id, m.snaps.Paths(rec.ID).Dir, err)
	}
	rec.VMMFiles = files
	if err := m.snaps.Commit(staging, &rec); err != nil {
		return snapshot.Record{}, snapshotFailed(id, m.snaps.Paths(rec.ID).Dir, err)
	}
	committed = true
	m.emit(ctx, meta, events.Snapshotted, "", "", map[string]string{"snapshot": rec.ID})
	return rec, nil
}

// snapshotFailed names a full disk as such: the VMM reports it in its own
// words ("Unable to write to file: No space left on device"), not as an
// errno.
func snapshotFailed(id, dir string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || strings.Contains(strings.ToLower(err.Error()), "no space left") {
		return errdefs.NoSpace("snapshot vm %s: no space left on the device of %s for the snapshot; the guest goes on, nothing was kept (%v)", id, filepath.Dir(dir), err)
	}
	return err
}

// GetSnapshot returns snapshot ref (an id or a unique prefix).
func (m *Manager) GetSnapshot(ref string) (wire.Snapshot, error) {
	rec, err := m.snaps.Resolve(ref)
	if err != nil {
		return wire.Snapshot{}, err
	}
	return snapshotDoc(rec), nil
}

// ListSnapshots returns every snapshot, oldest first.
func (m *Manager) ListSnapshots() ([]wire.Snapshot, error) {
	recs, err := m.snaps.List()
	if err != nil {
		return nil, err
	}
	out := make([]wire.Snapshot, 0, len(recs))
	for _, r := range recs {
		out = append(out, snapshotDoc(r))
	}
	return out, nil
}

// DeleteSnapshot removes snapshot ref. VMs restored from it keep their own
// links or copies of its files.
func (m *Manager) DeleteSnapshot(ref string) error {
	rec, err := m.snaps.Resolve(ref)
	if err != nil {
		return err
	}
	if err := m.snaps.Delete(rec.ID); err != nil {
		return err
	}
	m.log.Info("snapshot deleted", "snapshot", rec.ID)
	return nil
}

func snapshotDoc(r snapshot.Record) wire.Snapshot {
	d := wire.Snapshot{
		ID: r.ID, CreatedAt: r.CreatedAt,
		Source: wire.SnapshotSource{VM: r.SourceVM, Name: r.SourceName},
		VMM:    r.VMM, VMMVersion: r.VMMVersion, Shape: r.Shape,
		VCPU: r.VCPU, MemMiB: r.MemMiB, Kernel: r.Kernel,
		Disks:     wire.Disks{Rootfs: r.Disks.Rootfs, Agent: r.Disks.Agent, Payload: r.Disks.Payload, Env: r.Disks.Env},
		SizeBytes: r.SizeBytes, DurationMs: r.DurationMs, Ready: r.Ready,
		Files: make([]wire.SnapshotFile, 0, len(r.Files)),
	}
	for _, f := range r.Files {
		d.Files = append(d.Files, wire.SnapshotFile{Name: f.Name, Size: f.Size, SHA256: f.SHA256})
	}
	return d
}

// createFromSnapshot creates a VM restored from req.Snapshot: the snapshot
// decides the VMM, its settings, the kernel, the read-only disks and the
// shape; the request gives the identity. The snapshot is held (its delete
// refused) while its files are verified and linked or copied into the
// VM's data directory.
func (m *Manager) createFromSnapshot(ctx context.Context, req wire.CreateRequest, vmHooks hooks.Set) (wire.VM, error) {
	for _, f := range []struct{ name, value string }{
		{"kernel", req.Kernel}, {"initrd", req.Initrd}, {"rootfs", req.Rootfs}, {"agentDisk", req.AgentDisk},
		{"payloadDisk", req.PayloadDisk}, {"envDisk", req.EnvDisk}, {"dataDisk", req.DataDisk}, {"bootArgs", req.BootArgs},
	} {
		if f.value != "" {
			return wire.VM{}, errdefs.Invalid("%s: a VM restored from a snapshot has the snapshot's; leave %s out", f.name, f.name)
		}
	}
	if req.Bridge != nil {
		return wire.VM{}, errdefs.Invalid("bridge: a VM restored from a snapshot gets a network namespace of its own; bridge mode cannot be restored into")
	}
	if req.Ready != nil {
		return wire.VM{}, errdefs.Invalid("ready: give either snapshot or ready, not both")
	}
	found, err := m.snaps.Resolve(req.Snapshot)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return wire.VM{}, errdefs.Invalid("snapshot: %v", err)
		}
		return wire.VM{}, err
	}
	rec, release, err := m.snaps.Use(ctx, found.ID)
	if err != nil {
		return wire.VM{}, err
	}
	defer release()
	meta, driver, prepare, err := m.restoreRecord(ctx, rec, req)
	if err != nil {
		return wire.VM{}, err
	}
	return m.finishCreate(ctx, meta, req, driver, vmHooks, prepare)
}

// restoreRecord checks that rec can be restored here into the request's
// shape and makes the new VM's record, and the prepare step that gives the
// VM its own links and copies of the snapshot's files.
func (m *Manager) restoreRecord(ctx context.Context, rec snapshot.Record, req wire.CreateRequest) (store.Meta, vmm.Driver, func(*store.Meta) error, error) {
	fail := func(err error) (store.Meta, vmm.Driver, func(*store.Meta) error, error) {
		return store.Meta{}, nil, nil, err
	}
	if req.VMM != "" && req.VMM != rec.VMM {
		return fail(errdefs.Invalid("vmm: snapshot %s was taken with %s and restores only with it, not %s", rec.ID, rec.VMM, req.VMM))
	}
	// Zero: not given (Create keeps normalize's defaults out of a restore).
	if req.VCPU != 0 && req.VCPU != rec.VCPU {
		return fail(errdefs.Invalid("vcpu: %d, but snapshot %s has %d vCPUs: a snapshot restores only into its own shape (leave vcpu out)", req.VCPU, rec.ID, rec.VCPU))
	}
	if req.MemMiB != 0 && req.MemMiB != rec.MemMiB {
		return fail(errdefs.Invalid("memMiB: %d, but snapshot %s has %d MiB: a snapshot restores only into its own shape (leave memMiB out)", req.MemMiB, rec.ID, rec.MemMiB))
	}
	// This host's driver settings, not the record's: a snapshot may come
	// from elsewhere (mergen snapshot pull), and its binary paths are not
	// to be run. The version and shape checks below make sure this host's
	// VMM and settings are the ones the snapshot needs.
	settings := vmm.Resolve(rec.VMM, m.cfg.Driver)
	driver, err := vmm.New(rec.VMM, settings)
	if err != nil {
		return fail(fmt.Errorf("restore snapshot %s: %w", rec.ID, err))
	}
	version, err := driver.Version(ctx)
	if err != nil {
		return fail(fmt.Errorf("restore snapshot %s: %w", rec.ID, err))
	}
	if version != rec.VMMVersion {
		return fail(errdefs.Conflict("snapshot %s was taken with %s %s; this host runs %s %s, which cannot load it", rec.ID, rec.VMM, rec.VMMVersion, rec.VMM, version))
	}
	if err := m.snaps.Verify(rec); err != nil {
		return fail(err)
	}
	id := m.newID()
	meta := store.Meta{
		ID:        id,
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
		VMM:       rec.VMM,
		Driver:    settings,
		VCPU:      rec.VCPU,
		MemMiB:    rec.MemMiB,
		Kernel:    rec.Kernel,
		Initrd:    rec.Initrd,
		Disks:     rec.Disks,
		DiskRoots: maps.Clone(rec.DiskRoots),
		HTTPPort:  req.HTTPPort,
		Tags:      req.Tags,
		Metadata:  req.Metadata,
		ExtraEnv:  req.ExtraEnv,
		AutoStart: req.AutoStart,
		Restart:   req.Restart,
		MAC:       vmnet.MACFor(id),
		TapName:   store.TapName(id),
		Netns:     store.NetnsName(id),
		Snapshot:  rec.ID,
		// The request's health check, else the snapshotted VM's.
		HealthCheck: cmp.Or(recordHealthCheck(req.HealthCheck), rec.HealthCheck.Clone()),
	}
	if meta.HTTPPort == 0 {
		meta.HTTPPort = rec.HTTPPort
	}
	if meta.DiskRoots == nil {
		meta.DiskRoots = map[string]string{}
	}
	if rec.VMM == "firecracker" {
		// Firecracker reopens the tap by the name its snapshot recorded;
		// in the VM's own namespace that name is free.
		meta.TapName = rec.TapName
	}
	meta.Gateway, meta.PrefixLen = alloc.Gateway(m.cfg.GuestCIDR).String(), m.cfg.GuestCIDR.Bits()
	snapDir := m.snaps.Paths(rec.ID).Dir
	prepare := func(meta *store.Meta) error {
		p := m.store.Paths(meta.ID)
		if err := os.MkdirAll(p.RestoreDir, 0o700); err != nil {
			return fmt.Errorf("restore snapshot %s into vm %s: %w", rec.ID, meta.ID, err)
		}
		for _, f := range rec.VMMFiles {
			if err := filecopy.Link(filepath.Join(snapDir, f), filepath.Join(p.RestoreDir, f), 0o400); err != nil {
				return fmt.Errorf("restore snapshot %s into vm %s: %w", rec.ID, meta.ID, err)
			}
		}
		if rec.HasData {
			if err := filecopy.Clone(filepath.Join(snapDir, "disks", snapshot.DataDisk), p.RestoredDisk, 0o600); err != nil {
				return fmt.Errorf("restore snapshot %s into vm %s: data disk: %w", rec.ID, meta.ID, err)
			}
			meta.Disks.Data, meta.DiskRoots["dataDisk"] = p.RestoredDisk, p.DataDir
		}
		shape, err := driver.Shape(store.Spec(*meta, p))
		if err != nil {
			return fmt.Errorf("restore snapshot %s into vm %s: %w", rec.ID, meta.ID, err)
		}
		if shape != rec.Shape {
			return errdefs.Conflict("snapshot %s cannot be restored here: it was taken of a VM of shape %q, and this host makes %q (a different VMM setting, machine type or accelerator)", rec.ID, rec.Shape, shape)
		}
		return nil
	}
	return meta, driver, prepare, nil
}
