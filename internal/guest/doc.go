// Package guest is mergen-init: PID 1 inside every mergen VM, and the
// initramfs /init that gets a stock distro kernel to its root disk.
//
// Boot contract (see docs/guest.md for the operator's view):
//
//   - Kernel command line: `console=ttyS0 reboot=k panic=1 init=/sbin/init`
//     plus optional `ip=<guest>::<gateway>:<netmask>:<hostname>:eth0:off[:<dns>]`
//     (applied by mergen-init; no network configuration without it),
//     `mergen.env=<base64url(JSON object)>` and
//     `mergen.restart=always|on-failure|no` and `mergen.stop_timeout=<seconds>`.
//   - As the initramfs /init (argv[0] "/init"): load the modules listed in
//     /lib/modules/mergen/modules.list (finit_module, in order), find the ext4
//     file system labelled mergen-root, mount it read-only and switch_root to
//     its /sbin/init.
//   - As /sbin/init: mount the kernel file systems, load the same module list
//     from the root disk, set the hostname and network, find the disks by
//     label (mergen-payload required; mergen-agent, mergen-env, mergen-data
//     optional; an agent disk whose sbin-init differs takes over as init),
//     mount the payload read-only under an overlay whose upper
//     layer is on mergen-data or a tmpfs, and run the runtime's argv chrooted
//     there as the image's user, in its working directory, with env = image
//     env + env disk `env` + mergen.env (later wins). The payload's
//     /run/mergen/env holds the VM's extraEnv (mergen.env, or the last
//     identity's) as shell-sourceable KEY='value' lines, mode 0600, the
//     payload user's, replaced atomically.
//   - Agent (internal/agentproto), from before the payload starts until
//     power-off, on the virtio-serial port named org.mergen.agent (QEMU)
//     and on vsock port 1024 (Firecracker), whichever exists: `ping`, and
//     `identity`, which makes a guest restored from another VM's snapshot
//     this VM: clock, credited entropy and a CRNG reseed, hostname and
//     /etc files, MAC, address, default route and a flushed neighbour table,
//     extraEnv for /run/mergen/env and for every later payload start. The
//     answer is OK only when every step succeeded; otherwise it names the
//     step. `secret` (and an identity's secret) sets the exec agent's key,
//     kept in PID 1's memory only.
//   - Exec agent (internal/execproto), from when the payload's root is
//     ready, on TCP port 10022: commands (pipes or a terminal) and tar
//     copies of files in the payload's root, for a host that answers the
//     challenge with the VM's secret (docs/exec.md).
//   - Console: `mergen-init: ...` progress lines, `[payload] ...` output, one
//     `mergen-init: boot timeline: kernel-start->payload-exec <s>s` line and,
//     at the end, `mergen-init: exit status N` before sync, unmount and
//     power-off.
//   - Stop: Ctrl-Alt-Del (SIGINT to PID 1, as CAD is turned off), SIGTERM,
//     SIGPWR or the ACPI power button send the stop signal to the payload,
//     SIGKILL follows after the stop timeout.
package guest
