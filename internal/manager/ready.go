package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/hooks"
	"github.com/mergenhq/mergen/internal/lock"
	"github.com/mergenhq/mergen/internal/snapshot"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/vmnet"
	"github.com/mergenhq/mergen/internal/wire"
)

// Ready snapshots: an image's VMs start from memory. The first VM of an
// image (with a given kernel, base disks, VMM settings and shape) asked
// for with `ready` makes the image's ready snapshot: a template VM of that
// image, with no caller's identity in it, is booted, waited for until its
// port answers, snapshotted and deleted. Every such VM, the first
// included, is then restored from that snapshot. The snapshot is keyed by
// everything its memory depends on, so a changed image, kernel, base disk
// or shape makes a new one, and the image's older ready snapshots are
// deleted then.

// ReadyTag marks the template VM a ready snapshot is taken of, with the
// image key as its value.
const ReadyTag = "mergen.ready"

// readyWait bounds how long a template VM's port may take to answer.
const readyWait = 3 * time.Minute

func (m *Manager) createReady(ctx context.Context, req wire.CreateRequest, vmHooks hooks.Set) (wire.VM, error) {
	port := req.Ready.Port
	if port == 0 {
		port = req.HTTPPort
	}
	switch {
	case req.PayloadDisk == "":
		return wire.VM{}, errdefs.Invalid("ready: needs payloadDisk: a ready snapshot belongs to an image")
	case !req.AutoStart:
		return wire.VM{}, errdefs.Invalid("ready: needs autoStart: the VM starts from the image's ready snapshot")
	case req.DataDisk != "":
		return wire.VM{}, errdefs.Invalid("dataDisk: a VM started from a ready snapshot cannot have a data disk (the snapshot's template has none)")
	case req.Bridge != nil:
		return wire.VM{}, errdefs.Invalid("bridge: a VM started from a ready snapshot gets a network namespace of its own")
	case port < 1 || port > 65535:
		return wire.VM{}, errdefs.Invalid("ready.port: %d is not a TCP port (give ready.port or httpPort)", port)
	}
	// The template: the image and shape of the request, nobody's identity.
	tmplReq := wire.CreateRequest{
		VMM: req.VMM, Kernel: req.Kernel, Initrd: req.Initrd, Rootfs: req.Rootfs, AgentDisk: req.AgentDisk,
		PayloadDisk: req.PayloadDisk, EnvDisk: req.EnvDisk, VCPU: req.VCPU, MemMiB: req.MemMiB,
		HTTPPort: req.HTTPPort, BootArgs: req.BootArgs, AutoStart: true, Restart: "no",
		// The caller's health check says when the template is ready to
		// be snapshotted; the snapshot does not keep it.
		HealthCheck: req.HealthCheck,
	}
	tmplMeta, driver, err := m.fromRequest(tmplReq)
	if err != nil {
		return wire.VM{}, err
	}
	// The VMM's version and the machine it makes (devices included, which
	// a newer mergen may add) belong to the key too: a snapshot restores
	// only into both.
	version, err := driver.Version(ctx)
	if err != nil {
		return wire.VM{}, fmt.Errorf("ready snapshot: %w", err)
	}
	shape, err := driver.Shape(store.Spec(tmplMeta, m.store.Paths(tmplMeta.ID)))
	if err != nil {
		return wire.VM{}, errdefs.Invalid("ready: %v", err)
	}
	key, err := readyKey(tmplMeta, port, req.BootArgs, version+"\n"+shape)
	if err != nil {
		return wire.VM{}, err
	}
	rec, err := m.readySnapshot(ctx, key, port, tmplMeta, tmplReq, driver)
	if err != nil {
		return wire.VM{}, err
	}
	restore := req
	restore.Snapshot, restore.Ready = rec.ID, nil
	restore.Kernel, restore.Initrd, restore.Rootfs, restore.AgentDisk, restore.PayloadDisk, restore.EnvDisk, restore.BootArgs = "", "", "", "", "", "", ""
	restore.VCPU, restore.MemMiB = 0, 0
	restore.VMM = ""
	return m.createFromSnapshot(ctx, restore, vmHooks)
}

// readyKey names what a ready snapshot's memory depends on: the VMM, its
// version and settings, the machine it makes, the shape, the caller's
// extra boot arguments, the port, and the identity of every file the
// guest reads.
func readyKey(meta store.Meta, port int, bootArgs, machine string) (string, error) {
	parts := map[string]any{
		"vmm": meta.VMM, "driver": meta.Driver, "vcpu": meta.VCPU, "memMiB": meta.MemMiB,
		"bootArgs": bootArgs, "port": port, "machine": machine,
	}
	var bases []snapshot.Base
	for _, f := range meta.Files() {
		b, err := snapshot.Fingerprint(f.Field, f.Path)
		if err != nil {
			return "", errdefs.Invalid("%v", err)
		}
		bases = append(bases, b)
	}
	parts["files"] = bases
	b, err := json.Marshal(parts)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

// readySnapshot returns the ready snapshot of key, taking it first when
// there is none. One caller per key takes it; the others wait for it.
func (m *Manager) readySnapshot(ctx context.Context, key string, port int, tmplMeta store.Meta, tmplReq wire.CreateRequest, driver vmm.Driver) (snapshot.Record, error) {
	if rec, ok := m.findReady(key); ok {
		return rec, nil
	}
	l, err := lock.Acquire(ctx, filepath.Join(m.store.Layout.LocksDir(), "ready-"+key+".lock"))
	if err != nil {
		return snapshot.Record{}, fmt.Errorf("ready snapshot %s: %w", key, err)
	}
	defer l.Release()
	if rec, ok := m.findReady(key); ok {
		return rec, nil
	}
	tmplMeta.Tags = map[string]string{ReadyTag: key}
	tmplReq.Tags = tmplMeta.Tags
	vm, err := m.finishCreate(ctx, tmplMeta, tmplReq, driver, hooks.Set{}, nil)
	if err != nil {
		return snapshot.Record{}, fmt.Errorf("ready snapshot %s: template vm: %w", key, err)
	}
	log := m.log.With("vm", vm.ID, "ready", key)
	log.Info("booting the template of a ready snapshot", "image", tmplMeta.Disks.Payload, "port", port)
	defer func() {
		if err := m.Delete(context.WithoutCancel(ctx), vm.ID); err != nil && !errdefs.IsNotFound(err) {
			log.Error("delete the template vm of a ready snapshot", "err", err)
		}
	}()
	meta, err := m.store.ReadMeta(vm.ID)
	if err != nil {
		return snapshot.Record{}, err
	}
	wait := func() error { return waitPort(ctx, meta, port, vm.HTTPPort == port) }
	if meta.HealthCheck != nil {
		wait = func() error { return m.waitHealthy(ctx, vm.ID, readyWait) }
	}
	if err := wait(); err != nil {
		return snapshot.Record{}, fmt.Errorf("ready snapshot of %s: template vm %s: %w", tmplMeta.Disks.Payload, vm.ID, err)
	}
	meta, unlock, err := m.lockVM(ctx, "snapshot", vm.ID)
	if err != nil {
		return snapshot.Record{}, err
	}
	rec, err := m.takeSnapshot(ctx, meta, key)
	unlock()
	if err != nil {
		return snapshot.Record{}, fmt.Errorf("ready snapshot of %s: %w", tmplMeta.Disks.Payload, err)
	}
	log.Info("ready snapshot taken", "snapshot", rec.ID, "bytes", rec.SizeBytes)
	m.dropStaleReady(rec)
	return rec, nil
}

// findReady returns the newest ready snapshot of key.
func (m *Manager) findReady(key string) (snapshot.Record, bool) {
	recs, err := m.snaps.List()
	if err != nil {
		return snapshot.Record{}, false
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Ready == key {
			return recs[i], true
		}
	}
	return snapshot.Record{}, false
}

// dropStaleReady deletes the ready snapshots of the same image made under
// another key: the image, a disk, the kernel or the shape changed since.
// One being restored from right now stays, and goes the next time.
func (m *Manager) dropStaleReady(fresh snapshot.Record) {
	recs, err := m.snaps.List()
	if err != nil {
		return
	}
	for _, r := range recs {
		if r.Ready != "" && r.Ready != fresh.Ready && r.Disks.Payload == fresh.Disks.Payload && r.VMM == fresh.VMM {
			if err := m.snaps.Delete(r.ID); err != nil {
				m.log.Warn("stale ready snapshot not deleted", "snapshot", r.ID, "err", err)
				continue
			}
			m.log.Info("stale ready snapshot deleted", "snapshot", r.ID, "image", r.Disks.Payload)
		}
	}
}

// waitPort waits until the guest of meta accepts a TCP connection on port,
// from inside the VM's network namespace, as the forwarder reaches it; for
// an HTTP port, until it answers a request.
func waitPort(ctx context.Context, meta store.Meta, port int, isHTTP bool) error {
	ctx, cancel := context.WithTimeout(ctx, readyWait)
	defer cancel()
	addr := net.JoinHostPort(meta.GuestIP, strconv.Itoa(port))
	var last error
	for {
		last = probe(ctx, meta.Netns, addr, isHTTP)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("port %d did not answer within %s: %v", port, readyWait, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// probe connects to addr inside netns; for HTTP it sends a request and
// waits for the first byte of an answer.
func probe(ctx context.Context, netns, addr string, isHTTP bool) error {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := vmnet.DialInNetns(dctx, netns, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if !isHTTP {
		return nil
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return err
	}
	b := make([]byte, 1)
	_, err = c.Read(b)
	return err
}
