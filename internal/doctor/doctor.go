// Package doctor checks that a host can run mergen VMs and that a base
// assets directory holds what a VM boots from. Each check says PASS, FAIL or
// WARN, why, and how to fix it; `mergen doctor` prints them and the image
// converter reuses them.
package doctor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/guest"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/vmm"
	"golang.org/x/sys/unix"
)

// Status is a check's verdict.
type Status string

const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	Warn Status = "WARN" // works, but something optional is missing or degraded
)

// Check is one verdict with its reason and, unless it passed, the fix.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Reason string `json:"reason"`
	Fix    string `json:"fix,omitempty"`
}

// Failed reports whether any check failed.
func Failed(checks []Check) bool {
	for _, c := range checks {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

// Print writes the checks as aligned text lines or as a JSON array.
func Print(w io.Writer, checks []Check, asJSON bool) error {
	if asJSON {
		if checks == nil {
			checks = []Check{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(checks)
	}
	width := 0
	for _, c := range checks {
		width = max(width, len(c.Name))
	}
	var b bytes.Buffer
	for _, c := range checks {
		fmt.Fprintf(&b, "%-4s  %-*s  %s\n", c.Status, width, c.Name, c.Reason)
		if c.Fix != "" && c.Status != Pass {
			fmt.Fprintf(&b, "      %-*s  fix: %s\n", width, "", c.Fix)
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// Host checks the machine: KVM, the VMM binaries, systemd, nftables, tun.
// firecrackerBin and qemuBin are the configured VMM binaries
// (MGR_FIRECRACKER_BIN, MGR_QEMU_BIN); empty means the usual name on PATH.
func Host(firecrackerBin, qemuBin string) []Check {
	qemu := binary(qemuBin, "qemu-system-x86_64", "MGR_QEMU_BIN", "QEMU", "apt-get install qemu-system-x86, or set MGR_QEMU_BIN")
	fc := binary(firecrackerBin, "firecracker", "MGR_FIRECRACKER_BIN", "Firecracker", "install a Firecracker release binary on PATH, or set MGR_FIRECRACKER_BIN")
	// One VMM is enough; only both missing is a failure.
	if qemu.Status == Fail && fc.Status != Fail {
		qemu.Status = Warn
	}
	if fc.Status == Fail && qemu.Status != Fail {
		fc.Status = Warn
	}
	kvm := kvmCheck()
	if kvm.Status == Fail && qemu.Status == Pass {
		kvm.Status = Warn
		kvm.Reason += " (QEMU can still run guests in slow software emulation, MGR_QEMU_ACCEL=tcg)"
	}
	return []Check{kvm, fc, qemu, systemdCheck(), nftCheck(), tunCheck()}
}

// VMM reports how VMs created now would run: with QEMU, whether guests get
// KVM or software emulation (TCG, many times slower: never silent).
// vmmName is MGR_VMM (empty: the host default), d the driver settings.
func VMM(vmmName string, d config.Driver) []Check {
	if vmmName == "" {
		vmmName = vmm.DefaultName(d)
	}
	var out []Check
	if vmmName == "firecracker" {
		c := Check{Name: "firecracker jailer"}
		if r := vmm.Resolve("firecracker", d); r.Jailer {
			c.Status, c.Reason = Pass, "Firecracker runs under the jailer ("+r.JailerBin+"), chrooted, as each VM's own uid/gid, in its own cgroup"
		} else {
			c.Status, c.Reason = Warn, "Firecracker runs as root without the jailer (MGR_JAILER=0, or no jailer binary found): an escaped VMM is root on this host"
			c.Fix = "install Firecracker's jailer next to it (or set MGR_JAILER_BIN) and leave MGR_JAILER unset"
		}
		out = append(out, c)
	}
	if vmmName == "qemu" {
		c := Check{Name: "qemu accelerator"}
		accel, why, err := vmm.QEMUAccelerator(d)
		switch {
		case err != nil:
			c.Status, c.Reason = Fail, err.Error()
		case accel == "tcg":
			c.Status, c.Reason = Warn, "QEMU runs guests in software emulation (TCG), many times slower than KVM: "+why
			c.Fix = "run on a host with working KVM (or set MGR_QEMU_ACCEL=kvm where KVM is known to work for your kernels)"
		default:
			c.Status, c.Reason = Pass, "QEMU runs guests with KVM: "+why
		}
		out = append(out, c)
	}
	return out
}

func binary(p, def, env, what, fix string) Check {
	name := strings.ToLower(what) + " binary"
	if p == "" {
		p = def
	}
	found, err := exec.LookPath(p)
	if err != nil {
		return Check{Name: name, Status: Fail, Reason: fmt.Sprintf("%s not found (%s)", p, env), Fix: fix}
	}
	return Check{Name: name, Status: Pass, Reason: found}
}

const kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
const kvmCreateVM = 0xAE01

func kvmCheck() Check {
	c := Check{Name: "kvm", Fix: "load kvm_intel or kvm_amd, enable virtualisation (or nested virtualisation) and give this user access to /dev/kvm"}
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		c.Status, c.Reason = Fail, fmt.Sprintf("open /dev/kvm: %v", err)
		return c
	}
	defer unix.Close(fd)
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 || v != 12 {
		c.Status, c.Reason = Fail, fmt.Sprintf("/dev/kvm is not a usable KVM device (API version %d, %v)", v, errno)
		return c
	}
	vm, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCreateVM, 0)
	if errno != 0 {
		c.Status, c.Reason = Fail, fmt.Sprintf("KVM refuses to create a VM: %v", errno)
		return c
	}
	unix.Close(int(vm))
	c.Status, c.Reason, c.Fix = Pass, "/dev/kvm creates VMs (API 12)", ""
	return c
}

func systemdCheck() Check {
	if st, err := os.Stat("/run/systemd/system"); err == nil && st.IsDir() {
		return Check{Name: "systemd", Status: Pass, Reason: "systemd is the init system"}
	}
	return Check{Name: "systemd", Status: Warn, Reason: "systemd is not running; VMs are supervised by the detached supervisor",
		Fix: "run mergen on a systemd host to have VMs survive daemon restarts as units (MGR_SUPERVISOR=systemd)"}
}

func nftCheck() Check {
	c := Check{Name: "nftables", Fix: "apt-get install nftables, load nf_tables, and run mergen as root"}
	if _, err := os.Stat("/proc/net/netfilter"); err != nil {
		c.Status, c.Reason = Fail, "the kernel has no netfilter"
		return c
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		c.Status, c.Reason = Warn, "nft not found: port forwarding works, but rules cannot be inspected"
		c.Fix = "apt-get install nftables"
		return c
	}
	if out, err := exec.Command(nft, "list", "tables").CombinedOutput(); err != nil {
		c.Status, c.Reason = Fail, fmt.Sprintf("nft list tables: %v: %s", err, strings.TrimSpace(string(out)))
		return c
	}
	c.Status, c.Reason, c.Fix = Pass, "nf_tables answers", ""
	return c
}

func tunCheck() Check {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return Check{Name: "tun", Status: Fail, Reason: fmt.Sprintf("open /dev/net/tun: %v", err), Fix: "modprobe tun and run mergen as root"}
	}
	f.Close()
	return Check{Name: "tun", Status: Pass, Reason: "/dev/net/tun opens"}
}

// BaseAssets checks a base assets directory (MGR_BASE_ASSETS_DIR).
func BaseAssets(dir string) []Check {
	build := "run `make assets` (scripts/build-assets.sh " + dir + ")"
	return []Check{
		elfFile(dir, "vmlinux", Fail, "uncompressed kernel for Firecracker", build),
		present(dir, "vmlinuz", Warn, "bzImage kernel for QEMU", build),
		present(dir, "initrd.img", Warn, "initramfs that loads the distro kernel's virtio modules", build),
		ext4File(dir, "golden-rootfs.ext4", imagemeta.LabelRoot, Fail, build),
		ext4File(dir, "agent-rootfs.ext4", imagemeta.LabelAgent, Fail, build),
		elfFile(dir, "bin/sbin-init", Fail, "mergen-init", build),
		elfFile(dir, "bin/mergen-agent", Fail, "agent-disk copy of mergen-init", build),
		ext4File(dir, "env-rootfs.ext4", imagemeta.LabelEnv, Warn, "optional: build an env disk labelled "+imagemeta.LabelEnv+" when VMs share one"),
	}
}

func present(dir, name string, missing Status, what, fix string) Check {
	p := filepath.Join(dir, name)
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() {
		return Check{Name: name, Status: missing, Reason: fmt.Sprintf("%s missing: %s", what, p), Fix: fix}
	}
	return Check{Name: name, Status: Pass, Reason: fmt.Sprintf("%s (%d bytes)", p, st.Size())}
}

func elfFile(dir, name string, missing Status, what, fix string) Check {
	c := present(dir, name, missing, what, fix)
	if c.Status != Pass {
		return c
	}
	p := filepath.Join(dir, name)
	f, err := os.Open(p)
	if err != nil {
		return Check{Name: name, Status: Fail, Reason: err.Error(), Fix: fix}
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != "\x7fELF" {
		return Check{Name: name, Status: Fail, Reason: fmt.Sprintf("%s is not an ELF file (%s)", p, what), Fix: fix}
	}
	return c
}

func ext4File(dir, name, label string, missing Status, fix string) Check {
	c := present(dir, name, missing, "ext4 image labelled "+label, fix)
	if c.Status != Pass {
		return c
	}
	p := filepath.Join(dir, name)
	f, err := os.Open(p)
	if err != nil {
		return Check{Name: name, Status: Fail, Reason: err.Error(), Fix: fix}
	}
	defer f.Close()
	got, ok, err := guest.Ext4Label(f)
	switch {
	case err != nil:
		return Check{Name: name, Status: Fail, Reason: fmt.Sprintf("%s: %v", p, err), Fix: fix}
	case !ok:
		return Check{Name: name, Status: Fail, Reason: p + " is not an ext4 file system", Fix: fix}
	case got != label:
		return Check{Name: name, Status: Fail, Reason: fmt.Sprintf("%s is labelled %q, want %q (the guest finds disks by label)", p, got, label),
			Fix: fmt.Sprintf("e2label %s %s, or rebuild it", p, label)}
	}
	c.Reason = fmt.Sprintf("%s, label %s", p, label)
	return c
}
