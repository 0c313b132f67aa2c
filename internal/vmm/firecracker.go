package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/jsondoc"
)

// firecracker runs VMs with Firecracker, configured through its
// --config-file document and watched through its API socket. With the jailer
// on, Firecracker runs chrooted under an unprivileged uid/gid and vm.json
// names files by their path inside the chroot.
type firecracker struct {
	bin     string // MGR_FIRECRACKER_BIN; empty: "firecracker" on PATH
	entropy bool   // MGN_ENABLE_ENTROPY_DEVICE=1: a virtio-rng device (Firecracker v1.4+)
	vsock   bool   // MGR_VSOCK (on unless 0): a hybrid vsock device backed by a unix socket, the agent's channel

	jailer     bool   // MGR_JAILER=1
	jailerBin  string // MGR_JAILER_BIN; empty: "jailer" on PATH
	jailerUID  string // MGR_JAILER_UID
	jailerGID  string // MGR_JAILER_GID
	chrootBase string // MGR_JAILER_CHROOT_BASE; empty: <WorkDir>/jail
}

func newFirecracker(d config.Driver) *firecracker {
	return &firecracker{
		bin:        d.FirecrackerBin,
		entropy:    d.Entropy,
		vsock:      d.Vsock,
		jailer:     d.Jailer,
		jailerBin:  d.JailerBin,
		jailerUID:  d.JailerUID,
		jailerGID:  d.JailerGID,
		chrootBase: d.ChrootBase,
	}
}

func (f *firecracker) Name() string { return "firecracker" }

// Check needs the binary and a /dev/kvm this process can open read-write:
// Firecracker has no software fallback.
func (f *firecracker) Check() error {
	if _, err := findBinary(f.bin, "firecracker"); err != nil {
		return err
	}
	if err := openKVM(); err != nil {
		return fmt.Errorf("%w: firecracker needs /dev/kvm: %v", ErrUnavailable, err)
	}
	if f.jailer {
		if _, err := findBinary(f.jailerBin, "jailer"); err != nil {
			return err
		}
		if f.jailerUID != "" || f.jailerGID != "" {
			if _, _, err := f.ids(Spec{}); err != nil {
				return fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
		}
	}
	return nil
}

// fcConfig is Firecracker's --config-file document: the bodies of the
// pre-boot API calls (PUT /boot-source, /drives/{id}, /machine-config,
// /network-interfaces/{id}, /vsock, /entropy) keyed by resource name.
type fcConfig struct {
	BootSource        fcBootSource     `json:"boot-source"`
	Drives            []fcDrive        `json:"drives"`
	MachineConfig     fcMachineConfig  `json:"machine-config"`
	NetworkInterfaces []fcNetInterface `json:"network-interfaces"`
	Vsock             *fcVsock         `json:"vsock,omitempty"`
	Entropy           *fcEntropy       `json:"entropy,omitempty"`
}

type fcBootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

type fcDrive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

type fcMachineConfig struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMiB int  `json:"mem_size_mib"`
	SMT        bool `json:"smt"`
}

type fcNetInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac"`
}

type fcVsock struct {
	// VsockID is required by the v1.0 API and ignored (deprecated) by
	// later versions; sending it keeps both working.
	VsockID  string `json:"vsock_id"`
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// fcEntropy is the virtio-rng device; an empty object takes the defaults.
type fcEntropy struct{}

// Paths inside the jailer's chroot. Files are named by role rather than by
// their host name: two images may well both be called rootfs.ext4.
const (
	jailKernel = "/kernel"
	jailInitrd = "/initrd"
	jailConfig = "/vm.json"
	jailRunDir = "/run" // owned by the jail uid: Firecracker creates its sockets here
	jailSocket = "/run/firecracker.socket"
	jailVsock  = "/run/vsock.sock"
)

// vsockSocket is the host side of the vsock device, in WorkDir.
const vsockSocket = "vsock.sock"

func jailDrive(id string) string { return "/drive-" + id }

// guestCID is the guest's vsock context id. Firecracker's vsock is hybrid
// (a unix socket on the host side), so every VM may use the same CID.
const guestCID = 3

func (f *firecracker) Config(s Spec) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	cfg, err := f.config(s)
	if err != nil {
		return nil, err
	}
	b, err := jsondoc.Encode(cfg)
	if err != nil {
		return nil, fmt.Errorf("vm %s: encode firecracker config: %w", s.ID, err)
	}
	return b, nil
}

func (f *firecracker) config(s Spec) (fcConfig, error) {
	path := func(host, inJail string) string {
		if f.jailer {
			return inJail
		}
		return host
	}
	cfg := fcConfig{
		BootSource: fcBootSource{
			KernelImagePath: path(s.Kernel, jailKernel),
			// Firecracker has no PCI bus; probing for one only costs time.
			// It appends root= and the virtio-mmio devices itself.
			BootArgs: appendArgs(s.BootArgs, "pci=off"),
		},
		Drives:            []fcDrive{},
		MachineConfig:     fcMachineConfig{VCPUCount: s.VCPU, MemSizeMiB: s.MemMiB, SMT: false},
		NetworkInterfaces: []fcNetInterface{},
	}
	if s.Initrd != "" {
		cfg.BootSource.InitrdPath = path(s.Initrd, jailInitrd)
	}
	for _, d := range s.Drives {
		cfg.Drives = append(cfg.Drives, fcDrive{
			DriveID:      d.ID,
			PathOnHost:   path(d.Path, jailDrive(d.ID)),
			IsRootDevice: d.Root,
			IsReadOnly:   d.ReadOnly,
		})
	}
	if s.NIC != nil {
		cfg.NetworkInterfaces = append(cfg.NetworkInterfaces, fcNetInterface{
			IfaceID: "eth0", HostDevName: s.NIC.TapName, GuestMAC: s.NIC.MAC,
		})
	}
	if f.vsock {
		if s.WorkDir == "" && !f.jailer {
			return fcConfig{}, fmt.Errorf("vm %s: workDir: empty, but the vsock device (MGR_VSOCK) keeps its socket there", s.ID)
		}
		cfg.Vsock = &fcVsock{VsockID: "vsock0", GuestCID: guestCID, UDSPath: path(filepath.Join(s.WorkDir, vsockSocket), jailVsock)}
	}
	if f.entropy {
		cfg.Entropy = &fcEntropy{}
	}
	if err := cfg.checkCommandLine(s.ID); err != nil {
		return fcConfig{}, err
	}
	return cfg, nil
}

// fcMaxCommandLine is the longest kernel command line Firecracker boots
// (2,048 bytes with the terminating NUL, as an x86 kernel keeps).
const fcMaxCommandLine = 2047

// What Firecracker appends to the command line at boot, with margin: each
// virtio-mmio device's announcement (" virtio_mmio.device=4K@0xd0000000:5")
// and the root drive (" root=/dev/vda ro", or a partition's UUID).
const (
	fcDeviceArg = 40
	fcRootArg   = 56
)

// checkCommandLine refuses, when vm.json is rendered, a kernel command line
// that Firecracker would refuse at boot once its own arguments are added.
// The manager's part of the line carries the request's bootArgs, extraEnv
// and argv, so the error names them. (QEMU takes the line from its
// configuration file, whose own, lower, limit bootFile checks.)
func (cfg fcConfig) checkCommandLine(id string) error {
	devices := len(cfg.Drives) + len(cfg.NetworkInterfaces)
	if cfg.Vsock != nil {
		devices++
	}
	if cfg.Entropy != nil {
		devices++
	}
	appended := devices*fcDeviceArg + fcRootArg
	if n := len(cfg.BootSource.BootArgs) + appended; n > fcMaxCommandLine {
		return errdefs.Invalid("vm %s: bootArgs, extraEnv and argv: the kernel command line would be %d bytes with the %d Firecracker adds, at most %d (put large configuration on an env disk)", id, n, appended, fcMaxCommandLine)
	}
	return nil
}

// fcRunConfig is the configuration Firecracker boots from, in WorkDir:
// vm.json as rendered at create, with the kernel, initrd and disks named by
// the descriptors the start stage opened for it (/proc/self/fd/N).
const fcRunConfig = "firecracker.json"

// Command is `firecracker --api-sock S --config-file <run dir>/firecracker.json`:
// the VM boots from the file at once, and the API socket stays open for
// Status and Shutdown. The file is vm.json with its kernel, initrd and
// disks replaced by descriptors that Command opened below the directories
// they were checked in, without following links, and that Firecracker
// inherits. With the jailer it prepares the chroot instead, see jail.
//
// With Spec.Restore the VM starts from a snapshot: Firecracker gets its
// API socket only (a configured Firecracker refuses to load a snapshot),
// and Restored loads the snapshot through it. That needs the jailer, see
// errUnjailedSnapshot.
func (f *firecracker) Command(s Spec, configPath string) (Launch, error) {
	if err := s.validate(false); err != nil {
		return Launch{}, err
	}
	if err := regularFile(configPath); err != nil {
		return Launch{}, fmt.Errorf("vm %s: firecracker config: %w", s.ID, err)
	}
	bin, err := findBinary(f.bin, "firecracker")
	if err != nil {
		return Launch{}, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	cfg, err := readFCConfig(configPath)
	if err != nil {
		return Launch{}, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	if err := f.sameFiles(s, configPath, cfg); err != nil {
		return Launch{}, err
	}
	if s.Restore != nil {
		if !f.jailer {
			return Launch{}, errUnjailedSnapshot("restore", s.ID)
		}
		if !filepath.IsAbs(s.Restore.Dir) {
			return Launch{}, fmt.Errorf("restore vm %s: snapshot directory %q is not an absolute path", s.ID, s.Restore.Dir)
		}
	}
	if f.jailer {
		argv, err := f.jail(s, bin, configPath)
		return Launch{Argv: argv}, err
	}
	if s.WorkDir == "" {
		return Launch{}, fmt.Errorf("vm %s: workDir: empty, but Firecracker's configuration (%s) is written there at start", s.ID, fcRunConfig)
	}
	if f.vsock {
		// Firecracker binds the vsock socket itself and fails on one left
		// by a previous run.
		if err := os.Remove(filepath.Join(s.WorkDir, vsockSocket)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return Launch{}, fmt.Errorf("vm %s: remove stale vsock socket: %w", s.ID, err)
		}
	}
	o := &opener{id: s.ID}
	fail := func(err error) (Launch, error) {
		o.close()
		return Launch{}, err
	}
	k, err := o.open("kernel", s.Kernel, s.KernelBeneath, false)
	if err != nil {
		return fail(err)
	}
	cfg.BootSource.KernelImagePath = beneath.FDPath(k)
	if s.Initrd != "" {
		i, err := o.open("initrd", s.Initrd, s.InitrdBeneath, false)
		if err != nil {
			return fail(err)
		}
		cfg.BootSource.InitrdPath = beneath.FDPath(i)
	}
	for i, d := range s.Drives {
		df, err := o.open("drive "+d.ID, d.Path, d.Beneath, !d.ReadOnly)
		if err != nil {
			return fail(err)
		}
		cfg.Drives[i].PathOnHost = beneath.FDPath(df)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fail(fmt.Errorf("vm %s: encode firecracker config: %w", s.ID, err))
	}
	run := filepath.Join(s.WorkDir, fcRunConfig)
	if err := atomicfile.WriteFile(run, append(b, '\n'), 0o600); err != nil {
		return fail(fmt.Errorf("vm %s: firecracker config: %w", s.ID, err))
	}
	return Launch{Argv: []string{bin, "--id", s.ID, "--api-sock", s.SocketPath, "--config-file", run}, Files: o.files}, nil
}

// sameFiles checks that vm.json gives the VM the spec's kernel, initrd and
// drives, in the spec's order: the record, not the rendered file, says
// which files a VM has and where they were checked.
func (f *firecracker) sameFiles(s Spec, configPath string, cfg fcConfig) error {
	want, err := f.config(s)
	if err != nil {
		return err
	}
	if cfg.BootSource.KernelImagePath != want.BootSource.KernelImagePath || cfg.BootSource.InitrdPath != want.BootSource.InitrdPath ||
		!slices.Equal(cfg.Drives, want.Drives) {
		if f.jailer && cfg.BootSource.KernelImagePath != jailKernel {
			return fmt.Errorf("vm %s: %s was rendered without the jailer (kernel_image_path %q); re-render it with MGR_JAILER=1", s.ID, configPath, cfg.BootSource.KernelImagePath)
		}
		return fmt.Errorf("vm %s: the kernel, initrd or drives of %s are not the VM's (%s, %s, %+v; want %s, %s, %+v)", s.ID, configPath,
			cfg.BootSource.KernelImagePath, cfg.BootSource.InitrdPath, cfg.Drives, want.BootSource.KernelImagePath, want.BootSource.InitrdPath, want.Drives)
	}
	return nil
}

func (f *firecracker) Status(ctx context.Context, socketPath string) (State, error) {
	info, err := newFCClient(socketPath).instanceInfo(ctx)
	if err != nil {
		return State{}, err
	}
	return State{Running: info.State == "Running", Paused: info.State == "Paused", State: info.State}, nil
}

// Pause sends PATCH /vm {"state": "Paused"} (API v0.25 and later, v1.0
// included) unless GET / already reports the VM Paused, so that pausing
// twice succeeds whatever the version does with a second request.
func (f *firecracker) Pause(ctx context.Context, socketPath string) error {
	return f.setState(ctx, socketPath, "Paused", "Paused")
}

// Resume sends PATCH /vm {"state": "Resumed"} unless the VM is already
// Running.
func (f *firecracker) Resume(ctx context.Context, socketPath string) error {
	return f.setState(ctx, socketPath, "Resumed", "Running")
}

func (f *firecracker) setState(ctx context.Context, socketPath, want, reported string) error {
	c := newFCClient(socketPath)
	info, err := c.instanceInfo(ctx)
	if err != nil {
		return err
	}
	if info.State == reported {
		return nil
	}
	return c.vmState(ctx, want)
}

// Shutdown sends Ctrl-Alt-Del: the guest's init powers the VM off, and
// Firecracker exits when the guest resets (reboot=k).
func (f *firecracker) Shutdown(ctx context.Context, socketPath string) error {
	return newFCClient(socketPath).action(ctx, "SendCtrlAltDel")
}

// ids are the jail's uid and gid: MGR_JAILER_UID/GID when the record has
// them (one pair for every VM), else the VM's own (Spec.UID/GID, from
// MGR_VMM_UID_RANGE), so that one escaped Firecracker cannot touch another
// VM's files. Never root: the point of the jailer is to drop it.
func (f *firecracker) ids(s Spec) (int, int, error) {
	if f.jailerUID == "" && f.jailerGID == "" {
		if s.UID <= 0 || s.GID <= 0 {
			return 0, 0, fmt.Errorf("the jail needs an unprivileged uid/gid: this VM's record has none (created before VMs had their own ids) and MGR_JAILER_UID/MGR_JAILER_GID are not set; recreate the VM, or set both")
		}
		return s.UID, s.GID, nil
	}
	uid, err := strconv.Atoi(f.jailerUID)
	if err != nil || uid <= 0 {
		return 0, 0, fmt.Errorf("MGR_JAILER_UID: %q is not a numeric uid other than root's", f.jailerUID)
	}
	gid, err := strconv.Atoi(f.jailerGID)
	if err != nil || gid <= 0 {
		return 0, 0, fmt.Errorf("MGR_JAILER_GID: %q is not a numeric gid other than root's", f.jailerGID)
	}
	return uid, gid, nil
}

// jailCgroup is the jailer's cgroup arguments: each VM gets a cgroup of its
// own, <cgroup root>/pids/firecracker/<id> with cgroup v1 (the jailer's
// default parent), firecracker/<id> with v2. The v1.0 jailer makes one only
// when given a --cgroup value; pids.max=max sets no limit and puts
// Firecracker and its threads in the VM's own group, where they can be
// counted and limited.
func jailCgroup() []string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return []string{"--cgroup-version", "2", "--cgroup", "pids.max=max"}
	}
	return []string{"--cgroup", "pids.max=max"}
}

// Release removes the jailer's chroot (<base>/firecracker/<id>) and the
// VM's cgroup, which the jailer leaves behind: empty once the VMM has
// exited, so rmdir suffices and refuses while a process remains.
func (f *firecracker) Release(s Spec) error {
	if !f.jailer || !validID(s.ID) {
		return nil
	}
	var errs []error
	for _, name := range []string{"firecracker", filepath.Base(f.bin)} {
		if name == "" || name == "." || name == "/" {
			continue
		}
		root, err := f.jailDir(s, name)
		if err != nil {
			return err
		}
		if err := os.RemoveAll(filepath.Dir(root)); err != nil {
			errs = append(errs, fmt.Errorf("vm %s: remove the jail: %w", s.ID, err))
		}
	}
	for _, dir := range []string{"/sys/fs/cgroup/pids/firecracker", "/sys/fs/cgroup/firecracker"} {
		if err := os.Remove(filepath.Join(dir, s.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("vm %s: remove its cgroup: %w", s.ID, err))
		}
	}
	return errors.Join(errs...)
}

// jailDir is the directory the jailer chroots into:
// <base>/<exec file name>/<id>/root, as the jailer lays it out.
func (f *firecracker) jailDir(s Spec, bin string) (string, error) {
	base := f.chrootBase
	if base == "" {
		if s.WorkDir == "" {
			return "", fmt.Errorf("vm %s: workDir: empty, but the jailer's chroot lives there (or set MGR_JAILER_CHROOT_BASE)", s.ID)
		}
		base = filepath.Join(s.WorkDir, "jail")
	}
	return filepath.Join(base, filepath.Base(bin), s.ID, "root"), nil
}

// jail lays out a fresh chroot for the jailer and returns its argv:
//
//   - the kernel, initrd, disks and vm.json are hard-linked into the chroot
//     (read-only files fall back to a copy when a link is impossible; a
//     writable disk never does, since the guest's writes would land in a
//     throwaway copy); for a start from a snapshot (Spec.Restore), the
//     disks and the snapshot's files instead (/restore/vmstate and
//     /restore/memory, read-only): the snapshot holds the kernel in the
//     guest's memory and names the disks by their place in the chroot;
//   - writable disks and the chroot's /run are given to the jail uid/gid;
//   - the host socket path becomes a symlink to the API socket inside the
//     chroot, so Status and Shutdown work with the same path as unjailed.
//
// The caller has already entered the VM's network namespace, which the
// jailer and Firecracker inherit, so no --netns is passed.
func (f *firecracker) jail(s Spec, bin, configPath string) ([]string, error) {
	uid, gid, err := f.ids(s)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	jailerBin, err := findBinary(f.jailerBin, "jailer")
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	root, err := f.jailDir(s, bin)
	if err != nil {
		return nil, err
	}
	// The jailer closes every descriptor it inherits, so the files go
	// into the chroot as hard links (or copies) made from the files opened
	// here, never by path.
	o := &opener{id: s.ID}
	defer o.close()
	fail := func(err error) ([]string, error) {
		// Leave no half-made chroot behind.
		os.RemoveAll(filepath.Dir(root))
		return nil, fmt.Errorf("vm %s: prepare jail %s: %w", s.ID, root, err)
	}
	// Start from an empty chroot: the jailer refuses to create device
	// nodes that a previous run left behind. Removing links never touches
	// the originals.
	if err := os.RemoveAll(filepath.Dir(root)); err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(filepath.Join(root, jailRunDir), 0o755); err != nil {
		return fail(err)
	}
	if err := os.Lchown(filepath.Join(root, jailRunDir), uid, gid); err != nil {
		return fail(err)
	}
	place := func(field, host, dir, inJail string, writable bool) error {
		src, err := o.open(field, host, dir, writable)
		if err != nil {
			return err
		}
		return placeInJail(src, filepath.Join(root, inJail), writable, uid, gid)
	}
	if s.Restore == nil {
		if err := place("kernel", s.Kernel, s.KernelBeneath, jailKernel, false); err != nil {
			return fail(err)
		}
		if s.Initrd != "" {
			if err := place("initrd", s.Initrd, s.InitrdBeneath, jailInitrd, false); err != nil {
				return fail(err)
			}
		}
	}
	for _, d := range s.Drives {
		if err := place("drive "+d.ID, d.Path, d.Beneath, jailDrive(d.ID), !d.ReadOnly); err != nil {
			return fail(fmt.Errorf("drive %s: %w", d.ID, err))
		}
	}
	if s.Restore == nil {
		if err := place("config", configPath, filepath.Dir(configPath), jailConfig, false); err != nil {
			return fail(err)
		}
	} else {
		// Root's, 0755: the jail user reads the files in it and cannot
		// replace them one by one (only the whole directory, for itself,
		// once the jailer has given it the chroot's root).
		if err := os.Mkdir(filepath.Join(root, jailRestoreDir), 0o755); err != nil {
			return fail(err)
		}
		for _, name := range snapshotFiles {
			if err := place("snapshot "+name, filepath.Join(s.Restore.Dir, name), s.Restore.Dir, jailRestoreDir+"/"+name, false); err != nil {
				return fail(err)
			}
		}
	}
	if err := os.Remove(s.SocketPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	if err := os.Symlink(filepath.Join(root, jailSocket), s.SocketPath); err != nil {
		return fail(err)
	}
	argv := []string{
		jailerBin,
		"--id", s.ID,
		"--exec-file", bin,
		"--uid", strconv.Itoa(uid),
		"--gid", strconv.Itoa(gid),
		"--chroot-base-dir", filepath.Dir(filepath.Dir(filepath.Dir(root))),
	}
	argv = append(argv, jailCgroup()...)
	argv = append(argv, "--", "--api-sock", jailSocket)
	if s.Restore == nil {
		argv = append(argv, "--config-file", jailConfig)
	}
	return argv, nil
}

func readFCConfig(path string) (fcConfig, error) {
	var cfg fcConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("firecracker config: %w", err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("firecracker config %s: %w", path, err)
	}
	return cfg, nil
}

// placeInJail hard-links the open file src to dst (through
// /proc/self/fd/N: the link is to the inode src holds, whatever its path
// names now). A writable file is handed to the jail uid/gid with fchown on
// src (it is the VM's own disk; the link shares the inode, so this changes
// the original's owner). A read-only file that cannot be linked, or that
// the jail uid could not read, is copied from src instead and the copy,
// created exclusively, given to the jail uid. No step follows a link.
func placeInJail(src *os.File, dst string, writable bool, uid, gid int) error {
	linkErr := unix.Linkat(unix.AT_FDCWD, beneath.FDPath(src), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
	if linkErr != nil {
		linkErr = &fs.PathError{Op: "link", Path: dst, Err: linkErr}
	}
	if writable {
		if linkErr != nil {
			return fmt.Errorf("hard-link writable disk %s into the jail: %w (a copy would lose the guest's writes; keep it on the same file system as the chroot, see MGR_JAILER_CHROOT_BASE)", src.Name(), linkErr)
		}
		return src.Chown(uid, gid)
	}
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	if linkErr == nil {
		if readableBy(fi, uid, gid) {
			return nil
		}
		if err := os.Remove(dst); err != nil {
			return err
		}
	}
	if err := copyInto(src, fi.Size(), dst, uid, gid, false); err != nil {
		return fmt.Errorf("copy %s into the jail: %w", src.Name(), err)
	}
	return nil
}

func readableBy(fi fs.FileInfo, uid, gid int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	perm := fi.Mode().Perm()
	switch {
	case int(st.Uid) == uid:
		return perm&0o400 != 0
	case int(st.Gid) == gid:
		return perm&0o040 != 0
	}
	return perm&0o004 != 0
}

// copyInto copies size bytes of src into a new file dst, which it creates
// with mode 0600 (never through an existing name or link) and gives to
// uid/gid; with sync, the copy is on disk when it returns.
func copyInto(src *os.File, size int64, dst string, uid, gid int, sync bool) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, io.NewSectionReader(src, 0, size)); err != nil {
		out.Close()
		return err
	}
	if err := out.Chown(uid, gid); err != nil {
		out.Close()
		return err
	}
	if sync {
		if err := out.Sync(); err != nil {
			out.Close()
			return err
		}
	}
	return out.Close()
}
