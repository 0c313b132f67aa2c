// Package manager is the orchestration layer between the API and the parts
// that do the work: it validates requests, allocates addresses and ports,
// writes VMs into the store, runs manager hooks, and starts and stops VMs
// through the supervisor. It holds no state that is not derived from the
// store: a daemon killed at any point restarts into a consistent view.
package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/alloc"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/hooks"
	"github.com/mergenhq/mergen/internal/jsondoc"
	"github.com/mergenhq/mergen/internal/snapshot"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/vmnet"
	"github.com/mergenhq/mergen/internal/wire"
)

// Manager runs the VM operations. It is safe for concurrent use.
type Manager struct {
	cfg     config.Config
	store   *store.Store
	snaps   *snapshot.Store
	metrics *metrics
	bus     *events.Bus
	log     *slog.Logger
	// life ends when Run's context does: event watchers are let go then.
	life       context.Context
	lifeCancel context.CancelFunc
	probe      alloc.Probe
	// disks say where a VM's kernel, initrd and disks may come from.
	disks diskRules

	// sup is nil when no supervisor can run on this host; supErr says why.
	sup    supervisor.Supervisor
	supErr error

	// changes writes new VMs into the store and takes deleted ones out,
	// concurrent ones together.
	changes *store.Committer

	// The allocation index, derived from the store and valid while the
	// store's generation equals indexGen. Guarded by the store's
	// allocation lock (LockAlloc), which the creates' plans and
	// Committed run under.
	index     *alloc.Index
	names     map[string]string
	dataDisks map[string]string
	labels    map[string]labelOwner
	shortIDs  map[string]string
	indexGen  uint64

	newID func() string // store.NewID; tests make ids collide

	health healthWatchers

	// docs are the VM documents of the last list, kept encoded.
	docs listDocs
}

// Options are the manager's collaborators.
type Options struct {
	Config        config.Config
	Store         *store.Store
	Log           *slog.Logger
	Supervisor    supervisor.Supervisor // nil: start/stop answer unavailable with SupervisorErr
	SupervisorErr error
	// Probe checks that a host port is free on the host; nil means the real
	// bind probe.
	Probe alloc.Probe
}

// New returns a manager over the store.
func New(o Options) *Manager {
	m := &Manager{cfg: o.Config, store: o.Store, snaps: snapshot.New(o.Store.Layout), log: o.Log, probe: o.Probe, disks: newDiskRules(o.Config), sup: o.Supervisor, supErr: o.SupervisorErr, newID: store.NewID}
	if m.probe == nil {
		m.probe = alloc.BindProbe
	}
	m.metrics = newMetrics(m)
	m.changes = o.Store.NewCommitter(store.CommitterOptions{Committed: m.committed})
	m.health.ctx, m.health.stop = context.WithCancel(context.Background())
	m.health.w = map[string]*healthWatcher{}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.bus = events.NewBus(events.NewJournal(o.Store.Layout.Events()), m.log)
	m.life, m.lifeCancel = context.WithCancel(context.Background())
	if m.sup == nil && m.supErr == nil {
		m.supErr = errors.New("no supervisor configured")
	}
	return m
}

// Store exposes the store (read-only use by the API for stored files).
func (m *Manager) Store() *store.Store { return m.store }

// Create validates the request, allocates, writes the VM and runs onCreate
// hooks; with autoStart it also starts the VM. Nothing is left behind when it
// fails.
func (m *Manager) Create(ctx context.Context, req wire.CreateRequest) (vm wire.VM, err error) {
	op := opCreate
	if req.Snapshot != "" || req.Ready != nil {
		op = opRestore
	}
	defer func(start time.Time) { m.metrics.observe(op, start, err) }(time.Now())
	// A restore compares the shape as given with its snapshot's, before
	// normalize fills in the defaults.
	vcpu, mem := req.VCPU, req.MemMiB
	if err := normalize(&req); err != nil {
		return wire.VM{}, err
	}
	vmHooks, err := hooks.ParseRequest(req.Hooks, hooks.ParseOptions{AllowCommands: m.cfg.AllowVMCommands})
	if err != nil {
		return wire.VM{}, errdefs.Invalid("%w", err)
	}
	if req.Snapshot != "" {
		req.VCPU, req.MemMiB = vcpu, mem
		return m.createFromSnapshot(ctx, req, vmHooks)
	}
	if req.Ready != nil {
		return m.createReady(ctx, req, vmHooks)
	}
	meta, driver, err := m.fromRequest(req)
	if err != nil {
		return wire.VM{}, err
	}
	return m.finishCreate(ctx, meta, req, driver, vmHooks, nil)
}

// fromRequest makes the record of a VM booted from the request's disks.
func (m *Manager) fromRequest(req wire.CreateRequest) (store.Meta, vmm.Driver, error) {
	disks, kernel, initrd, diskRoots, err := m.resolveDisks(req)
	if err != nil {
		return store.Meta{}, nil, err
	}
	driverName := req.VMM
	if driverName == "" {
		driverName = m.cfg.VMM
	}
	if driverName == "" {
		driverName = vmm.DefaultName(m.cfg.Driver)
	}
	// The host's driver settings, pinned into the record: the start stage
	// launches the VMM with these, whatever the environment says later.
	settings := vmm.Resolve(driverName, m.cfg.Driver)
	driver, err := vmm.New(driverName, settings)
	if err != nil {
		return store.Meta{}, nil, errdefs.Invalid("vmm: %w", err)
	}

	id := m.newID()
	meta := store.Meta{
		ID:          id,
		CreatedAt:   time.Now().UTC().Truncate(time.Millisecond),
		VMM:         driver.Name(),
		Driver:      settings,
		VCPU:        req.VCPU,
		MemMiB:      req.MemMiB,
		Kernel:      kernel,
		Initrd:      initrd,
		Disks:       disks,
		DiskRoots:   diskRoots,
		HTTPPort:    req.HTTPPort,
		Tags:        req.Tags,
		Metadata:    req.Metadata,
		ExtraEnv:    req.ExtraEnv,
		Argv:        req.Argv,
		AutoStart:   req.AutoStart,
		Restart:     req.Restart,
		HealthCheck: recordHealthCheck(req.HealthCheck),
		MAC:         vmnet.MACFor(id),
		TapName:     store.TapName(id),
	}
	if req.Bridge != nil {
		meta.Bridge = &store.Bridge{Name: req.Bridge.Name, Netmask: req.Bridge.Netmask}
		meta.GuestIP = req.Bridge.GuestIP
		meta.Gateway = req.Bridge.GatewayIP
		meta.PrefixLen, _ = maskBits(req.Bridge.Netmask)
		if req.Bridge.MAC != "" {
			meta.MAC = req.Bridge.MAC
		}
	} else {
		meta.Netns = store.NetnsName(id)
		meta.Gateway = alloc.Gateway(m.cfg.GuestCIDR).String()
		meta.PrefixLen = m.cfg.GuestCIDR.Bits()
	}
	return meta, driver, nil
}

// finishCreate allocates and writes the VM, runs its onCreate hooks and,
// with autoStart, starts it; prepare (optional) runs once the VM's id is
// final, under the allocation lock, to put files in its data directory.
// Nothing is left behind when it fails.
func (m *Manager) finishCreate(ctx context.Context, meta store.Meta, req wire.CreateRequest, driver vmm.Driver, vmHooks hooks.Set, prepare func(*store.Meta) error) (wire.VM, error) {
	vmConfig, err := m.allocateAndWrite(ctx, &meta, req, driver, vmHooks, prepare)
	if err != nil {
		return wire.VM{}, err
	}
	id := meta.ID
	log := m.log.With("vm", id)
	log.Info("vm created", "guestIP", meta.GuestIP, "vmm", meta.VMM, "ports", len(meta.Ports))

	var attrs map[string]string
	if meta.Snapshot != "" {
		attrs = map[string]string{"snapshot": meta.Snapshot}
	}
	ev := m.emit(ctx, meta, events.Created, "", "", attrs)
	if err := m.fire(ctx, ev, meta, &vmHooks); err != nil {
		log.Warn("strict onCreate hook failed, rolling back", "err", err)
		if derr := m.remove(context.WithoutCancel(ctx), meta); derr != nil {
			log.Error("roll back of create failed", "err", derr)
		} else {
			m.emit(ctx, meta, events.Deleted, "hook", "a strict onCreate hook failed: "+err.Error(), nil)
		}
		return wire.VM{}, fmt.Errorf("create vm %s: %w", id, err)
	}
	if req.AutoStart {
		if err := m.Start(ctx, id); err != nil {
			// The VM and its supervisor's log go with the delete: keep
			// what the stages said in the daemon's own log (never in the
			// answer: it may hold what hooks printed).
			log.Warn("autoStart failed, deleting the VM", "err", err, "stages", logTail(m.store.Paths(id).SupervisorLog, 2048))
			if derr := m.Delete(context.WithoutCancel(ctx), id); derr != nil && !errdefs.IsNotFound(derr) {
				log.Error("roll back of create failed", "err", derr)
			}
			return wire.VM{}, err
		}
		// Starting may have changed more than the live state.
		return m.Get(ctx, id)
	}
	// The VM as created, from the record and vm.json as written: reading
	// them back would only decode them again.
	return m.created(meta, vmConfig), nil
}

// resolveDisks applies the MGR_DEFAULT_* fallbacks and checks every path
// (see diskRules). Paths from the request must lie below the allowed disk
// roots; defaults come from the operator's configuration and are trusted to
// lie where they are, but must exist, and never in the daemon's state —
// the optional ones (initrd, agent and env disks) are simply left out when
// absent. roots maps each field set to the root its path was checked
// below, for the record: the start stage opens the file there.
func (m *Manager) resolveDisks(req wire.CreateRequest) (d store.Disks, kernel, initrd string, roots map[string]string, err error) {
	rules := m.disks
	roots = map[string]string{}
	fields := []struct {
		name, given, def, env string
		required, writable    bool
		dst                   *string
	}{
		{"kernel", req.Kernel, m.cfg.DefaultKernel, "MGR_DEFAULT_KERNEL", true, false, &kernel},
		{"initrd", req.Initrd, m.cfg.DefaultInitrd, "MGR_DEFAULT_INITRD", false, false, &initrd},
		{"rootfs", req.Rootfs, m.cfg.DefaultRootfs, "MGR_DEFAULT_ROOTFS", true, false, &d.Rootfs},
		{"agentDisk", req.AgentDisk, m.cfg.DefaultAgent, "MGR_DEFAULT_AGENT_DISK", false, false, &d.Agent},
		{"payloadDisk", req.PayloadDisk, "", "", false, false, &d.Payload},
		{"envDisk", req.EnvDisk, m.cfg.DefaultEnvDisk, "MGR_DEFAULT_ENV_DISK", false, false, &d.Env},
		{"dataDisk", req.DataDisk, "", "", false, true, &d.Data},
	}
	for _, f := range fields {
		if f.given != "" {
			p, root, err := rules.resolve(f.name, f.given, f.writable)
			if err != nil {
				return d, "", "", nil, err
			}
			*f.dst, roots[f.name] = p, root
			continue
		}
		if f.def == "" {
			if f.required {
				return d, "", "", nil, errdefs.Invalid("%s: required (no default: set %s)", f.name, f.env)
			}
			continue
		}
		st, err := os.Stat(f.def)
		switch {
		case err == nil && st.Mode().IsRegular():
			p, root, err := rules.placeDefault(f.name, f.env, f.def, st)
			if err != nil {
				return d, "", "", nil, err
			}
			*f.dst, roots[f.name] = p, root
		case f.required:
			return d, "", "", nil, errdefs.Invalid("%s: not given and the default %s (%s) is not usable; build the base assets (`make assets`) or pass %s", f.name, f.def, f.env, f.name)
		}
	}
	return d, kernel, initrd, roots, nil
}

// allocateAndWrite allocates the guest IP and host ports and writes the VM
// directory, through the Committer: the allocation runs under the
// allocation lock, after those of the creates committed before it, and the
// VM is in the store before the lock is released, so that the next
// allocation, in this process or another, sees it. It returns the VM's
// vm.json as written.
func (m *Manager) allocateAndWrite(ctx context.Context, meta *store.Meta, req wire.CreateRequest, driver vmm.Driver, vmHooks hooks.Set, prepare func(*store.Meta) error) (vmConfig []byte, err error) {
	if prepare != nil {
		// The data directory exists before the VM does: a failure removes
		// it, and a crash leaves an orphan the start-up sweep removes.
		prepared, given := false, prepare
		prepare = func(meta *store.Meta) error {
			prepared = true
			return given(meta)
		}
		defer func() {
			if err != nil && prepared {
				os.RemoveAll(m.store.Paths(meta.ID).DataDir)
			}
		}()
	}
	var files map[string][]byte
	_, err = m.changes.Create(ctx, func(gen uint64) (string, map[string][]byte, error) {
		var err error
		files, err = m.allocate(gen, meta, req, driver, vmHooks, prepare)
		return meta.ID, files, err
	})
	if err != nil {
		return nil, err
	}
	return files[store.FileVMConfig], nil
}

// allocate decides the VM's guest IP, VMM uid and host ports, checks that
// its name, routing labels, short id and data disk are its own, and renders
// its files; the index then holds the VM, for the next plan of the group.
// prepare (optional) runs once the VM's id is final. It is a store.Plan of
// the store at generation gen: it runs under the allocation lock.
func (m *Manager) allocate(gen uint64, meta *store.Meta, req wire.CreateRequest, driver vmm.Driver, vmHooks hooks.Set, prepare func(*store.Meta) error) (map[string][]byte, error) {
	ix, err := m.indexAt(gen)
	if err != nil {
		return nil, fmt.Errorf("create vm %s: %w", meta.ID, err)
	}
	if name := req.Tags[NameTag]; name != "" {
		if owner := ix.Names[name]; owner != "" {
			return nil, errdefs.Conflict("tags.name: %q is already the name of vm %s", name, owner)
		}
	}
	for _, k := range m.cfg.LabelTags {
		v := strings.ToLower(req.Tags[k])
		if v == "" {
			continue
		}
		if owner, taken := ix.Labels[v]; taken {
			return nil, errdefs.Conflict("tags.%s: %q already routes to vm %s (its %s tag); the values of the routing tags (%s) must be unique across VMs",
				k, req.Tags[k], owner.id, owner.key, strings.Join(m.cfg.LabelTags, ", "))
		}
	}
	// The short id names the VM's namespace and tap and is a forwarder
	// label: a new VM must not share it with another.
	for ix.ShortIDs[store.ShortID(meta.ID)] != "" {
		renameVM(meta, m.newID(), req.Bridge)
	}
	// A data disk is one VM's own: no other VM gets it, writable or not.
	for _, d := range meta.Files() {
		if owner := ix.DataDisks[d.Path]; owner != "" {
			if d.Field == "dataDisk" {
				return nil, errdefs.Conflict("dataDisk: %s is already attached to vm %s", d.Path, owner)
			}
			return nil, errdefs.Conflict("%s: %s is the data disk of vm %s", d.Field, d.Path, owner)
		}
	}
	if meta.Bridge == nil {
		ip, err := ix.GuestIP(m.cfg.GuestCIDR)
		if err != nil {
			return nil, err
		}
		meta.GuestIP = ip.String()
	}
	uid, err := ix.VMMUID(m.cfg.VMMUIDs.Start, m.cfg.VMMUIDs.End)
	if err != nil {
		return nil, err
	}
	meta.VMMUID, meta.VMMGID = uid, uid
	ports, err := ix.HostPorts(recordPorts(req.Ports), alloc.Range{Start: m.cfg.PortStart, End: m.cfg.PortEnd}, m.probe)
	if err != nil {
		return nil, err
	}
	meta.Ports = ports
	if meta.Ports == nil {
		meta.Ports = []store.Port{}
	}
	meta.BootArgs = store.BootArgs(*meta, req.BootArgs)
	if prepare != nil {
		if err := prepare(meta); err != nil {
			return nil, err
		}
	}
	files, err := m.renderFiles(*meta, driver, vmHooks)
	if err != nil {
		return nil, err
	}
	ix.Add(*meta)
	return files, nil
}

// committed keeps the allocation index in step with the store after a
// group of creates (see store.CommitterOptions): it holds every VM of the
// group, valid at the generation the group left; when some planned VM was
// not stored, it is rebuilt from the store on the next use.
func (m *Manager) committed(gen uint64, complete bool) {
	if complete {
		m.indexGen = gen
	} else {
		m.index = nil
	}
}

// renderFiles produces the VM directory's files.
func (m *Manager) renderFiles(meta store.Meta, driver vmm.Driver, vmHooks hooks.Set) (map[string][]byte, error) {
	metaJSON, err := store.MarshalMeta(meta)
	if err != nil {
		return nil, err
	}
	vmConfig, err := driver.Config(store.Spec(meta, m.store.Paths(meta.ID)))
	if err != nil {
		return nil, errdefs.Invalid("render %s config for vm %s: %w", driver.Name(), meta.ID, err)
	}
	envFile, err := m.store.EnvFile(meta)
	if err != nil {
		return nil, fmt.Errorf("render env file of vm %s: %w", meta.ID, err)
	}
	hooksJSON, err := jsondoc.Encode(vmHooks)
	if err != nil {
		return nil, fmt.Errorf("encode hooks of vm %s: %w", meta.ID, err)
	}
	return map[string][]byte{
		store.FileMeta:     metaJSON,
		store.FileVMConfig: vmConfig,
		store.FileHooks:    hooksJSON,
		store.FileEnv:      envFile,
	}, nil
}

// index is the allocation index with lookups the create path needs.
type index struct {
	*alloc.Index
	Names     map[string]string     // name tag → id
	DataDisks map[string]string     // data disk path → id
	Labels    map[string]labelOwner // lower-cased routing tag value → owner
	ShortIDs  map[string]string     // short id → id
	labelTags []string
}

// labelOwner is the VM and the tag key a routing label belongs to.
type labelOwner struct{ id, key string }

func (ix index) Add(meta store.Meta) {
	ix.Index.Add(meta)
	if n := meta.Tags[NameTag]; n != "" {
		ix.Names[n] = meta.ID
	}
	if meta.Disks.Data != "" {
		ix.DataDisks[meta.Disks.Data] = meta.ID
	}
	for _, k := range ix.labelTags {
		if v := strings.ToLower(meta.Tags[k]); v != "" {
			if _, taken := ix.Labels[v]; !taken {
				ix.Labels[v] = labelOwner{meta.ID, k}
			}
		}
	}
	ix.ShortIDs[store.ShortID(meta.ID)] = meta.ID
}

func (ix index) Remove(meta store.Meta) {
	ix.Index.Remove(meta)
	if n := meta.Tags[NameTag]; n != "" && ix.Names[n] == meta.ID {
		delete(ix.Names, n)
	}
	if ix.DataDisks[meta.Disks.Data] == meta.ID {
		delete(ix.DataDisks, meta.Disks.Data)
	}
	for _, k := range ix.labelTags {
		if v := strings.ToLower(meta.Tags[k]); ix.Labels[v].id == meta.ID {
			delete(ix.Labels, v)
		}
	}
	if ix.ShortIDs[store.ShortID(meta.ID)] == meta.ID {
		delete(ix.ShortIDs, store.ShortID(meta.ID))
	}
}

// indexAt returns the allocation index of the store at generation gen,
// rebuilding it from the store when another process changed the set of
// VMs since it was made. Hold the store's allocation lock (a store.Plan or
// store.Drop is given gen under it).
func (m *Manager) indexAt(gen uint64) (index, error) {
	if m.index != nil && gen == m.indexGen && m.names != nil {
		return index{m.index, m.names, m.dataDisks, m.labels, m.shortIDs, m.cfg.LabelTags}, nil
	}
	metas, err := m.store.List()
	if err != nil {
		// One unreadable VM must not let its IP be handed out twice.
		return index{}, fmt.Errorf("rebuild allocation index: %w", err)
	}
	m.index = alloc.NewIndex(metas)
	m.names = map[string]string{}
	m.dataDisks = map[string]string{}
	m.labels = map[string]labelOwner{}
	m.shortIDs = map[string]string{}
	ix := index{m.index, m.names, m.dataDisks, m.labels, m.shortIDs, m.cfg.LabelTags}
	for _, meta := range metas {
		ix.Add(meta)
	}
	m.indexGen = gen
	return ix, nil
}

func recordPorts(ps []wire.Port) []store.Port {
	out := make([]store.Port, len(ps))
	for i, p := range ps {
		out[i] = store.Port(p)
	}
	return out
}

// renameVM gives a VM being created another id and the names derived from
// it: MAC (unless the caller chose one), tap and namespace.
func renameVM(meta *store.Meta, id string, bridge *wire.BridgeRequest) {
	meta.ID = id
	meta.TapName = store.TapName(id)
	if bridge == nil || bridge.MAC == "" {
		meta.MAC = vmnet.MACFor(id)
	}
	if meta.Netns != "" {
		meta.Netns = store.NetnsName(id)
	}
}

// logTail is the last max bytes of a log file, or "" when it cannot be
// read.
func logTail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	return string(b)
}
