package store

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/mergenhq/mergen/internal/bootparam"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/vmm"
)

// BootArgs composes the guest kernel command line: serial console, power-off
// on panic and reboot, mergen-init as init, the guest's static network
// configuration in the kernel's ip= syntax (mergen-init applies it itself),
// extraEnv, then the caller's own arguments, which win where the kernel takes
// the last value.
func BootArgs(m Meta, extra string) string {
	args := []string{"console=ttyS0", "reboot=k", "panic=1", "init=/sbin/init"}
	if m.GuestIP != "" {
		mask := netmask(m.PrefixLen)
		args = append(args, fmt.Sprintf("ip=%s::%s:%s:%s:eth0:off", m.GuestIP, m.Gateway, mask, Hostname(m)))
	}
	if a := bootparam.EnvArg(m.ExtraEnv); a != "" {
		args = append(args, a)
	}
	if enc := bootparam.EncodeArgv(m.Argv); enc != "" {
		args = append(args, bootparam.ArgvParam+"="+enc)
	}
	if extra = strings.TrimSpace(extra); extra != "" {
		args = append(args, extra)
	}
	return strings.Join(args, " ")
}

// Hostname is the guest's hostname: its name tag, else vm-<short id>.
func Hostname(m Meta) string {
	if h := m.Tags["name"]; h != "" {
		return h
	}
	return "vm-" + ShortID(m.ID)
}

func netmask(bits int) string {
	if bits <= 0 || bits > 32 {
		return ""
	}
	v := ^uint32(0) << (32 - bits)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// Spec is the VMM driver's view of the VM, with its run-time paths from the
// layout. The guest finds its disks by filesystem label, so the attach order
// below is a convention, not a contract: root, agent, payload, env, data.
func Spec(m Meta, p layout.VM) vmm.Spec {
	s := vmm.Spec{
		ID:            m.ID,
		VCPU:          m.VCPU,
		MemMiB:        m.MemMiB,
		Kernel:        m.Kernel,
		KernelBeneath: m.DiskRoots["kernel"],
		Initrd:        m.Initrd,
		InitrdBeneath: m.DiskRoots["initrd"],
		BootArgs:      m.BootArgs,
		SocketPath:    p.Socket,
		WorkDir:       p.RunDir,
		NIC:           &vmm.NIC{TapName: m.TapName, MAC: m.MAC},
		UID:           m.VMMUID,
		GID:           m.VMMGID,
	}
	add := func(id, field, path string, ro, root bool) {
		if path != "" {
			s.Drives = append(s.Drives, vmm.Drive{ID: id, Path: path, Beneath: m.DiskRoots[field], ReadOnly: ro, Root: root})
		}
	}
	add("rootfs", "rootfs", m.Disks.Rootfs, true, true)
	add("agent", "agentDisk", m.Disks.Agent, true, false)
	add("payload", "payloadDisk", m.Disks.Payload, true, false)
	add("env", "envDisk", m.Disks.Env, true, false)
	add("data", "dataDisk", m.Disks.Data, false, false)
	return s
}
