package manager

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/hooks"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/lifecycle"
	"github.com/mergenhq/mergen/internal/proc"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/wire"
)

// document is the API's view of a VM: its record, its paths from the
// layout, and what the service manager and the VMM's socket say now.
// A stopped or failed VM's document says how its last run ended (lists do
// not: it costs a query of the service manager and a read of the console).
func (m *Manager) document(ctx context.Context, meta store.Meta) wire.VM {
	svc := m.serviceState(ctx, meta.ID)
	v := m.documentWith(ctx, meta, svc, true)
	v.LastRun = m.lastRun(ctx, meta.ID, svc)
	return v
}

// documentWith builds the document from the service state svc. askVMM
// says whether the VMM is asked over its socket (one VM: GET, pause); a
// list does not ask: a VM whose service is active and whose socket is
// present is running, or paused while the pause marker the manager keeps
// (layout's Paused) is present. Without a service manager the VMM is
// always asked: nothing else knows.
func (m *Manager) documentWith(ctx context.Context, meta store.Meta, svc supervisor.State, askVMM bool) wire.VM {
	p := m.store.Paths(meta.ID)
	var ask func() (vmm.State, bool)
	if askVMM || !svc.Available {
		// Only a present socket is asked, with a short timeout
		// (statusTimeout): a document must not wait on a hung VMM.
		ask = func() (vmm.State, bool) { return vmmStatus(ctx, meta, p.Socket) }
	}
	accel, note := vmm.Accelerator(meta.VMM, p.VMConfig)
	return docOf(meta, p, m.liveOf(meta.ID, meta.HealthCheck != nil, accelerator{accel, note}, livePathsOf(p), svc, ask))
}

// created is the document of a VM just created and not started: its record
// as written, the accelerator of its vm.json as rendered (vmConfig), and a
// unit never started. Nothing has run, so neither the service manager nor
// the console log is asked, and vm.json is not read back.
func (m *Manager) created(meta store.Meta, vmConfig []byte) wire.VM {
	var svc supervisor.State
	if m.sup != nil {
		svc = m.sup.Unstarted(meta.ID)
	}
	p := m.store.Paths(meta.ID)
	accel, note := vmm.AcceleratorIn(meta.VMM, vmConfig)
	return docOf(meta, p, m.liveOf(meta.ID, meta.HealthCheck != nil, accelerator{accel, note}, livePathsOf(p), svc, nil))
}

// live is what a VM's document says beyond its record and its paths: what
// the service manager, the VMM's socket, the pause marker, vm.json (the
// accelerator) and the health checker say now. Comparable: a list keeps a
// VM's encoded document while its live part stays equal (listdocs.go).
type live struct {
	state    string
	service  wire.Service
	vmm      wire.VMMState
	restarts int
	// health is made anew on every look (a new pointer), so a document
	// with health never equals the last one: it is encoded every time.
	health *wire.Health
}

// livePaths are the files the live part is read from, beside vm.json (see
// accelerator).
type livePaths struct{ socket, paused string }

func livePathsOf(p layout.VM) livePaths {
	return livePaths{socket: p.Socket, paused: p.Paused}
}

// accelerator is what a VM's vm.json says of its guest CPU (vmm.Accelerator).
type accelerator struct{ name, note string }

// liveOf reads the live part of VM id's document, whose record has a
// health check or not, from its accelerator, the files p and the service
// state svc; ask, when not nil, asks the VMM over its socket (see
// documentWith).
func (m *Manager) liveOf(id string, hasCheck bool, accel accelerator, p livePaths, svc supervisor.State, ask func() (vmm.State, bool)) live {
	var v wire.VM // the fields stateWord reads
	v.VMMState.SocketPath = p.socket
	// Software emulation is never silent: the document says so.
	v.VMMState.Accelerator, v.VMMState.AcceleratorNote = accel.name, accel.note
	if isSocket(p.socket) {
		v.VMMState.SocketPresent = true
		switch {
		case ask != nil:
			if st, ok := ask(); ok {
				v.VMMState.State = vmmStateWord(st)
			}
		case svc.ActiveState == "active":
			v.VMMState.State = wire.StateRunning
			if _, err := os.Lstat(p.paused); err == nil {
				v.VMMState.State = wire.StatePaused
			}
		}
	}
	v.Service = wire.Service{
		Available: svc.Available, Unit: svc.Unit, Active: svc.Active,
		ActiveState: svc.ActiveState, SubState: svc.SubState, MainPID: svc.MainPID,
	}
	l := live{state: stateWord(v), service: v.Service, vmm: v.VMMState}
	var healthRestarts int
	l.health, healthRestarts = m.healthDoc(id, hasCheck, l.state)
	l.restarts = svc.Restarts + healthRestarts
	return l
}

// isSocket reports whether path is a unix socket, with one stat and no
// FileInfo (a list looks at every VM's).
func isSocket(path string) bool {
	var st syscall.Stat_t
	for {
		err := syscall.Stat(path, &st)
		if err == syscall.EINTR {
			continue
		}
		return err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFSOCK
	}
}

// docOf is the document of the VM of record meta and paths p, whose live
// part is l.
func docOf(meta store.Meta, p layout.VM, l live) wire.VM {
	v := wire.VM{
		ID: meta.ID, CreatedAt: meta.CreatedAt, Name: meta.Tags[NameTag], VMM: meta.VMM,
		VCPU: meta.VCPU, MemMiB: meta.MemMiB, HTTPPort: meta.HTTPPort, AutoStart: meta.AutoStart,
		Restart: cmp.Or(meta.Restart, supervisor.RestartNo), Restarts: l.restarts,
		Kernel: meta.Kernel, Initrd: meta.Initrd, Disks: wire.Disks(meta.Disks),
		State: l.state, Service: l.service, VMMState: l.vmm,
		Network: wire.Network{
			GuestIP: meta.GuestIP, Gateway: meta.Gateway, PrefixLen: meta.PrefixLen, MAC: meta.MAC,
			Ports: wirePorts(meta.Ports), TapName: meta.TapName, Netns: meta.Netns,
		},
		Paths:    wirePaths(p),
		Metadata: meta.Metadata, Tags: meta.Tags, Snapshot: meta.Snapshot,
		HealthCheck: wireHealthCheck(meta.HealthCheck), Health: l.health,
	}
	if meta.Bridge != nil {
		v.Network.Bridge = &wire.Bridge{Name: meta.Bridge.Name, Netmask: meta.Bridge.Netmask}
	}
	return v
}

func wirePaths(p layout.VM) wire.Paths {
	return wire.Paths{
		ConfigDir: p.ConfigDir, VMConfig: p.VMConfig, Meta: p.Meta, Hooks: p.Hooks, Env: p.Env,
		RunDir: p.RunDir, Socket: p.Socket, PIDFile: p.PIDFile, Lock: p.Lock,
		DataDir: p.DataDir, ConsoleLog: p.ConsoleLog,
	}
}

func wirePorts(ps []store.Port) []wire.Port {
	out := make([]wire.Port, len(ps))
	for i, p := range ps {
		out[i] = wire.Port(p)
	}
	return out
}

func (m *Manager) serviceState(ctx context.Context, id string) supervisor.State {
	if m.sup == nil {
		return supervisor.State{Available: false}
	}
	st, err := m.sup.State(ctx, id)
	if err != nil {
		m.log.Debug("service state unavailable", "vm", id, "err", err)
		return supervisor.State{Available: false}
	}
	return st
}

// Get returns one VM.
func (m *Manager) Get(ctx context.Context, id string) (wire.VM, error) {
	meta, err := m.store.ReadMeta(id)
	if err != nil {
		return wire.VM{}, err
	}
	return m.document(ctx, meta), nil
}

// List returns all VMs, oldest first.
func (m *Manager) List(ctx context.Context) ([]wire.VM, error) {
	metas, err := m.store.List()
	if err != nil {
		m.log.Warn("some VMs could not be read", "err", err)
	}
	sort.Slice(metas, func(i, j int) bool {
		if !metas[i].CreatedAt.Equal(metas[j].CreatedAt) {
			return metas[i].CreatedAt.Before(metas[j].CreatedAt)
		}
		return metas[i].ID < metas[j].ID
	})
	// One query of the service manager for all VMs, none per VM.
	ids := make([]string, len(metas))
	for i, meta := range metas {
		ids[i] = meta.ID
	}
	states := map[string]supervisor.State{}
	if m.sup != nil {
		var err error
		if states, err = m.sup.States(ctx, ids); err != nil {
			m.log.Debug("service states unavailable", "err", err)
		}
	}
	out := make([]wire.VM, 0, len(metas))
	for _, meta := range metas {
		out = append(out, m.documentWith(ctx, meta, states[meta.ID], false))
	}
	return out, nil
}

// supervisorReady checks that the service manager can run VMs here.
func (m *Manager) supervisorReady(ctx context.Context) error {
	if err := m.supervisorErr(); err != nil {
		return err
	}
	if err := m.sup.Check(ctx); err != nil {
		return errdefs.Unavailable("service manager %s: %w", m.sup.Name(), err)
	}
	return nil
}

// supervisorErr says why there is no service manager, or nil.
func (m *Manager) supervisorErr() error {
	if m.sup == nil {
		return errdefs.Unavailable("no service manager to run VMs: %w", m.supErr)
	}
	return nil
}

// ready checks that the VM can be started on this host.
func (m *Manager) ready(ctx context.Context, meta store.Meta) error {
	if err := m.supervisorReady(ctx); err != nil {
		return err
	}
	driver, err := vmm.New(meta.VMM, meta.Driver)
	if err != nil {
		return errdefs.Unavailable("vmm %s: %w", meta.VMM, err)
	}
	if err := driver.Check(); err != nil {
		return errdefs.Unavailable("vmm %s: %w", meta.VMM, err)
	}
	return nil
}

// lockVM takes the VM's lifecycle lock and loads its metadata; the VM may
// have been deleted while we waited.
func (m *Manager) lockVM(ctx context.Context, op, id string) (store.Meta, func(), error) {
	if err := store.ValidateID(id); err != nil {
		return store.Meta{}, nil, err
	}
	if !m.store.Exists(id) {
		return store.Meta{}, nil, errdefs.NotFound("vm %s not found", id)
	}
	lctx, cancel := context.WithTimeout(ctx, m.cfg.CommandTimeout+m.cfg.StopTimeout)
	defer cancel()
	unlock, err := m.store.Lock(lctx, id)
	if err != nil {
		return store.Meta{}, nil, fmt.Errorf("%s vm %s: %w", op, id, err)
	}
	meta, err := m.store.ReadMeta(id)
	if err != nil {
		unlock()
		return store.Meta{}, nil, err
	}
	return meta, unlock, nil
}

// Start starts the VM; starting a running VM succeeds.
func (m *Manager) Start(ctx context.Context, id string) (err error) {
	defer func(start time.Time) { m.metrics.observe(opStart, start, err) }(time.Now())
	begun := time.Now()
	meta, unlock, err := m.lockVM(ctx, "start", id)
	if err != nil {
		return err
	}
	defer unlock()
	// Starting a running VM changes nothing, its health included.
	running := meta.HealthCheck != nil && m.serviceState(ctx, id).Active
	if err := m.start(ctx, meta); err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	m.watchHealth(meta, !running, begun)
	m.log.Info("vm started", "vm", id)
	return nil
}

// Stop stops the VM gracefully; stopping a stopped VM succeeds. A strict
// onStop hook runs first and can veto the stop.
func (m *Manager) Stop(ctx context.Context, id string) (err error) {
	defer func(start time.Time) { m.metrics.observe(opStop, start, err) }(time.Now())
	meta, unlock, err := m.lockVM(ctx, "stop", id)
	if err != nil {
		return err
	}
	defer unlock()
	m.unwatchHealth(id, true)
	if err := m.stop(ctx, meta); err != nil {
		return fmt.Errorf("stop vm %s: %w", id, err)
	}
	m.log.Info("vm stopped", "vm", id)
	return nil
}

// Restart stops and starts the VM under one hold of its lock, with the
// hooks of both: no other operation can slip in between. Its health starts
// over.
func (m *Manager) Restart(ctx context.Context, id string) (err error) {
	return m.restart(ctx, id, false)
}

// restart is Restart; forHealth says the VM's health checker restarts it
// for being unhealthy, and carries its health on itself.
func (m *Manager) restart(ctx context.Context, id string, forHealth bool) (err error) {
	defer func(start time.Time) { m.metrics.observe(opRestart, start, err) }(time.Now())
	begun := time.Now()
	meta, unlock, err := m.lockVM(ctx, "restart", id)
	if err != nil {
		return err
	}
	defer unlock()
	if !forHealth {
		m.unwatchHealth(id, true)
	}
	if err := m.stop(ctx, meta); err != nil {
		return fmt.Errorf("restart vm %s: %w", id, err)
	}
	if forHealth {
		m.announce(meta, events.Restarted, "unhealthy", fmt.Sprintf("started again by the daemon for failing its health check (restart policy %s)", meta.Restart))
	}
	if err := m.start(ctx, meta); err != nil {
		return fmt.Errorf("restart vm %s: %w", id, err)
	}
	if forHealth {
		m.log.Info("vm restarted for being unhealthy", "vm", id)
		return nil
	}
	m.watchHealth(meta, true, begun)
	m.log.Info("vm restarted", "vm", id)
	return nil
}

// start runs the VM's unit and, once it runs, fires the starting event's
// onStart hooks; a strict one that fails stops the VM again. Starting a
// running VM changes nothing and records nothing. Hold the VM's lock.
func (m *Manager) start(ctx context.Context, meta store.Meta) error {
	if err := m.ready(ctx, meta); err != nil {
		return err
	}
	if m.running(ctx, meta.ID) {
		return nil
	}
	ev := m.emit(ctx, meta, events.Starting, "", "", nil)
	if err := m.sup.Start(ctx, meta.ID); err != nil {
		return err
	}
	if err := m.fire(ctx, ev, meta, nil); err != nil {
		m.log.Warn("strict onStart hook failed, stopping the VM again", "vm", meta.ID, "err", err)
		if serr := m.sup.Stop(context.WithoutCancel(ctx), meta.ID); serr != nil {
			m.log.Error("stop after failed onStart hook", "vm", meta.ID, "err", serr)
		}
		return err
	}
	return nil
}

// stop records the stopping event, fires its onStop hooks (a strict one
// vetoes: the stream then says vetoed) and stops the unit. Stopping a VM
// that does not run records nothing. Hold the VM's lock.
func (m *Manager) stop(ctx context.Context, meta store.Meta) error {
	if err := m.supervisorReady(ctx); err != nil {
		return err
	}
	if m.running(ctx, meta.ID) {
		ev := m.emit(ctx, meta, events.Stopping, "", "", nil)
		if err := m.fire(ctx, ev, meta, nil); err != nil {
			m.emit(ctx, meta, events.Vetoed, "hook", err.Error(), map[string]string{"op": "stop"})
			return err
		}
	}
	if err := m.sup.Stop(ctx, meta.ID); err != nil {
		return err
	}
	m.clearPaused(meta.ID)
	return nil
}

// running reports whether the VM's unit is active or on its way there, as
// its service manager says; unknown counts as not running.
func (m *Manager) running(ctx context.Context, id string) bool {
	if m.sup == nil {
		return false
	}
	st, err := m.sup.State(ctx, id)
	if err != nil {
		return false
	}
	switch st.ActiveState {
	case "active", "activating", "reloading":
		return true
	}
	return false
}

// Delete stops the VM, runs onDelete hooks (a strict one can veto), tears
// down its network and removes its files, allocations and unit state.
func (m *Manager) Delete(ctx context.Context, id string) (err error) {
	defer func(start time.Time) { m.metrics.observe(opDelete, start, err) }(time.Now())
	meta, unlock, err := m.lockVM(ctx, "delete", id)
	if err != nil {
		return err
	}
	defer unlock()
	ev := m.emit(ctx, meta, events.Deleting, "", "", nil)
	if err := m.fire(ctx, ev, meta, nil); err != nil {
		m.emit(ctx, meta, events.Vetoed, "hook", err.Error(), map[string]string{"op": "delete"})
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	m.unwatchHealth(id, true)
	// A VM that was never started (or whose VMM is gone) can be deleted even
	// when no service manager is usable; a possibly running one cannot.
	// The service manager is not checked first (a check of systemd lists
	// its unit files): its stop says whether it is usable.
	stopErr := m.supervisorErr()
	if stopErr == nil {
		stopErr = m.sup.Stop(ctx, id)
		if stopErr != nil && !errors.Is(stopErr, supervisor.ErrUnavailable) {
			return fmt.Errorf("delete vm %s: stop: %w", id, stopErr)
		}
	}
	if stopErr != nil {
		if vmmProc, _ := proc.ReadPIDFile(m.store.Paths(id).PIDFile); vmmProc.Alive() {
			return fmt.Errorf("delete vm %s: cannot stop it: %w", id, stopErr)
		}
	}
	if err := m.remove(ctx, meta); err != nil {
		return err
	}
	m.emit(ctx, meta, events.Deleted, "", "", nil)
	m.log.Info("vm deleted", "vm", id)
	return nil
}

// remove undoes a create: delete stages, network, files, allocations.
func (m *Manager) remove(ctx context.Context, meta store.Meta) error {
	id := meta.ID
	// The lifecycle's delete stage runs the delete hooks and tears down the
	// network and runtime files along the same path as post-stop. It runs
	// here, in the daemon: a VM must stay deletable on a host where no
	// service manager (or lifecycle binary) is usable.
	stages := &lifecycle.Runner{Config: m.cfg, Store: m.store, Log: m.log, Out: io.Discard}
	if err := stages.Run(ctx, lifecycle.DeleteStg, id); err != nil {
		return err // names the stage and the VM
	}
	if m.sup != nil {
		if err := m.sup.Forget(ctx, id); err != nil {
			m.log.Warn("forget unit state", "vm", id, "err", err)
		}
	}
	// Under the allocation lock, with the group it is committed in: the
	// index forgets the VM's allocations (Committed then records the
	// generation it is valid for), or is dropped when it cannot be read
	// (the next create builds it again).
	err := m.changes.Remove(ctx, id, func(gen uint64) error {
		if ix, err := m.indexAt(gen); err == nil {
			ix.Remove(meta)
		} else {
			m.index = nil
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.store.RemoveLock(id)
}

// runHooks runs global hooks, then the VM's own, for one event. vmHooks nil
// means read them from the VM's hooks.json.
func (m *Manager) runHooks(ctx context.Context, data hooks.Data, meta store.Meta, vmHooks *hooks.Set) error {
	global, err := hooks.LoadDir(m.cfg.GlobalHooksDir)
	if err != nil {
		m.log.Warn("global hooks unreadable, skipping them", "dir", m.cfg.GlobalHooksDir, "err", err)
	}
	var own hooks.Set
	if vmHooks != nil {
		own = *vmHooks
	} else if b, err := m.store.ReadFile(meta.ID, store.FileHooks); err == nil {
		if own, err = hooks.Parse(b); err != nil {
			m.log.Warn("hooks.json unreadable, skipping", "vm", meta.ID, "err", err)
		}
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		m.log.Warn("hooks.json unreadable, skipping", "vm", meta.ID, "err", err)
	}
	sets := append(global, own)
	for _, set := range sets {
		failed, err := hooks.RunCounted(ctx, m.log, set, data)
		m.metrics.hookFailures.WithLabelValues(string(data.Event)).Add(float64(failed))
		if err != nil {
			// Something the operation depends on is not available: 503.
			return errdefs.Unavailable("%w", err)
		}
	}
	return nil
}

// FindByName returns the VM whose name tag is name.
func (m *Manager) FindByName(ctx context.Context, name string) (wire.VM, error) {
	metas, err := m.store.List()
	if err != nil {
		m.log.Warn("some VMs could not be read", "err", err)
	}
	for _, meta := range metas {
		if meta.Tags[NameTag] == name {
			return m.document(ctx, meta), nil
		}
	}
	return wire.VM{}, errdefs.NotFound("no vm named %q", name)
}
