// Package vmm is the seam between the VM lifecycle and the virtual machine
// monitor that runs a VM. Everything above it speaks of VMs, disks and taps;
// only the drivers here know Firecracker's configuration file and API, or
// QEMU's flags and QMP.
//
// Both drivers live in this one package because New must return them and
// they share the Spec types and validation: split into sub-packages, the
// drivers would import vmm for Spec while vmm imported them for New.
//
// A driver is stateless. Its settings (config.Driver: binary paths, the
// jailer, QEMU's machine and accelerator; see docs/vmm.md) are decided at
// create, stored in the VM's record and handed to New, so the daemon that
// renders vm.json and the lifecycle stage that launches the VMM use the
// same settings whatever the environment says later.
package vmm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unique"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/agentproto"
	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/filecache"
)

// ErrUnavailable marks what is missing on this host to run a driver: its
// binary, a usable /dev/kvm. It is the project's error class, so the API
// answers such errors with 503.
var ErrUnavailable = errdefs.ErrUnavailable

// Drive is a block device given to the guest.
type Drive struct {
	ID   string // unique per VM; Firecracker's drive_id, QEMU's drive id
	Path string // host path of a raw disk image
	// Beneath is the directory Path was checked below when the VM was
	// created (an allowed disk root). Command opens Path below it without
	// following links; empty means Path's own directory.
	Beneath  string
	ReadOnly bool
	Root     bool // the root device: attached first, root= points at it
}

// NIC is the guest's network interface, backed by a tap that already exists
// in the network namespace the VMM runs in.
type NIC struct {
	TapName string
	MAC     string
	// File, when set, is the tap already attached to (vmnet.OpenTap), for
	// a VMM that runs unprivileged: QEMU gets it as an inherited
	// descriptor (-netdev tap,fd=N) instead of opening /dev/net/tun. It
	// joins the launch's files.
	File *os.File
}

// Spec is everything a driver needs to know about one VM.
type Spec struct {
	ID     string
	VCPU   int
	MemMiB int

	Kernel        string
	KernelBeneath string // as Drive.Beneath, for Kernel (and a bzImage beside it)
	Initrd        string
	InitrdBeneath string // as Drive.Beneath, for Initrd
	// BootArgs is the full kernel command line from the manager; drivers
	// append what their machine needs (pci=off, root=).
	BootArgs string

	Drives []Drive // attach order; the guest finds disks by ext4 label anyway
	NIC    *NIC

	SocketPath string // Firecracker API socket / QEMU QMP socket
	WorkDir    string // per-VM run directory (the jailer's chroot lives under it)

	// UID and GID are the VM's own unprivileged ids (the record's vmmUID,
	// vmmGID): the VMM runs as them (QEMU: the start stage drops to them
	// before the exec; Firecracker: the jailer's --uid/--gid unless
	// MGR_JAILER_UID/GID name others). Zero: a record from before they
	// existed, whose VMM runs as root.
	UID, GID int

	// Restore, when set, starts the VMM from a snapshot instead of booting
	// the kernel: the guest resumes where the snapshot left it. Nil: a
	// cold boot.
	Restore *Restore
}

// Restore is a snapshot a VM starts from: the files the driver's Snapshot
// wrote, in the VM's own directory Dir (the daemon links or copies them
// there from the snapshot, so deleting the snapshot never pulls them from
// under a VM). The VM's spec must have the snapshot's shape (Shape).
type Restore struct {
	Dir string
}

// State is what the VMM reports about its guest.
type State struct {
	Running bool
	// Paused: the guest's vCPUs are stopped by Pause (Firecracker's
	// "Paused", QEMU's "paused"); its memory and devices are kept, and
	// Resume continues it where it stopped. Running is then false.
	Paused bool
	State  string // the driver's own word: Running, Paused, Not started, running, paused, prelaunch…
}

// Driver runs VMs with one kind of VMM.
type Driver interface {
	Name() string
	// Check reports what is missing on this host to run VMs with this
	// driver; the error wraps ErrUnavailable.
	Check() error
	// Config renders vm.json. For Firecracker it is Firecracker's own
	// --config-file document. It validates the spec.
	Config(s Spec) ([]byte, error)
	// Command is the VMM process to run, given the path of the vm.json
	// that Config rendered. It opens the kernel, initrd and disks below the
	// directories they were checked in (Spec's Beneath fields) without
	// following links, and gives the VMM those very files: inherited
	// descriptors named /proc/self/fd/N (or, with the jailer, hard links
	// made from the open files). The caller execs it in the VM's network
	// namespace with the serial console on stdout/stderr; the VMM stays in
	// the foreground. It may prepare files the VMM needs (the jailer's
	// chroot, a configuration in WorkDir).
	Command(s Spec, configPath string) (Launch, error)
	// Status asks the running VMM, through its socket, about the guest.
	Status(ctx context.Context, socketPath string) (State, error)
	// Shutdown asks the guest to power off and returns once the request is
	// delivered; the caller waits for the VMM to exit.
	Shutdown(ctx context.Context, socketPath string) error
	// Pause stops the guest's vCPUs, keeping its memory and devices;
	// pausing a paused guest succeeds. Resume continues a paused guest;
	// resuming a running one succeeds. Both return once the VMM has done
	// it (Status then reports Paused, or Running).
	Pause(ctx context.Context, socketPath string) error
	Resume(ctx context.Context, socketPath string) error
	// Snapshot saves the paused guest's memory and device state into dir
	// (an empty directory the caller made) and returns the names of the
	// files it wrote there. The guest must be paused, and stays paused; the
	// caller copies the writable disks while it is.
	Snapshot(ctx context.Context, s Spec, dir string) ([]string, error)
	// Restored finishes a start from Spec.Restore once the VMM answers on
	// its socket: it returns when the guest runs from the snapshot's state
	// (Firecracker: loads the snapshot and resumes; QEMU: waits for its
	// incoming migration to end), or why it cannot.
	Restored(ctx context.Context, s Spec) error
	// Agent connects to mergen-init's agent in the guest over the VMM's
	// host channel (QEMU: a virtio-serial port; Firecracker: vsock), see
	// internal/agentproto.
	Agent(ctx context.Context, s Spec) (net.Conn, error)
	// Console connects to the guest's interactive serial console (a shell
	// mergen-init keeps on the second serial port); the VMM's own serial
	// console stays the console log. ErrUnavailable when the VMM has none.
	Console(ctx context.Context, s Spec) (net.Conn, error)
	// Version is the VMM binary's version as a snapshot records it: a
	// snapshot is restored only by the version that took it.
	Version(ctx context.Context) (string, error)
	// Shape is what must be equal between a snapshot's VM and a VM
	// restored from it — machine, CPU model, vCPUs, memory, the devices in
	// their order — in words an error message can show. Paths, ids and
	// the MAC are not part of it.
	Shape(s Spec) (string, error)
	// Release removes what Command prepared outside the VM's run
	// directory (the jailer's chroot and cgroup) once the VMM has exited;
	// what is already gone is fine.
	Release(s Spec) error
}

// CallAgent sends req to mergen-init's agent in the guest over a new
// connection of d's host channel and waits for the answer, until ctx ends.
// An answer that is not OK is an error too (agentproto.ErrRefused), naming
// what the guest refused.
func CallAgent(ctx context.Context, d Driver, s Spec, req agentproto.Request) error {
	conn, err := d.Agent(ctx, s)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = agentproto.Call(ctx, conn, req)
	return err
}

// Launch is a VMM process to exec: its argv, and the open files it must
// inherit at their own descriptor numbers, which its argv or configuration
// names /proc/self/fd/N. The files have close-on-exec set; whoever execs
// the argv clears it (Inherit) at the last moment, whoever does not closes
// them (Close).
type Launch struct {
	Argv  []string
	Files []*os.File
	// Cred, when set, is who the VMM runs as: the caller switches to it
	// (groups, gid, uid) after it has entered the VM's namespace and set up
	// the standard streams, just before the exec. Everything the VMM needs
	// is by then open (the files above, the console) or owned by it (its
	// tap, the socket directory). Nil: the VMM runs as the caller (root),
	// as the jailer does before it drops to the jail's ids itself.
	Cred *Cred
}

// Cred is a VMM's unprivileged identity.
type Cred struct {
	UID, GID int
	Groups   []int // supplementary groups: the VM's gid, /dev/kvm's group with KVM
}

// Close closes the files.
func (l Launch) Close() {
	for _, f := range l.Files {
		f.Close()
	}
}

// Inherit clears close-on-exec on the files, so that an exec of this
// process passes them on at the same numbers; to be called just before the
// exec. A file at 0, 1 or 2 is refused: the exec's standard streams take
// those numbers.
func (l Launch) Inherit() error {
	for _, f := range l.Files {
		fd := int(f.Fd())
		if fd <= 2 {
			return fmt.Errorf("%s is descriptor %d, which a standard stream takes", f.Name(), fd)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("%s: clear close-on-exec: %w", f.Name(), err)
		}
	}
	return nil
}

// opener opens a spec's files for the VMM, each once, below the directory
// it was checked in, without following links (package beneath).
type opener struct {
	id    string
	files []*os.File
	// uid and gid, when not zero, are the VMM's ids: it reopens the files
	// through /proc/self/fd/N as that user, so a read-only file must be
	// readable by it, and a writable one (the VM's own data disk) is given
	// to it with fchown on the open file, never through a path.
	uid, gid int
}

// open opens path (field names it in errors) below dir, or below path's
// own directory when dir is empty, read-only or writable.
func (o *opener) open(field, path, dir string, writable bool) (*os.File, error) {
	if dir == "" {
		dir = filepath.Dir(path)
	}
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := beneath.Open(dir, filepath.Clean(path), flag)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %s: %w", o.id, field, err)
	}
	o.files = append(o.files, f)
	if o.uid == 0 {
		return f, nil
	}
	if writable {
		if err := f.Chown(o.uid, o.gid); err != nil {
			return nil, fmt.Errorf("vm %s: %s: give %s to the VM's uid %d: %w", o.id, field, path, o.uid, err)
		}
		return f, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("vm %s: %s: %w", o.id, field, err)
	}
	if !readableBy(fi, o.uid, o.gid) {
		return nil, fmt.Errorf("vm %s: %s: %s (mode %v) is not readable by the VM's uid %d, which the VMM runs as: make it readable by others (0644)", o.id, field, path, fi.Mode().Perm(), o.uid)
	}
	return f, nil
}

func (o *opener) close() {
	for _, f := range o.files {
		f.Close()
	}
	o.files = nil
}

// Accelerator reports how a VM's guest CPU runs, from its vm.json:
// Firecracker always uses KVM; QEMU uses what it was rendered with ("kvm"
// or "tcg", software emulation, with the reason). Empty when the file
// cannot be read. vm.json is read again only when it has changed (see
// internal/filecache), so a list costs one stat per QEMU VM.
func Accelerator(name, configPath string) (accel, note string) {
	return accelerator(name, func() (accelInfo, error) { return accels.Load(configPath, decodeAccel) })
}

// AcceleratorIn is Accelerator for a vm.json in hand: one just rendered.
func AcceleratorIn(name string, vmJSON []byte) (accel, note string) {
	return accelerator(name, func() (accelInfo, error) {
		a, _, err := decodeAccel(vmJSON)
		return a, err
	})
}

func accelerator(name string, qemuConfig func() (accelInfo, error)) (accel, note string) {
	switch name {
	case "firecracker":
		return "kvm", ""
	case "qemu":
		a, err := qemuConfig()
		if err != nil {
			return "", ""
		}
		return a.accel, a.note
	}
	return "", ""
}

// accels keeps what each QEMU VM's vm.json says of its accelerator, so a
// list reads and parses vm.json only when it has changed.
var accels filecache.Cache[accelInfo]

type accelInfo struct{ accel, note string }

// decodeAccel reads the accelerator and its reason from a QEMU vm.json.
// They are near its top (qemuConfig's order), so the decoder stops there:
// every create answers with its VM's accelerator, read from the vm.json
// just written, and decoding the whole document (argv, drives) cost most
// of the time a create spent on it (BenchmarkAcceleratorDecode).
func decodeAccel(b []byte) (accelInfo, bool, error) {
	var cfg struct{ Accel, AccelReason string }
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return accelInfo{}, false, fmt.Errorf("vm.json: not a JSON object")
	}
	for found := 0; found < 2 && dec.More(); {
		t, err := dec.Token()
		if err != nil {
			return accelInfo{}, false, fmt.Errorf("vm.json: %w", err)
		}
		var dst any = &json.RawMessage{}
		switch t {
		case "accel":
			dst, found = &cfg.Accel, found+1
		case "accelReason":
			dst, found = &cfg.AccelReason, found+1
		}
		if err := dec.Decode(dst); err != nil {
			return accelInfo{}, false, fmt.Errorf("vm.json: %v: %w", t, err)
		}
	}
	// Kept for every QEMU VM while it exists, and the same for most VMs
	// of a host: one copy of each string (unique), not one per VM.
	if cfg.Accel == "tcg" {
		return accelInfo{"tcg", unique.Make(cfg.AccelReason).Value()}, true, nil
	}
	return accelInfo{unique.Make(cfg.Accel).Value(), ""}, true, nil
}

// Names lists the drivers New knows.
var Names = []string{"firecracker", "qemu"}

// New returns the driver called name with the given settings.
func New(name string, d config.Driver) (Driver, error) {
	switch name {
	case "firecracker":
		return newFirecracker(d), nil
	case "qemu":
		return newQEMU(d), nil
	}
	return nil, errdefs.Invalid("unknown vmm %q: valid names are %s", name, strings.Join(Names, ", "))
}

// DefaultName is the driver to use when neither the VM nor the host
// configuration names one: Firecracker when its binary is found, else QEMU.
func DefaultName(d config.Driver) string {
	if _, err := findBinary(d.FirecrackerBin, "firecracker"); err == nil {
		return "firecracker"
	}
	return "qemu"
}

// Resolve pins the host's settings for a VM of driver name: only the
// settings that driver reads are kept, and binaries found on PATH become
// absolute paths, so that a later change of PATH or of the host's
// variables does not change how an existing VM is launched. A binary not
// found stays as configured; starting the VM then reports it missing.
func Resolve(name string, d config.Driver) config.Driver {
	abs := func(configured, def string) string {
		if p, err := findBinary(configured, def); err == nil {
			return p
		}
		return configured
	}
	switch name {
	case "firecracker":
		out := config.Driver{FirecrackerBin: abs(d.FirecrackerBin, "firecracker"), Vsock: d.Vsock, Entropy: d.Entropy}
		// The jailer is on with MGR_JAILER=1, and by default (MGR_JAILER
		// unset) when its binary is found; MGR_JAILER=0 turns it off.
		_, jailerErr := findBinary(d.JailerBin, "jailer")
		if d.Jailer || (d.JailerAuto && jailerErr == nil) {
			out.Jailer, out.JailerUID, out.JailerGID, out.ChrootBase = true, d.JailerUID, d.JailerGID, d.ChrootBase
			out.JailerBin = abs(d.JailerBin, "jailer")
		}
		return out
	case "qemu":
		return config.Driver{QEMUBin: abs(d.QEMUBin, qemuDefaultBin), QEMUMachine: d.QEMUMachine, QEMUAccel: d.QEMUAccel, Entropy: d.Entropy}
	}
	return d
}

// Limits of a spec. Firecracker allows at most 32 vCPUs; below 128 MiB a
// distribution kernel with an initramfs does not boot reliably.
const (
	MaxVCPU   = 32
	MinMemMiB = 128
)

// validID is what both VMMs accept as an instance id: the jailer takes
// alphanumerics and hyphens up to 64 characters.
func validID(id string) bool { return len(id) <= 64 && idRe.MatchString(id) }

// validDriveID: 1-32 letters, digits or underscores.
func validDriveID(id string) bool { return len(id) <= 32 && driveIDRe.MatchString(id) }

// A repetition with a bound ({1,64}) compiles to a copy of its class per
// repetition, kept for the program's life (20 KB and more per
// expression): the bounds are checked apart, by length.
var (
	idRe      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]*$`)
	driveIDRe = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
)

// maxSocketPath is the room in sockaddr_un.sun_path, less the NUL.
const maxSocketPath = 107

// Validate checks a spec before anything is rendered or launched, naming
// the field and the problem.
func (s Spec) Validate() error { return s.validate(true) }

// validate checks the spec; with files, also that the kernel, initrd and
// disks are regular files (following links: at create, the manager has
// just resolved them). Command checks them itself, without following
// links, as it opens them.
func (s Spec) validate(files bool) error {
	if !validID(s.ID) {
		return fmt.Errorf("vm %q: id: must be 1-64 letters, digits or hyphens", s.ID)
	}
	fail := func(field, format string, a ...any) error {
		return fmt.Errorf("vm %s: %s: %s", s.ID, field, fmt.Sprintf(format, a...))
	}
	if s.VCPU < 1 || s.VCPU > MaxVCPU {
		return fail("vcpu", "%d is out of range 1..%d", s.VCPU, MaxVCPU)
	}
	if s.MemMiB < MinMemMiB {
		return fail("memMiB", "%d is below the minimum of %d", s.MemMiB, MinMemMiB)
	}
	if err := checkFile(s.Kernel, s.KernelBeneath, files); err != nil {
		return fail("kernel", "%v", err)
	}
	if s.Initrd != "" {
		if err := checkFile(s.Initrd, s.InitrdBeneath, files); err != nil {
			return fail("initrd", "%v", err)
		}
	}
	if strings.ContainsAny(s.BootArgs, "\n\x00") {
		return fail("bootArgs", "must be one line")
	}
	seen := map[string]bool{}
	roots := 0
	for i, d := range s.Drives {
		field := fmt.Sprintf("drives[%d]", i)
		if !validDriveID(d.ID) {
			return fail(field+".id", "%q must be 1-32 letters, digits or underscores", d.ID)
		}
		if seen[d.ID] {
			return fail(field+".id", "%q is used twice", d.ID)
		}
		seen[d.ID] = true
		if err := checkFile(d.Path, d.Beneath, files); err != nil {
			return fail(field+".path", "%v", err)
		}
		if strings.ContainsAny(d.Path, ",") {
			// QEMU's option syntax would need escaping; refuse for both
			// drivers so vm.json means the same everywhere.
			return fail(field+".path", "%q contains a comma", d.Path)
		}
		if d.Root {
			roots++
		}
	}
	if roots > 1 {
		return fail("drives", "%d drives are marked root; at most one may be", roots)
	}
	if s.NIC != nil {
		if s.NIC.TapName == "" || len(s.NIC.TapName) > 15 || strings.ContainsAny(s.NIC.TapName, "/ ,=") {
			return fail("nic.tapName", "%q is not a valid interface name (1-15 characters, no '/', ' ', ',' or '=')", s.NIC.TapName)
		}
		mac, err := net.ParseMAC(s.NIC.MAC)
		if err != nil || len(mac) != 6 {
			return fail("nic.mac", "%q is not a 6-byte MAC address", s.NIC.MAC)
		}
		if mac[0]&1 == 1 {
			return fail("nic.mac", "%q is a multicast address", s.NIC.MAC)
		}
	}
	if s.SocketPath == "" {
		return fail("socketPath", "empty")
	}
	if len(s.SocketPath) > maxSocketPath {
		return fail("socketPath", "%q is longer than the %d bytes a unix socket address holds", s.SocketPath, maxSocketPath)
	}
	return nil
}

// checkFile checks a spec's file: an absolute path, below dir when dir is
// set; with exists, an existing regular file.
func checkFile(p, dir string, exists bool) error {
	if p == "" {
		return errors.New("empty path")
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%q is not an absolute path", p)
	}
	if dir != "" && (!filepath.IsAbs(dir) || !strings.HasPrefix(filepath.Clean(p), strings.TrimSuffix(filepath.Clean(dir), "/")+"/")) {
		return fmt.Errorf("%s is not below %q, where it was checked", p, dir)
	}
	if !exists {
		return nil
	}
	return regularFile(p)
}

func regularFile(p string) error {
	if p == "" {
		return errors.New("empty path")
	}
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s)", p, fi.Mode().Type())
	}
	return nil
}

// rootFirst returns the root drive first, then the others in spec order.
func rootFirst(drives []Drive) []Drive {
	out := make([]Drive, 0, len(drives))
	for _, d := range drives {
		if d.Root {
			out = append(out, d)
		}
	}
	for _, d := range drives {
		if !d.Root {
			out = append(out, d)
		}
	}
	return out
}

// hasArg reports whether the kernel command line already sets key (either
// "key" or "key=…").
func hasArg(cmdline, key string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == key || strings.HasPrefix(f, key+"=") {
			return true
		}
	}
	return false
}

// appendArgs adds the arguments whose key the command line does not set yet.
func appendArgs(cmdline string, args ...string) string {
	out := strings.TrimSpace(cmdline)
	for _, a := range args {
		if a == "" {
			continue
		}
		key, _, _ := strings.Cut(a, "=")
		if hasArg(out, key) {
			continue
		}
		if out != "" {
			out += " "
		}
		out += a
	}
	return out
}
