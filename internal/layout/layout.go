// Package layout is the host's file layout: the only code that joins a root
// directory with a VM id. Every path of a VM — its config directory and the
// files in it, its run directory with the VMM socket and pid file, its
// console log, its locks and the detached supervisor's files — comes from
// Layout.VM, so the daemon, the lifecycle stages, the supervisors and the
// unit templates cannot disagree about where a VM lives.
//
// Paths are not stored in the VM record: they are a function of the roots
// and the id. Moving a root (MGR_CONFIG_ROOT, MGR_RUN_ROOT, MGR_DATA_ROOT)
// while VMs run is not supported; stop them first.
package layout

import "path/filepath"

// Layout is rooted at the three directories of the on-disk layout.
type Layout struct {
	ConfigRoot string // one directory per VM: MGR_CONFIG_ROOT
	RunRoot    string // sockets, pid files, supervisor state: MGR_RUN_ROOT
	DataRoot   string // per-VM data under vms/<id>, base assets, images: MGR_DATA_ROOT
}

// File names inside a VM's config directory.
const (
	FileVMConfig       = "vm.json"   // the VMM's own configuration
	FileMeta           = "meta.json" // the VM record
	FileHooks          = "hooks.json"
	FileLifecycleHooks = "lifecycle-hooks.json" // optional stage extensions
	FileEnv            = "env"                  // service-manager environment file
	FileHealth         = "health.json"          // the health check's state (internal/health)
)

// VM are the host paths of one VM.
type VM struct {
	ID string

	ConfigDir      string // <config>/<id>
	VMConfig       string // vm.json
	Meta           string // meta.json
	Hooks          string // hooks.json
	LifecycleHooks string // lifecycle-hooks.json
	Env            string // env
	// Health is what the VM's health check found (internal/health),
	// written by the daemon while the VM runs and read by the forwarder.
	Health string

	RunDir  string // <run>/<id>
	Socket  string // the VMM's API socket (Firecracker API, QEMU QMP)
	PIDFile string // the VMM's pid
	// Paused is present while the manager has the guest paused: written
	// under the VM's lock by pause, removed by resume, stop, and by the
	// pre-start and post-stop stages. Lists read it instead of asking
	// every VMM.
	Paused string
	// AgentSecret is the key the host proves to the guest's exec agent
	// (execclient.EnsureSecret): 0600, the host's alone. Losing it costs
	// nothing: the next exec delivers a new one.
	AgentSecret string

	// The detached supervisor's files, in the run directory.
	SupervisorPID   string
	SupervisorState string
	SupervisorLog   string
	SupervisorLock  string // held by the supervising process for its life
	SupervisorOp    string // serialises Start, Stop and Forget callers

	Lock      string // lifecycle lock: one start, stop or delete at a time
	StageLock string // held by stages while they change network and runtime files

	DataDir    string // <data>/vms/<id>
	ConsoleLog string // the guest's serial console
	// RestoreDir holds the snapshot files (links or copies) of a VM
	// restored from a snapshot until its first start has consumed them;
	// while it exists, the start stage resumes the snapshot instead of
	// booting. RestoredDisk is the VM's own copy of the snapshot's data
	// disk.
	RestoreDir    string
	RestoredDisk  string
	ConsoleLogOld string // the console log before its last rotation
}

// VM returns the paths of VM id. id is not validated here: callers validate
// ids at their boundary (a UUID), and the unit templates pass systemd's
// instance specifier "%i" to get paths relative to the unit's instance.
//
// A list builds these for every VM several times: the three directories
// are joined (and cleaned) once, the names below them are appended.
func (l Layout) VM(id string) VM {
	cfg := l.ConfigDir(id)
	run := filepath.Join(l.RunRoot, id)
	data := filepath.Join(l.DataRoot, "vms", id)
	locks := l.LocksDir()
	return VM{
		ID:             id,
		ConfigDir:      cfg,
		VMConfig:       under(cfg, FileVMConfig),
		Meta:           under(cfg, FileMeta), // MetaFile
		Hooks:          under(cfg, FileHooks),
		LifecycleHooks: under(cfg, FileLifecycleHooks),
		Env:            under(cfg, FileEnv),
		Health:         under(cfg, FileHealth),

		RunDir:  run,
		Socket:  under(run, "vmm.sock"),
		PIDFile: under(run, "vmm.pid"),
		Paused:  under(run, "paused"),

		AgentSecret: under(run, "agent.secret"),

		SupervisorPID:   under(run, "supervisor.pid"),
		SupervisorState: under(run, "supervisor.state.json"), // SupervisorStateFile
		SupervisorLog:   under(run, "supervisor.log"),
		SupervisorLock:  under(run, "supervisor.lock"),
		SupervisorOp:    under(run, "supervisor.op.lock"),

		Lock:      filepath.Join(locks, id+".lock"),
		StageLock: filepath.Join(locks, id+".stage.lock"),

		DataDir:       data,
		ConsoleLog:    under(data, "console.log"),
		ConsoleLogOld: under(data, "console.log.1"),
		RestoreDir:    under(data, "restore"),
		RestoredDisk:  under(data, "data.ext4"),
	}
}

// ConfigDir is VM(id).ConfigDir alone: a create or delete names it
// several times and needs none of the VM's other paths there.
func (l Layout) ConfigDir(id string) string { return filepath.Join(l.ConfigRoot, id) }

// MetaFile is VM(id).Meta alone: a list reads every VM's record and needs
// none of its other paths there.
func (l Layout) MetaFile(id string) string { return under(l.ConfigDir(id), FileMeta) }

// SupervisorStateFile is VM(id).SupervisorState alone, for the detached
// supervisor's state of every VM in a list.
func (l Layout) SupervisorStateFile(id string) string {
	return under(filepath.Join(l.RunRoot, id), "supervisor.state.json")
}

// ListFiles are VM(id)'s Meta, VMConfig, Socket and Paused alone: what a
// list looks at for every VM.
func (l Layout) ListFiles(id string) (meta, vmConfig, socket, paused string) {
	cfg, run := l.ConfigDir(id), filepath.Join(l.RunRoot, id)
	return under(cfg, FileMeta), under(cfg, FileVMConfig), under(run, "vmm.sock"), under(run, "paused")
}

// under is filepath.Join(dir, name) for a clean dir (filepath.Join's
// result) and a plain file name, without cleaning the result again.
func under(dir, name string) string {
	if dir == "" || dir == "." || dir[len(dir)-1] == filepath.Separator {
		return filepath.Join(dir, name)
	}
	return dir + string(filepath.Separator) + name
}

// Snapshot are the host paths of one snapshot.
type Snapshot struct {
	ID     string
	Dir    string // <data>/snapshots/<sid>: the record and the snapshot's files
	Record string // snapshot.json
	Disks  string // disks/: copies of the source VM's writable disks
	// Lock is shared by restores reading the snapshot and taken alone by
	// its delete.
	Lock string
}

// SnapshotsDir holds every snapshot (<data>/snapshots), and their staging
// and trash directories under the hidden prefixes.
func (l Layout) SnapshotsDir() string { return filepath.Join(l.DataRoot, "snapshots") }

// Snapshot returns the paths of snapshot sid.
func (l Layout) Snapshot(sid string) Snapshot {
	dir := filepath.Join(l.SnapshotsDir(), sid)
	return Snapshot{
		ID:     sid,
		Dir:    dir,
		Record: filepath.Join(dir, "snapshot.json"),
		Disks:  filepath.Join(dir, "disks"),
		Lock:   filepath.Join(l.LocksDir(), "snapshot-"+sid+".lock"),
	}
}

// VMsDataDir holds every VM's data directory (<data>/vms); RunRoot holds
// their run directories (VM.RunDir).
func (l Layout) VMsDataDir() string { return filepath.Join(l.DataRoot, "vms") }

// LocksDir holds the per-VM lock files.
func (l Layout) LocksDir() string { return filepath.Join(l.RunRoot, "locks") }

// AllocLock is the host-wide lock for allocating guest IPs and host ports.
func (l Layout) AllocLock() string { return filepath.Join(l.ConfigRoot, ".alloc.lock") }

// Generation is the counter file bumped before every change to the set of
// VMs.
func (l Layout) Generation() string { return filepath.Join(l.ConfigRoot, ".generation") }

// Hidden names in the config root: a VM being created is written under a
// staging directory and renamed into place; a VM being deleted is renamed
// to a trash name first. Neither is ever a VM.
const (
	StagingPrefix = ".tmp-"
	TrashPrefix   = ".trash-"
)

// StagingPattern is the os.MkdirTemp pattern of a VM being created.
func (l Layout) StagingPattern(id string) string { return StagingPrefix + id + "-" }

// Trash is where VM id's config directory goes on delete; stamp makes the
// name unique.
func (l Layout) Trash(id, stamp string) string {
	return filepath.Join(l.ConfigRoot, TrashPrefix+id+"-"+stamp)
}

// Events are the paths of the host's event journal (package events): every
// VM's lifecycle transitions, appended by the daemon and by the lifecycle
// stages, in one order.
type Events struct {
	Dir        string // <data>/events
	Journal    string // journal.jsonl: one event per line
	JournalOld string // journal.1.jsonl: the journal before its last rotation
	Lock       string // held while an event is appended or the journal rotated
}

// Events returns the paths of the event journal.
func (l Layout) Events() Events {
	dir := filepath.Join(l.DataRoot, "events")
	return Events{
		Dir:        dir,
		Journal:    filepath.Join(dir, "journal.jsonl"),
		JournalOld: filepath.Join(dir, "journal.1.jsonl"),
		Lock:       filepath.Join(dir, "journal.lock"),
	}
}
