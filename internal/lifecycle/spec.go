// Package lifecycle is what runs when a VM changes state: the stages that
// the service manager calls through mergen-lifecycle (pre-start, start,
// post-start, stop, post-stop, on-failure), the toolkit commands (status,
// restart, pre-delete, delete, post-delete), and the pieces of a VM's
// configuration that are derived from its metadata (kernel command line,
// VMM spec, environment file).
//
// Every stage reads the VM from the store, so a stage run by systemd, by the
// detached supervisor or by hand behaves the same.
package lifecycle

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
)

// BootArgs composes the guest kernel command line: serial console, power-off
// on panic and reboot, mergen-init as init, the guest's static network
// configuration in the kernel's ip= syntax (mergen-init applies it itself),
// extraEnv, then the caller's own arguments, which win where the kernel takes
// the last value.
func BootArgs(m store.Meta, extra string) string {
	args := []string{"console=ttyS0", "reboot=k", "panic=1", "init=/sbin/init"}
	if m.GuestIP != "" {
		mask := netmask(m.PrefixLen)
		host := m.Tags["name"]
		if host == "" {
			host = "vm-" + store.ShortID(m.ID)
		}
		args = append(args, fmt.Sprintf("ip=%s::%s:%s:%s:eth0:off", m.GuestIP, m.Gateway, mask, host))
	}
	if enc := EncodeEnv(m.ExtraEnv); enc != "" {
		args = append(args, "mergen.env="+enc)
	}
	if extra = strings.TrimSpace(extra); extra != "" {
		args = append(args, extra)
	}
	return strings.Join(args, " ")
}

func netmask(bits int) string {
	if bits <= 0 || bits > 32 {
		return ""
	}
	v := ^uint32(0) << (32 - bits)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// Spec is the VMM driver's view of the VM. The guest finds its disks by
// filesystem label, so the attach order below is a convention, not a
// contract: root, agent, payload, env, data.
func Spec(m store.Meta) vmm.Spec {
	s := vmm.Spec{
		ID:         m.ID,
		VCPU:       m.VCPU,
		MemMiB:     m.MemMiB,
		Kernel:     m.Kernel,
		Initrd:     m.Initrd,
		BootArgs:   m.BootArgs,
		SocketPath: m.Paths.Socket,
		WorkDir:    m.Paths.RunDir,
		NIC:        &vmm.NIC{TapName: m.TapName, MAC: m.MAC},
	}
	add := func(id, path string, ro, root bool) {
		if path != "" {
			s.Drives = append(s.Drives, vmm.Drive{ID: id, Path: path, ReadOnly: ro, Root: root})
		}
	}
	add("rootfs", m.Disks.Rootfs, true, true)
	add("agent", m.Disks.Agent, true, false)
	add("payload", m.Disks.Payload, true, false)
	add("env", m.Disks.Env, true, false)
	add("data", m.Disks.Data, false, false)
	return s
}

// Env is the configuration the lifecycle stages need, as KEY=VALUE pairs:
// written into each VM's service-manager environment file, and passed by the
// detached supervisor to the stages it runs, so that a stage sees the same
// configuration as the daemon that created the VM.
func Env(c config.Config) []string {
	env := []string{
		"MGR_CONFIG_ROOT=" + c.ConfigRoot,
		"MGR_RUN_ROOT=" + c.RunRoot,
		"MGR_DATA_ROOT=" + c.DataRoot,
		"MGR_GUEST_CIDR=" + c.GuestCIDR.String(),
		fmt.Sprintf("MGR_COMMAND_TIMEOUT_SECONDS=%d", int(c.CommandTimeout.Seconds())),
		fmt.Sprintf("MGR_STOP_TIMEOUT_SECONDS=%d", int(c.StopTimeout.Seconds())),
		"MGN_DAEMON_LOG_FILE=" + c.DaemonLogFile,
		"MGR_LOG_LEVEL=" + c.LogLevel,
		"MGR_LOG_FORMAT=" + c.LogFormat,
	}
	// Driver settings the stages need to find and run the VMM.
	for _, k := range []string{"PATH", "MGR_FIRECRACKER_BIN", "MGR_JAILER", "MGR_JAILER_BIN", "MGR_JAILER_UID", "MGR_JAILER_GID",
		"MGR_JAILER_CHROOT_BASE", "MGR_VSOCK", "MGR_QEMU_BIN", "MGR_QEMU_MACHINE", "MGR_QEMU_ACCEL", "MGN_ENABLE_ENTROPY_DEVICE"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// EnvFile renders the VM's service-manager environment file (systemd
// EnvironmentFile= syntax).
func EnvFile(c config.Config, m store.Meta) []byte {
	var b strings.Builder
	b.WriteString("# Environment of the lifecycle stages of VM " + m.ID + ", written by mergen.\n")
	for _, kv := range append([]string{"MGN_VM_ID=" + m.ID}, Env(c)...) {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "%s=%s\n", k, quoteEnv(v))
	}
	return []byte(b.String())
}

// quoteEnv quotes a value for systemd's EnvironmentFile= syntax.
func quoteEnv(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\"'\\$#;") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`)
	return `"` + r.Replace(v) + `"`
}

// EncodeEnv renders extraEnv as the guest reads it from the kernel command
// line: mergen.env=<base64url(JSON object)>. Empty for no variables.
func EncodeEnv(env map[string]string) string {
	if len(env) == 0 {
		return ""
	}
	b, _ := json.Marshal(env) // a map[string]string always encodes
	return base64.RawURLEncoding.EncodeToString(b)
}
