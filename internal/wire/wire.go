// Package wire holds the REST API's request and response documents: what
// clients send and receive, in one place, apart from how the daemon stores
// VMs. A JSON tag here is the public contract; the record (internal/store)
// may change shape without changing the API, and the other way round.
//
// It imports only the standard library, so the client and anything that
// speaks the API link none of the daemon's machinery.
package wire

import (
	"encoding/json"
	"time"
)

// NameTag is the tag that names a VM (a DNS label, unique on the host).
const NameTag = "name"

// CreateRequest is the body of POST /v1/vms.
type CreateRequest struct {
	// VMM overrides the host's driver for this VM: "firecracker" or "qemu".
	VMM string `json:"vmm,omitempty"`

	Kernel      string `json:"kernel,omitempty"`
	Initrd      string `json:"initrd,omitempty"`
	Rootfs      string `json:"rootfs,omitempty"`
	AgentDisk   string `json:"agentDisk,omitempty"`
	PayloadDisk string `json:"payloadDisk,omitempty"`
	EnvDisk     string `json:"envDisk,omitempty"`
	DataDisk    string `json:"dataDisk,omitempty"`

	VCPU   int `json:"vcpu,omitempty"`
	MemMiB int `json:"memMiB,omitempty"`

	Ports    []Port `json:"ports,omitempty"`
	HTTPPort int    `json:"httpPort,omitempty"`

	Tags     map[string]string `json:"tags,omitempty"`
	Metadata json.RawMessage   `json:"metadata,omitempty"`

	AutoStart bool `json:"autoStart,omitempty"`
	// Restart is the VM's restart policy: no (the default), always,
	// on-failure or on-failure:N.
	Restart  string            `json:"restart,omitempty"`
	BootArgs string            `json:"bootArgs,omitempty"`
	ExtraEnv map[string]string `json:"extraEnv,omitempty"`
	// Argv replaces what the payload runs (the image's entrypoint and cmd,
	// from its payload disk); empty runs the image's own. It travels to
	// the guest on its kernel command line, like extraEnv.
	Argv  []string        `json:"argv,omitempty"`
	Hooks json.RawMessage `json:"hooks,omitempty"`

	// Bridge selects the earlier generation's network mode: the tap joins an
	// existing host bridge and the guest gets a static address.
	Bridge *BridgeRequest `json:"bridge,omitempty"`

	// Snapshot restores the new VM from a snapshot (its id) instead of
	// booting it: the snapshot decides the VMM, kernel, disks, vCPUs and
	// memory; the request gives the VM its own identity (tags, ports,
	// extraEnv, hooks). With autoStart the guest resumes at once.
	Snapshot string `json:"snapshot,omitempty"`
	// Ready starts the VM from its image's ready snapshot, taking that
	// snapshot first when there is none yet (see ReadyRequest). Needs a
	// payloadDisk and autoStart.
	Ready *ReadyRequest `json:"ready,omitempty"`

	// HealthCheck checks the running VM's guest (docs/health.md).
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
}

// HealthCheck is a VM's health check: exactly one of HTTP, TCP and Exec,
// and its timing (0 takes the default).
type HealthCheck struct {
	HTTP *HTTPHealthCheck `json:"http,omitempty"`
	TCP  *TCPHealthCheck  `json:"tcp,omitempty"`
	Exec *ExecHealthCheck `json:"exec,omitempty"`
	// IntervalSeconds between checks (default 10, 1..3600).
	IntervalSeconds int `json:"intervalSeconds,omitempty"`
	// TimeoutSeconds of one check (default 2, 1..300).
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
	// Retries is how many failed checks in a row make the VM unhealthy
	// (default 3, 1..100).
	Retries int `json:"retries,omitempty"`
	// StartPeriodSeconds after a start during which failed checks do not
	// count (default 0, 0..3600).
	StartPeriodSeconds int `json:"startPeriodSeconds,omitempty"`
}

// HTTPHealthCheck passes when GET Path on Port (default the VM's
// httpPort) answers with a status 200..399.
type HTTPHealthCheck struct {
	Port int    `json:"port,omitempty"`
	Path string `json:"path"`
}

// TCPHealthCheck passes when Port accepts a connection.
type TCPHealthCheck struct {
	Port int `json:"port"`
}

// ExecHealthCheck passes when Argv, run in the guest by its agent, exits 0.
type ExecHealthCheck struct {
	Argv []string `json:"argv"`
}

// Health is what a running VM's health check found.
type Health struct {
	// Status is starting (since the VM's last start, until a check
	// passes), ready or unhealthy.
	Status string    `json:"status"`
	Since  time.Time `json:"since"`
	// Failures counts the failed checks in a row.
	Failures  int                `json:"failures"`
	LastCheck *HealthCheckResult `json:"lastCheck,omitempty"`
	// Message says what the daemon does about an unhealthy VM.
	Message string `json:"message,omitempty"`
}

// HealthCheckResult is one check's outcome.
type HealthCheckResult struct {
	At         time.Time `json:"at"`
	OK         bool      `json:"ok"`
	DurationMs int64     `json:"durationMs"`
	// Output is the check's error, or an exec check's output, cut short.
	Output string `json:"output,omitempty"`
}

// Words of Health.Status.
const (
	HealthStarting  = "starting"
	HealthReady     = "ready"
	HealthUnhealthy = "unhealthy"
)

// ReadyRequest asks for a VM started from its image's ready snapshot: a
// snapshot taken of a VM of the same image and shape once its service
// answered on Port. The snapshot is taken from a VM of its own (no tags,
// ports or extraEnv of any caller) and replaced when the image, kernel,
// base disks or shape change.
type ReadyRequest struct {
	// Port is the guest TCP port whose answer means ready; default the
	// VM's httpPort.
	Port int `json:"port,omitempty"`
}

// SnapshotRequest is the body of POST /v1/vms/{id}/snapshots.
type SnapshotRequest struct {
	// Stop stops the VM once the snapshot is taken instead of resuming it.
	Stop bool `json:"stop,omitempty"`
}

// Snapshot is the document of one snapshot.
type Snapshot struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`
	// Source is the VM it was taken of (which may be gone since).
	Source SnapshotSource `json:"source"`
	VMM    string         `json:"vmm"`
	// VMMVersion is the VMM's version; only that version restores it.
	VMMVersion string `json:"vmmVersion"`
	// Shape is what a VM restored from it must match: machine, CPU model,
	// vCPUs, memory and devices.
	Shape  string `json:"shape"`
	VCPU   int    `json:"vcpu"`
	MemMiB int    `json:"memMiB"`
	Kernel string `json:"kernel"`
	Disks  Disks  `json:"disks"`
	// SizeBytes is what the snapshot takes on disk (its files' sizes).
	SizeBytes int64          `json:"sizeBytes"`
	Files     []SnapshotFile `json:"files"`
	// DurationMs is how long the guest was paused to take it.
	DurationMs int64 `json:"durationMs"`
	// Ready is the image key when this is an image's ready snapshot.
	Ready string `json:"ready,omitempty"`
}

// SnapshotSource names the VM a snapshot was taken of.
type SnapshotSource struct {
	VM   string `json:"vm"`
	Name string `json:"name,omitempty"`
}

// SnapshotFile is one file of a snapshot with its SHA-256, checked before
// every restore.
type SnapshotFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// SnapshotList is the body of GET /v1/snapshots.
type SnapshotList struct {
	Snapshots []Snapshot `json:"snapshots"`
	Count     int        `json:"count"`
}

// BridgeRequest configures bridge mode.
type BridgeRequest struct {
	Name      string `json:"name"`
	GuestIP   string `json:"guestIP"`
	GatewayIP string `json:"gatewayIP"`
	Netmask   string `json:"netmask"`
	MAC       string `json:"mac,omitempty"` // generated from the id when empty
}

// Port publishes Host on the host to Guest inside the VM.
type Port struct {
	Guest    int    `json:"guest"`
	Host     int    `json:"host"`
	Protocol string `json:"protocol"` // "tcp" or "udp"
}

// VM is the document the API returns for one VM.
type VM struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`
	Name      string    `json:"name,omitempty"`
	VMM       string    `json:"vmm"`
	VCPU      int       `json:"vcpu"`
	MemMiB    int       `json:"memMiB"`
	HTTPPort  int       `json:"httpPort,omitempty"`
	AutoStart bool      `json:"autoStart"`
	// Restart is the VM's restart policy; Restarts counts the automatic
	// restarts the supervisor made (since the unit was last started, for
	// systemd; for the detached supervisor, since the VM was started) and
	// those the daemon made of the VM for being unhealthy (since it was
	// started on request).
	Restart  string `json:"restart"`
	Restarts int    `json:"restarts"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd,omitempty"`
	Disks    Disks  `json:"disks"`
	// State is the VM's state in one word: running, paused, stopped, or
	// the service manager's word while it changes (activating,
	// deactivating, failed); unknown when neither the service manager nor
	// the VMM can tell.
	State    string            `json:"state"`
	Service  Service           `json:"service"`
	VMMState VMMState          `json:"vmmState"`
	Network  Network           `json:"network"`
	Paths    Paths             `json:"paths"`
	Metadata json.RawMessage   `json:"metadata,omitempty"`
	Tags     map[string]string `json:"tags,omitempty"`
	// Snapshot is the snapshot the VM was restored from.
	Snapshot string `json:"snapshot,omitempty"`
	// LastRun says how the VM's last run ended; only in the document of
	// one VM that is stopped or failed, and not when it never ran.
	LastRun *LastRun `json:"lastRun,omitempty"`
	// HealthCheck is the VM's health check; Health what it found, while
	// the VM runs (absent without a check).
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
	Health      *Health      `json:"health,omitempty"`
}

// LastRun is why a VM's last run ended: what the service manager saw of the
// VMM, and what the guest's console said.
type LastRun struct {
	// Result is the unit's, in systemd's words: success, exit-code,
	// signal, core-dump, timeout; empty when the service manager forgot.
	Result string `json:"result,omitempty"`
	// ExitCode is the VMM's exit status; Signal the signal (KILL, SEGV, …)
	// that ended it.
	ExitCode *int      `json:"exitCode,omitempty"`
	Signal   string    `json:"signal,omitempty"`
	EndedAt  time.Time `json:"endedAt,omitzero"`
	// Reason in one word: kernel-panic, out-of-memory, init-error,
	// payload-exit, stopped, vmm-signal, vmm-exit, stop-timeout, unknown.
	Reason string `json:"reason"`
	// Message says it in a sentence, with the guest's own words.
	Message string `json:"message,omitempty"`
	// GaveUp says the VM's restart policy gave up after this run
	// (on-failure:N had made its N restarts, the VM's restarts): the VM stays
	// down until it is started. Message then says so too.
	GaveUp bool `json:"gaveUp,omitempty"`
	// InitExitCode is the status mergen-init powered the guest off with
	// (the payload's, or its own: 127 entrypoint not found, 78 bad user,
	// environment or metadata, 70 guest set-up failed); InitMessage its
	// error.
	InitExitCode *int   `json:"initExitCode,omitempty"`
	InitMessage  string `json:"initMessage,omitempty"`
	// ConsoleTail is the last console lines of the run, control characters
	// escaped.
	ConsoleTail []string `json:"consoleTail,omitempty"`
}

// Words of LastRun.Reason.
const (
	ReasonKernelPanic = "kernel-panic"
	ReasonOOM         = "out-of-memory"
	ReasonInitError   = "init-error"
	ReasonPayloadExit = "payload-exit"
	ReasonStopped     = "stopped"
	ReasonVMMSignal   = "vmm-signal"
	ReasonVMMExit     = "vmm-exit"
	ReasonStopTimeout = "stop-timeout"
	ReasonUnknown     = "unknown"
	// ReasonReadinessTimeout: the VM's health check never passed after a
	// start (an unhealthy event's reason, and its health message).
	ReasonReadinessTimeout = "readiness-timeout"
)

// VMList is the body of GET /v1/vms.
type VMList struct {
	VMs   []VM `json:"vms"`
	Count int  `json:"count"`
}

// Disks are the host paths of the VM's block devices; empty means not
// attached.
type Disks struct {
	Rootfs  string `json:"rootfs"`
	Agent   string `json:"agentDisk,omitempty"`
	Payload string `json:"payloadDisk,omitempty"`
	Env     string `json:"envDisk,omitempty"`
	Data    string `json:"dataDisk,omitempty"`
}

// Service is what the service manager knows about the VM's unit, in
// systemd's vocabulary whichever supervisor runs it.
type Service struct {
	Available   bool   `json:"available"`   // the service manager answers
	Unit        string `json:"unit"`        // <prefix>@<id>.service
	Active      bool   `json:"active"`      // ActiveState == "active"
	ActiveState string `json:"activeState"` // active|inactive|failed|activating|deactivating
	SubState    string `json:"subState"`    // e.g. running, dead, failed, start-pre, stop
	MainPID     int    `json:"mainPID"`     // the VMM, 0 when not running
}

// Words of VM.State and VMMState.State.
const (
	StateRunning = "running"
	StatePaused  = "paused"
	StateStopped = "stopped"
)

// VMMState is what the VMM's socket says.
type VMMState struct {
	SocketPath    string `json:"socketPath"`
	SocketPresent bool   `json:"socketPresent"`
	// State is what the VMM answers on its socket: "running", "paused"
	// (POST /v1/vms/{id}/pause), or its own word for anything else;
	// absent when the socket is absent or the VMM does not answer at once.
	State string `json:"state,omitempty"`
	// Accelerator is how the guest's CPU runs: "kvm" (hardware) or "tcg"
	// (QEMU's software emulation, many times slower); empty when vm.json
	// cannot be read. AcceleratorNote says why, for TCG.
	Accelerator     string `json:"accelerator,omitempty"`
	AcceleratorNote string `json:"acceleratorNote,omitempty"`
}

// Network is the VM's addressing.
type Network struct {
	GuestIP   string  `json:"guestIP"`
	Gateway   string  `json:"gateway"`
	PrefixLen int     `json:"prefixLen"`
	MAC       string  `json:"mac"`
	Ports     []Port  `json:"ports"`
	TapName   string  `json:"tapName"`
	Netns     string  `json:"netns,omitempty"`
	Bridge    *Bridge `json:"bridge,omitempty"`
}

// Bridge is the bridge a VM in bridge mode is attached to.
type Bridge struct {
	Name    string `json:"name"`
	Netmask string `json:"netmask"`
}

// Paths are the host paths that belong to one VM.
type Paths struct {
	ConfigDir  string `json:"configDir"`
	VMConfig   string `json:"vmConfig"`
	Meta       string `json:"meta"`
	Hooks      string `json:"hooks"`
	Env        string `json:"env"`
	RunDir     string `json:"runDir"`
	Socket     string `json:"socket"`     // VMM API socket (Firecracker API or QMP)
	PIDFile    string `json:"pidFile"`    // VMM pid and start time
	Lock       string `json:"lock"`       // per-VM lock file
	DataDir    string `json:"dataDir"`    // per-VM data
	ConsoleLog string `json:"consoleLog"` // guest serial console output
}

// Error is the body of every error answer.
type Error struct {
	Error string `json:"error"`
}

// ShortID is the first 8 characters of an id: how the CLI shows VMs and one
// of the labels the forwarder accepts.
func ShortID(id string) string {
	if len(id) < 8 {
		return id
	}
	return id[:8]
}

// Stats is the body of GET /v1/vms/{id}/stats: what a VM uses now, as the
// host sees it. Counters are totals since the VMM (or the tap) started.
type Stats struct {
	ID      string `json:"id"`
	Running bool   `json:"running"`
	// VMMPID is the VMM's process; CPUSeconds its user and system time,
	// RSSBytes its resident memory (the guest's touched memory included).
	VMMPID     int     `json:"vmmPID,omitempty"`
	CPUSeconds float64 `json:"cpuSeconds"`
	RSSBytes   int64   `json:"rssBytes"`
	// The tap's counters: Rx is what the guest sent, Tx what it received.
	NetRxBytes   uint64 `json:"netRxBytes"`
	NetTxBytes   uint64 `json:"netTxBytes"`
	NetRxPackets uint64 `json:"netRxPackets"`
	NetTxPackets uint64 `json:"netTxPackets"`
	// DiskBytes is what the VM's own files take on the host's disk (its
	// data directory: data disk copy, console log, restore files).
	DiskBytes int64 `json:"diskBytes"`
}
