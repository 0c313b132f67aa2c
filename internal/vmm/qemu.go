package vmm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/jsondoc"
)

// qemu runs VMs with qemu-system-x86_64: the same spec rendered to flags,
// with virtio disks and network, the serial console on stdio and a QMP
// socket for status and power-down. It is the driver for hosts where
// Firecracker cannot run, including hosts without usable KVM (TCG).
type qemu struct {
	bin     string // MGR_QEMU_BIN; empty: "qemu-system-x86_64" on PATH
	machine string // MGR_QEMU_MACHINE: "q35" (default) or "microvm"
	accel   string // MGR_QEMU_ACCEL: "auto" (default), "kvm" or "tcg"
	entropy bool   // MGN_ENABLE_ENTROPY_DEVICE=1: a virtio-rng device
	// kvmProbe decides "auto"; tests replace it.
	kvmProbe func() (bool, string)
}

func newQEMU(d config.Driver) *qemu {
	return &qemu{
		bin:      d.QEMUBin,
		machine:  d.QEMUMachine,
		accel:    d.QEMUAccel,
		entropy:  d.Entropy,
		kvmProbe: kvmTrusted,
	}
}

const qemuDefaultBin = "qemu-system-x86_64"

func (q *qemu) Name() string { return "qemu" }

func (q *qemu) Check() error {
	if _, err := findBinary(q.bin, qemuDefaultBin); err != nil {
		return err
	}
	if _, err := q.machineType(); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	accel, _, err := q.accelerator()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if accel == "kvm" {
		if err := openKVM(); err != nil {
			return fmt.Errorf("%w: MGR_QEMU_ACCEL=kvm but /dev/kvm is unusable: %v", ErrUnavailable, err)
		}
	}
	return nil
}

// qemuExitPort is the I/O port of the isa-debug-exit device on q35.
const qemuExitPort = 0xf4

func (q *qemu) machineType() (string, error) {
	switch q.machine {
	case "", "q35":
		return "q35", nil
	case "microvm":
		return "microvm", nil
	}
	return "", fmt.Errorf("MGR_QEMU_MACHINE: %q is not one of q35, microvm", q.machine)
}

// QEMUAccelerator is the accelerator QEMU would get for a VM created now
// with the settings d ("kvm" or "tcg") and why; mergen doctor reports it.
func QEMUAccelerator(d config.Driver) (string, string, error) {
	return newQEMU(d).accelerator()
}

// accelerator picks KVM or TCG and says why. "auto" takes KVM only when the
// probe trusts it; an explicit choice is taken as given.
func (q *qemu) accelerator() (string, string, error) {
	switch q.accel {
	case "", "auto":
		probe := q.kvmProbe
		if probe == nil {
			probe = kvmTrusted
		}
		ok, why := probe()
		if ok {
			return "kvm", "auto: " + why, nil
		}
		return "tcg", "auto: software emulation (TCG) because " + why, nil
	case "kvm":
		return "kvm", "MGR_QEMU_ACCEL=kvm", nil
	case "tcg":
		return "tcg", "MGR_QEMU_ACCEL=tcg", nil
	}
	return "", "", fmt.Errorf("MGR_QEMU_ACCEL: %q is not one of auto, kvm, tcg", q.accel)
}

// qemuBootFile is the file, in the VM's run directory, from which QEMU reads
// the kernel, the initrd and the kernel command line (-readconfig). The
// command line carries the VM's extraEnv (mergen.env=), and a process's
// argv is readable by every local user in /proc/<pid>/cmdline; the file is
// root's, mode 0600, like vm.json.
const qemuBootFile = "qemu-boot.cfg"

// qemuConfigLineMax is the longest line QEMU's -readconfig parser reads
// whole: it reads lines into a 1024-byte buffer (util/qemu-config.c; with
// QEMU 7.2, `append = "` and 1012 characters of command line still load,
// 1013 do not). A longer line would be cut in two and misread, so
// the driver refuses values that do not fit rather than let QEMU fail or
// boot with a truncated command line. Values cannot hold '"' either: the
// format has no escapes.
const qemuConfigLineMax = 1023

// qemuConfig is vm.json for QEMU: the decisions taken when it was rendered
// (machine, accelerator, kernel actually used) and the argv that Command
// runs, so that the file shows exactly what runs. The kernel, initrd and
// bootArgs reach QEMU through BootConfig, which Command writes from this
// document.
type qemuConfig struct {
	VMM         string      `json:"vmm"` // always "qemu"
	Machine     string      `json:"machine"`
	Accel       string      `json:"accel"`
	AccelReason string      `json:"accelReason"`
	VCPU        int         `json:"vcpu"`
	MemMiB      int         `json:"memMiB"`
	Kernel      string      `json:"kernel"`
	Initrd      string      `json:"initrd,omitempty"`
	BootArgs    string      `json:"bootArgs"`
	BootConfig  string      `json:"bootConfig"` // -readconfig file: kernel, initrd, bootArgs
	Drives      []qemuDrive `json:"drives"`
	NIC         *qemuNIC    `json:"nic,omitempty"`
	QMPSocket   string      `json:"qmpSocket"`
	// AgentSocket is the host end of the guest agent's virtio-serial
	// port; empty in a vm.json rendered before the agent channel.
	AgentSocket string `json:"agentSocket,omitempty"`
	// ConsoleSocket is the host end of the interactive console (ttyS1);
	// empty in a vm.json rendered before it.
	ConsoleSocket string   `json:"consoleSocket,omitempty"`
	Argv          []string `json:"argv"`
}

type qemuDrive struct {
	ID       string `json:"id"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly"`
	Root     bool   `json:"root"`
}

type qemuNIC struct {
	TapName string `json:"tapName"`
	MAC     string `json:"mac"`
}

func (q *qemu) Config(s Spec) ([]byte, error) {
	cfg, err := q.config(s)
	if err != nil {
		return nil, err
	}
	b, err := jsondoc.Encode(cfg)
	if err != nil {
		return nil, fmt.Errorf("vm %s: encode qemu config: %w", s.ID, err)
	}
	return b, nil
}

func (q *qemu) config(s Spec) (qemuConfig, error) {
	if err := s.Validate(); err != nil {
		return qemuConfig{}, err
	}
	machine, err := q.machineType()
	if err != nil {
		return qemuConfig{}, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	accel, reason, err := q.accelerator()
	if err != nil {
		return qemuConfig{}, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	if s.WorkDir == "" {
		return qemuConfig{}, fmt.Errorf("vm %s: workDir: empty, but QEMU's boot configuration (%s) lives there", s.ID, qemuBootFile)
	}
	bin := q.bin
	if bin == "" {
		bin = qemuDefaultBin
	}
	cfg := qemuConfig{
		VMM: "qemu", Machine: machine, Accel: accel, AccelReason: reason,
		VCPU: s.VCPU, MemMiB: s.MemMiB,
		Kernel: bzImage(s.Kernel), Initrd: s.Initrd,
		Drives:     []qemuDrive{},
		QMPSocket:  s.SocketPath,
		BootConfig: filepath.Join(s.WorkDir, qemuBootFile),
	}
	drives := rootFirst(s.Drives)
	cfg.BootArgs = s.BootArgs
	for _, d := range drives {
		if d.Root {
			// Firecracker adds root= for its root device; do the same so a
			// spec boots alike on both. The root drive is attached first,
			// so it is the first virtio disk.
			if !hasArg(cfg.BootArgs, "root") {
				mode := "rw"
				if d.ReadOnly {
					mode = "ro"
				}
				if hasArg(cfg.BootArgs, "ro") || hasArg(cfg.BootArgs, "rw") {
					mode = ""
				}
				cfg.BootArgs = appendArgs(cfg.BootArgs, "root=/dev/vda", mode)
			}
		}
		cfg.Drives = append(cfg.Drives, qemuDrive{ID: d.ID, Path: d.Path, ReadOnly: d.ReadOnly, Root: d.Root})
	}
	if s.NIC != nil {
		cfg.NIC = &qemuNIC{TapName: s.NIC.TapName, MAC: strings.ToLower(s.NIC.MAC)}
	}
	if machine == "q35" {
		// The guest's exit device: mergen-init writes the status of a guest
		// that ends by itself with a failure there, and QEMU exits with
		// status<<1|1 instead of 0, so the service manager sees a failure
		// (docs/guest.md). Without it every guest power-off is a clean exit.
		cfg.BootArgs = appendArgs(cfg.BootArgs, fmt.Sprintf("mergen.exit_port=%#x", qemuExitPort))
	}

	// Device models: PCI on q35, virtio-mmio on microvm.
	bus := "pci"
	if machine == "microvm" {
		bus = "device"
	}
	cpu := "max" // everything TCG can emulate
	if accel == "kvm" {
		cpu = "host"
	}
	argv := []string{bin,
		"-name", s.ID,
		"-M", machine,
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(s.VCPU),
		"-m", strconv.Itoa(s.MemMiB),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-serial", "stdio",
		// A guest reboot ends the VMM, as with Firecracker; the service
		// manager decides whether to start it again.
		"-no-reboot",
		"-sandbox", qemuSandbox,
		// The kernel, initrd and command line, from a file rather than
		// -kernel, -initrd and -append: see qemuBootFile.
		"-readconfig", cfg.BootConfig,
	}
	for _, d := range cfg.Drives {
		id := "disk-" + d.ID // QEMU ids must start with a letter
		opts := "file=" + d.Path + ",if=none,id=" + id + ",format=raw"
		if d.ReadOnly {
			opts += ",readonly=on"
		}
		argv = append(argv, "-drive", opts, "-device", "virtio-blk-"+bus+",drive="+id)
	}
	if cfg.NIC != nil {
		argv = append(argv,
			"-netdev", "tap,id=n0,ifname="+cfg.NIC.TapName+",script=no,downscript=no",
			"-device", "virtio-net-"+bus+",netdev=n0,mac="+cfg.NIC.MAC)
	}
	if machine == "q35" {
		argv = append(argv, "-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=1", qemuExitPort))
	}
	if q.entropy {
		argv = append(argv,
			"-object", "rng-random,id=rng0,filename=/dev/urandom",
			"-device", "virtio-rng-"+bus+",rng=rng0")
	}
	// The agent channel: a virtio-serial port mergen-init serves (see
	// internal/agentproto), its host end a socket in the run directory.
	cfg.AgentSocket = filepath.Join(s.WorkDir, qemuAgentSocket)
	argv = append(argv,
		"-device", "virtio-serial-"+bus+",id=vser0",
		"-chardev", "socket,id=agent0,path="+cfg.AgentSocket+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=agent0,name="+agentSerialName)
	// The interactive console: the second serial port (ttyS1), where
	// mergen-init keeps a shell, its host end a socket in the run
	// directory; the first stays the console log.
	cfg.ConsoleSocket = filepath.Join(s.WorkDir, qemuConsoleSocket)
	argv = append(argv,
		"-chardev", "socket,id=console1,path="+cfg.ConsoleSocket+",server=on,wait=off",
		"-serial", "chardev:console1")
	argv = append(argv, "-qmp", "unix:"+s.SocketPath+",server=on,wait=off")
	cfg.Argv = argv
	// Refuse now, at create, what the boot file cannot carry.
	if _, err := cfg.bootFile(); err != nil {
		return qemuConfig{}, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	return cfg, nil
}

// bootFile renders the -readconfig file: a [machine] section with the
// machine properties that -kernel, -initrd and -append set.
func (c qemuConfig) bootFile() ([]byte, error) {
	var b strings.Builder
	b.WriteString("# The kernel and its command line, read by QEMU (-readconfig); written by mergen from vm.json.\n[machine]\n")
	for _, p := range []struct{ key, field, value, sized string }{
		{"kernel", "kernel", c.Kernel, "kernel"},
		{"initrd", "initrd", c.Initrd, "initrd"},
		// The command line carries the request's bootArgs, extraEnv and
		// argv: too long, it names them all, as Firecracker's check does.
		{"append", "bootArgs", c.BootArgs, "bootArgs, extraEnv and argv: the kernel command line"},
	} {
		if p.value == "" {
			// The parser wants at least one character between the
			// quotes; an absent property is QEMU's default anyway.
			continue
		}
		if strings.ContainsAny(p.value, "\"\r\n\x00") {
			return nil, fmt.Errorf("%s: contains a double quote or a line break, which QEMU's configuration file cannot carry", p.field)
		}
		line := p.key + ` = "` + p.value + `"`
		if len(line) > qemuConfigLineMax {
			return nil, fmt.Errorf("%s: %d bytes, at most %d fit QEMU's configuration file, which keeps them off the VMM's command line (put large configuration on an env disk)",
				p.sized, len(p.value), qemuConfigLineMax-len(line)+len(p.value))
		}
		b.WriteString(line + "\n")
	}
	return []byte(b.String()), nil
}

// fromArgvBootArgs turns the argv of a vm.json rendered before the boot
// file existed (-kernel, -initrd and -append in argv) into the current
// form: those options out, -readconfig in their place.
func fromArgvBootArgs(argv []string, bootConfig string) []string {
	out := make([]string, 0, len(argv))
	placed := false
	for i := 0; i < len(argv); i++ {
		switch argv[i] {
		case "-kernel", "-initrd", "-append":
			i++ // and its value
			if !placed {
				out = append(out, "-readconfig", bootConfig)
				placed = true
			}
			continue
		}
		out = append(out, argv[i])
	}
	return out
}

// bzImage picks the kernel QEMU should load. The base assets carry an
// uncompressed vmlinux for Firecracker; QEMU boots the compressed bzImage
// next to it (vmlinuz) when there is one.
func bzImage(kernel string) string {
	dir, base := filepath.Split(kernel)
	if !strings.Contains(base, "vmlinux") {
		return kernel
	}
	for _, alt := range []string{strings.Replace(base, "vmlinux", "vmlinuz", 1), "vmlinuz"} {
		p := filepath.Join(dir, alt)
		if regularFile(p) == nil {
			return p
		}
	}
	return kernel
}

// Command runs the argv stored in vm.json: the file is the record of what
// runs. It opens the kernel QEMU boots, the initrd and every disk below the
// directory each was checked in at create, without following links, and
// gives QEMU those open files: the argv's -drive file= and the boot file's
// kernel and initrd become /proc/self/fd/N, which QEMU, inheriting the
// descriptors, opens as the same inodes whatever the paths name by then.
// vm.json's drives and kernel must be the record's (the spec's). It writes
// the boot file (kernel, initrd, command line) that the argv names, mode
// 0600. A vm.json from before the boot file, whose argv carries -append,
// is run in the current form: its command line never reaches QEMU's argv.
func (q *qemu) Command(s Spec, configPath string) (Launch, error) {
	if err := s.validate(false); err != nil {
		return Launch{}, err
	}
	b, err := os.ReadFile(configPath)
	if err != nil {
		return Launch{}, fmt.Errorf("vm %s: qemu config: %w", s.ID, err)
	}
	var cfg qemuConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return Launch{}, fmt.Errorf("vm %s: qemu config %s: %w", s.ID, configPath, err)
	}
	if cfg.VMM != "qemu" || len(cfg.Argv) == 0 {
		return Launch{}, fmt.Errorf("vm %s: %s is not a qemu configuration (vmm %q, %d arguments)", s.ID, configPath, cfg.VMM, len(cfg.Argv))
	}
	if cfg.QMPSocket != s.SocketPath {
		return Launch{}, fmt.Errorf("vm %s: %s has QMP socket %q, the VM expects %q", s.ID, configPath, cfg.QMPSocket, s.SocketPath)
	}
	if s.WorkDir == "" {
		return Launch{}, fmt.Errorf("vm %s: workDir: empty, but QEMU's boot configuration (%s) lives there", s.ID, qemuBootFile)
	}
	bootConfig := filepath.Join(s.WorkDir, qemuBootFile)
	if cfg.BootConfig == "" {
		cfg.Argv = fromArgvBootArgs(cfg.Argv, bootConfig)
		cfg.BootConfig = bootConfig
	}
	if cfg.BootConfig != bootConfig {
		return Launch{}, fmt.Errorf("vm %s: %s has boot configuration %q, the VM expects %q", s.ID, configPath, cfg.BootConfig, bootConfig)
	}
	if i := slices.Index(cfg.Argv, "-readconfig"); i < 0 || i+1 == len(cfg.Argv) || cfg.Argv[i+1] != bootConfig || slices.Contains(cfg.Argv, "-append") {
		return Launch{}, fmt.Errorf("vm %s: %s: argv must take the kernel command line from -readconfig %s, and have no -append", s.ID, configPath, bootConfig)
	}
	if cfg.Accel == "kvm" {
		if err := openKVM(); err != nil {
			return Launch{}, fmt.Errorf("vm %s: %w: %s asks for KVM but /dev/kvm is unusable: %v", s.ID, ErrUnavailable, configPath, err)
		}
	}
	bin, err := findBinary(cfg.Argv[0], qemuDefaultBin)
	if err != nil {
		return Launch{}, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	o := &opener{id: s.ID, uid: s.UID, gid: s.GID}
	argv, err := q.openFiles(s, configPath, &cfg, o)
	if err != nil {
		o.close()
		return Launch{}, err
	}
	boot, err := cfg.bootFile()
	if err != nil {
		o.close()
		return Launch{}, fmt.Errorf("vm %s: %s: %w", s.ID, configPath, err)
	}
	if err := atomicfile.WriteFile(bootConfig, boot, 0o600); err != nil {
		o.close()
		return Launch{}, fmt.Errorf("vm %s: qemu boot configuration: %w", s.ID, err)
	}
	l := Launch{Argv: withSandbox(append([]string{bin}, argv[1:]...)), Files: o.files}
	if s.NIC != nil && s.NIC.File != nil {
		i := slices.Index(l.Argv, "tap,id=n0,ifname="+s.NIC.TapName+",script=no,downscript=no")
		if i < 0 {
			o.close()
			return Launch{}, fmt.Errorf("vm %s: %s: argv has no -netdev for tap %s", s.ID, configPath, s.NIC.TapName)
		}
		l.Argv[i] = "tap,id=n0,fd=" + strconv.Itoa(int(s.NIC.File.Fd()))
		l.Files = append(l.Files, s.NIC.File)
	}
	if s.Restore != nil {
		f, args, err := openRestore(s)
		if err != nil {
			l.Close()
			return Launch{}, err
		}
		l.Files = append(l.Files, f)
		l.Argv = append(l.Argv, args...)
	}
	if s.UID != 0 {
		if l.Cred, err = q.unprivileged(s, cfg.Accel, bootConfig); err != nil {
			o.close()
			return Launch{}, err
		}
	}
	return l, nil
}

// qemuSandbox is QEMU's seccomp filter: besides the default deny list, no
// obsolete system calls, no privilege changes (set*uid, set*gid), no
// fork/exec and no scheduler or resource-limit changes. QEMU applies it
// before -runas would drop privileges (and then dies of the forbidden
// setuid), which is why the start stage drops them before the exec instead.
const qemuSandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// withSandbox adds -sandbox to an argv that has none: vm.json files
// rendered before it existed get it when they are started.
func withSandbox(argv []string) []string {
	if slices.Contains(argv, "-sandbox") {
		return argv
	}
	return append(argv, "-sandbox", qemuSandbox)
}

// searchable gives dir search permission for others (it is mergen's own
// run root) and checks that every directory above it has it.
func searchable(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o001 == 0 {
		if err := os.Chmod(dir, fi.Mode().Perm()|0o011); err != nil {
			return err
		}
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %v) is not searchable by the VM's uid, which QEMU runs as: give it o+x", d, fi.Mode().Perm())
		}
		if d == "/" {
			return nil
		}
	}
}

// unprivileged prepares what QEMU, running as the VM's uid/gid, needs and
// cannot open itself: the boot file (QEMU reads it; lchown, never through
// a link), the run directory (it creates its QMP socket there: root:<gid>,
// mode 1770, so it may add files but not remove or replace root's, such as
// the pid file), and, with KVM, /dev/kvm's group. The disks were given to
// it as they were opened (opener).
func (q *qemu) unprivileged(s Spec, accel, bootConfig string) (*Cred, error) {
	if err := os.Lchown(bootConfig, s.UID, s.GID); err != nil {
		return nil, fmt.Errorf("vm %s: qemu boot configuration: %w", s.ID, err)
	}
	dir := filepath.Dir(s.SocketPath)
	if err := unix.Fchownat(unix.AT_FDCWD, dir, 0, s.GID, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, fmt.Errorf("vm %s: socket directory: %w", s.ID, err)
	}
	if err := os.Chmod(dir, 0o770|os.ModeSticky); err != nil {
		return nil, fmt.Errorf("vm %s: socket directory: %w", s.ID, err)
	}
	// QEMU reaches it by path: the directory holding every VM's run
	// directory (mergen's run root) is made searchable (0711: names are
	// not listed), and every directory above must already be.
	if err := searchable(filepath.Dir(dir)); err != nil {
		return nil, fmt.Errorf("vm %s: socket directory %s: %w", s.ID, dir, err)
	}
	c := &Cred{UID: s.UID, GID: s.GID, Groups: []int{s.GID}}
	if accel == "kvm" {
		var st unix.Stat_t
		if err := unix.Stat(kvmDevice, &st); err != nil {
			return nil, fmt.Errorf("vm %s: %w", s.ID, err)
		}
		if st.Mode&0o060 != 0o060 || st.Gid == 0 {
			return nil, fmt.Errorf("vm %s: %w: %s (mode %o, gid %d) is not read-write for a group that the VM's uid %d could join: give it to a kvm group with mode 0660", s.ID, ErrUnavailable, kvmDevice, st.Mode&0o777, st.Gid, s.UID)
		}
		c.Groups = append(c.Groups, int(st.Gid))
	}
	return c, nil
}

// openFiles opens the kernel, initrd and drives of vm.json, after checking
// that they are the spec's, and points cfg's kernel and initrd and the
// returned argv's -drive options at the open files.
func (q *qemu) openFiles(s Spec, configPath string, cfg *qemuConfig, o *opener) ([]string, error) {
	// The kernel QEMU boots is the spec's, or the bzImage Config chose
	// beside it.
	if cfg.Kernel != s.Kernel && filepath.Dir(cfg.Kernel) != filepath.Dir(s.Kernel) {
		return nil, fmt.Errorf("vm %s: %s boots kernel %q, the VM's is %q", s.ID, configPath, cfg.Kernel, s.Kernel)
	}
	if cfg.Initrd != s.Initrd {
		return nil, fmt.Errorf("vm %s: %s has initrd %q, the VM's is %q", s.ID, configPath, cfg.Initrd, s.Initrd)
	}
	k, err := o.open("kernel", cfg.Kernel, s.KernelBeneath, false)
	if err != nil {
		return nil, err
	}
	cfg.Kernel = beneath.FDPath(k)
	if cfg.Initrd != "" {
		f, err := o.open("initrd", cfg.Initrd, s.InitrdBeneath, false)
		if err != nil {
			return nil, err
		}
		cfg.Initrd = beneath.FDPath(f)
	}
	want := map[string]Drive{}
	for _, d := range s.Drives {
		want[d.Path] = d
	}
	if len(cfg.Drives) != len(s.Drives) {
		return nil, fmt.Errorf("vm %s: %s has %d drives, the VM %d", s.ID, configPath, len(cfg.Drives), len(s.Drives))
	}
	for _, d := range cfg.Drives {
		if w, ok := want[d.Path]; !ok || w.ID != d.ID || w.ReadOnly != d.ReadOnly {
			return nil, fmt.Errorf("vm %s: %s has drive %s at %q (read-only %t), which is not one of the VM's", s.ID, configPath, d.ID, d.Path, d.ReadOnly)
		}
	}
	fdPath := map[string]string{}
	for _, d := range s.Drives {
		f, err := o.open("drive "+d.ID, d.Path, d.Beneath, !d.ReadOnly)
		if err != nil {
			return nil, err
		}
		fdPath[d.Path] = beneath.FDPath(f)
	}
	argv := slices.Clone(cfg.Argv)
	drives := 0
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] != "-drive" {
			continue
		}
		i++
		path, rest, more := strings.Cut(strings.TrimPrefix(argv[i], "file="), ",")
		fd, ok := fdPath[path]
		if !strings.HasPrefix(argv[i], "file=") || !ok {
			return nil, fmt.Errorf("vm %s: %s: -drive %q is not one of the VM's drives", s.ID, configPath, argv[i])
		}
		argv[i] = "file=" + fd
		if more {
			argv[i] += "," + rest
		}
		drives++
	}
	if drives != len(s.Drives) {
		return nil, fmt.Errorf("vm %s: %s: argv attaches %d drives, the VM has %d", s.ID, configPath, drives, len(s.Drives))
	}
	return argv, nil
}

func (q *qemu) Status(ctx context.Context, socketPath string) (State, error) {
	c, err := dialQMP(ctx, socketPath)
	if err != nil {
		return State{}, err
	}
	defer c.Close()
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.execute("query-status", nil, &st); err != nil {
		return State{}, err
	}
	return State{Running: st.Running, Paused: st.Status == "paused", State: st.Status}, nil
}

// Pause stops the guest's vCPUs with QMP's stop; stopping a stopped
// machine is a no-op for QEMU, so pausing twice succeeds.
func (q *qemu) Pause(ctx context.Context, socketPath string) error {
	return q.runState(ctx, socketPath, "stop")
}

// Resume continues the guest's vCPUs with QMP's cont, which QEMU accepts on
// a running machine too.
func (q *qemu) Resume(ctx context.Context, socketPath string) error {
	return q.runState(ctx, socketPath, "cont")
}

func (q *qemu) runState(ctx context.Context, socketPath, cmd string) error {
	c, err := dialQMP(ctx, socketPath)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.execute(cmd, nil, nil)
}

// Shutdown presses Ctrl-Alt-Del on the guest's keyboard, which the guest
// init treats as on Firecracker. A machine without a PS/2 keyboard
// (microvm), or a refused key press, gets an ACPI power-button press
// instead.
// Release has nothing to do: QEMU's files live in the VM's run directory.
func (q *qemu) Release(Spec) error { return nil }

func (q *qemu) Shutdown(ctx context.Context, socketPath string) error {
	c, err := dialQMP(ctx, socketPath)
	if err != nil {
		return err
	}
	defer c.Close()
	var machine string
	if err := c.execute("qom-get", map[string]string{"path": "/machine", "property": "type"}, &machine); err != nil {
		return err
	}
	if !strings.Contains(machine, "microvm") {
		keys := []map[string]string{{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}
		err := c.execute("send-key", map[string]any{"keys": keys}, nil)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
	}
	return c.execute("system_powerdown", nil, nil)
}
