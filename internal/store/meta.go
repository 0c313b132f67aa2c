package store

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/health"
	"github.com/mergenhq/mergen/internal/layout"
)

// File names inside a VM's config directory (MGR_CONFIG_ROOT/<id>/).
const (
	FileVMConfig       = layout.FileVMConfig // the VMM's own configuration (Firecracker config-file format for Firecracker)
	FileMeta           = layout.FileMeta     // the VM record, see Meta
	FileHooks          = layout.FileHooks
	FileLifecycleHooks = layout.FileLifecycleHooks // optional stage extensions
	FileEnv            = layout.FileEnv            // service-manager environment file
)

// RecordVersion is the version of meta.json this code writes. Version 1
// (no "version" field) stored the VM's paths and left the driver settings
// to the environment of whoever ran the VMM; version 2 stores the driver
// settings and no paths (they come from the layout).
const RecordVersion = 2

// Meta is meta.json, the VM record: every decision made at create that the
// manager, the lifecycle stages and the forwarder need later. It is written
// once at create time and rewritten atomically when it changes; readers
// never see a partial file. Stages read it; they do not re-decide from their
// own environment.
type Meta struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`

	// VMM names the driver that runs this VM ("firecracker" or "qemu") and
	// Driver its settings, resolved at create (binary paths, jailer).
	VMM    string        `json:"vmm"`
	Driver config.Driver `json:"driver"`
	// VMMUID and VMMGID are the VM's own unprivileged ids (from
	// MGR_VMM_UID_RANGE, unique among the host's VMs, reused after a
	// delete): the VMM runs as them and owns the VM's tap, so an escaped
	// VMM cannot touch another VM's files. Zero in records written before
	// they existed: such VMs' VMMs run as root, as before.
	VMMUID   int    `json:"vmmUID,omitempty"`
	VMMGID   int    `json:"vmmGID,omitempty"`
	VCPU     int    `json:"vcpu"`
	MemMiB   int    `json:"memMiB"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd,omitempty"`
	BootArgs string `json:"bootArgs"`
	Disks    Disks  `json:"disks"`
	// DiskRoots maps each file of Files, by its field name (kernel,
	// rootfs, dataDisk, …), to the directory it was checked below at
	// create: an allowed disk root, or an operator's default's own
	// directory. The start stage opens the file below it without
	// following links. Records written before it existed have none; their
	// files are opened below their own directories.
	DiskRoots map[string]string `json:"diskRoots,omitempty"`

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

	Tags     map[string]string `json:"tags,omitempty"`
	Metadata json.RawMessage   `json:"metadata,omitempty"`
	ExtraEnv map[string]string `json:"extraEnv,omitempty"`
	// Argv replaces the payload disk's argv (wire.CreateRequest.Argv).
	Argv      []string `json:"argv,omitempty"`
	AutoStart bool     `json:"autoStart"`
	// Restart is the VM's restart policy ("" is no), carried out by its
	// supervisor.
	Restart string `json:"restart,omitempty"`
	// Snapshot is the snapshot the VM was restored from; its first start
	// resumes it (see layout.VM.RestoreDir), later ones boot its disks.
	Snapshot string `json:"snapshot,omitempty"`
	// HealthCheck is the VM's health check, run by the daemon while the
	// VM runs; nil without one.
	HealthCheck *health.Check `json:"healthCheck,omitempty"`
}

// clone returns a copy of m that shares no map, slice or pointer with it.
// TestMetaCloneCoversEveryReference fails when a field it must copy is
// added.
func (m Meta) clone() Meta {
	m.DiskRoots = cloneMap(m.DiskRoots)
	if m.Ports != nil {
		m.Ports = append(make([]Port, 0, len(m.Ports)), m.Ports...)
	}
	if m.Bridge != nil {
		b := *m.Bridge
		m.Bridge = &b
	}
	m.Tags = cloneMap(m.Tags)
	if m.Metadata != nil {
		m.Metadata = append(make(json.RawMessage, 0, len(m.Metadata)), m.Metadata...)
	}
	m.ExtraEnv = cloneMap(m.ExtraEnv)
	if m.Argv != nil {
		m.Argv = append(make([]string, 0, len(m.Argv)), m.Argv...)
	}
	m.HealthCheck = m.HealthCheck.Clone()
	return m
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// VMMIDs are the uid and gid the VMM runs as, which own the VM's tap: the
// jailer's explicit MGR_JAILER_UID/GID when the record has them, else the
// VM's own ids; 0, 0 (root) for records from before either existed.
func (m Meta) VMMIDs() (uid, gid int, err error) {
	if m.VMM == "firecracker" && m.Driver.Jailer && (m.Driver.JailerUID != "" || m.Driver.JailerGID != "") {
		if uid, err = strconv.Atoi(m.Driver.JailerUID); err != nil || uid < 0 {
			return 0, 0, fmt.Errorf("jailer uid %q is not a numeric id", m.Driver.JailerUID)
		}
		if gid, err = strconv.Atoi(m.Driver.JailerGID); err != nil || gid < 0 {
			return 0, 0, fmt.Errorf("jailer gid %q is not a numeric id", m.Driver.JailerGID)
		}
		return uid, gid, nil
	}
	return m.VMMUID, m.VMMGID, nil
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

// File is one host file the VM is given, by the name of its field in a
// create request and the record.
type File struct {
	Field, Path string
}

// Files lists the kernel, the initrd and the disks that are set, in that
// order.
func (m Meta) Files() []File {
	var out []File
	for _, f := range []File{
		{"kernel", m.Kernel}, {"initrd", m.Initrd},
		{"rootfs", m.Disks.Rootfs}, {"agentDisk", m.Disks.Agent}, {"payloadDisk", m.Disks.Payload},
		{"envDisk", m.Disks.Env}, {"dataDisk", m.Disks.Data},
	} {
		if f.Path != "" {
			out = append(out, f)
		}
	}
	return out
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
