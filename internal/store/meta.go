package store

import (
	"encoding/json"
	"time"
)

// File names inside a VM's config directory (MGR_CONFIG_ROOT/<id>/).
const (
	FileVMConfig       = "vm.json"   // the VMM's own configuration (Firecracker config-file format for Firecracker)
	FileMeta           = "meta.json" // manager metadata, see Meta
	FileHooks          = "hooks.json"
	FileLifecycleHooks = "lifecycle-hooks.json" // optional stage extensions
	FileEnv            = "env"                  // service-manager environment file
)

// Meta is meta.json: everything the manager, the lifecycle stages and the
// forwarder need to know about one VM. It is written once at create time and
// rewritten atomically when it changes; readers never see a partial file.
type Meta struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`

	// VMM names the driver that runs this VM ("firecracker" or "qemu").
	VMM      string `json:"vmm"`
	VCPU     int    `json:"vcpu"`
	MemMiB   int    `json:"memMiB"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd,omitempty"`
	BootArgs string `json:"bootArgs"`
	Disks    Disks  `json:"disks"`

	Ports    []Port `json:"ports"`
	HTTPPort int    `json:"httpPort,omitempty"`

	// Network. In the default (namespace) mode every VM has its own network
	// namespace Netns holding TapName; GuestIP is unique across the host and
	// Gateway is the tap's address inside the namespace.
	GuestIP   string  `json:"guestIP"`
	Gateway   string  `json:"gateway"`
	PrefixLen int     `json:"prefixLen"`
	MAC       string  `json:"mac"`
	TapName   string  `json:"tapName"`
	Netns     string  `json:"netns,omitempty"`
	Bridge    *Bridge `json:"bridge,omitempty"` // set in bridge mode; Netns is then empty

	Tags      map[string]string `json:"tags,omitempty"`
	Metadata  json.RawMessage   `json:"metadata,omitempty"`
	ExtraEnv  map[string]string `json:"extraEnv,omitempty"`
	AutoStart bool              `json:"autoStart"`

	Paths Paths `json:"paths"`
}

// Disks are absolute host paths of the block devices given to the VM. Empty
// means "not attached".
type Disks struct {
	Rootfs  string `json:"rootfs"`
	Agent   string `json:"agentDisk,omitempty"`
	Payload string `json:"payloadDisk,omitempty"`
	Env     string `json:"envDisk,omitempty"`
	Data    string `json:"dataDisk,omitempty"`
}

// Port publishes Host on the host to Guest inside the VM.
type Port struct {
	Guest    int    `json:"guest"`
	Host     int    `json:"host"`
	Protocol string `json:"protocol"` // "tcp" or "udp"
}

// Bridge is the earlier generation's network mode: the tap joins an existing
// host bridge (for example docker0) and the guest has a static address.
type Bridge struct {
	Name    string `json:"name"`
	Netmask string `json:"netmask"` // dotted quad, e.g. 255.255.255.0
}

// Paths are the host paths that belong to one VM.
type Paths struct {
	ConfigDir  string `json:"configDir"`
	VMConfig   string `json:"vmConfig"`
	Meta       string `json:"meta"`
	Hooks      string `json:"hooks"`
	Env        string `json:"env"`
	RunDir     string `json:"runDir"`     // MGR_RUN_ROOT/<id>
	Socket     string `json:"socket"`     // VMM API socket (Firecracker API or QMP)
	PIDFile    string `json:"pidFile"`    // VMM pid
	Lock       string `json:"lock"`       // per-VM lock file
	DataDir    string `json:"dataDir"`    // MGR_DATA_ROOT/vms/<id>
	ConsoleLog string `json:"consoleLog"` // guest serial console output
	VMMLog     string `json:"vmmLog"`     // the VMM's own log
}

// ShortID is the first 8 characters of the id: used for the namespace and
// tap names (which Linux limits to 15 bytes) and as a forwarder label.
func ShortID(id string) string {
	if len(id) < 8 {
		return id
	}
	return id[:8]
}

// NetnsName, TapName and VethName derive the per-VM link names from the id.
func NetnsName(id string) string { return "mergen-" + ShortID(id) }
func TapName(id string) string   { return "tap-" + ShortID(id) }
func VethName(id string) string  { return "veth-" + ShortID(id) }
