package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/beneath"
)

// QEMU snapshots are its migration stream written to a file: memory and
// device state in one stream, taken from a paused guest. The daemon opens
// the file and hands QEMU the descriptor over QMP (getfd), so QEMU — which
// runs unprivileged and may not spawn processes — never needs to open a
// path in the daemon's data root. A restore gives the new QEMU the file as
// an inherited descriptor (-incoming fd:N); QEMU loads it before the guest
// runs, and goes on running it.

// qemuMemoryFile is the one file of a QEMU snapshot.
const qemuMemoryFile = "memory"

// qemuAgentSocket is the host end of the agent's virtio-serial port, in the
// run directory. agentSerialName is the port's name, which mergen-init
// looks for (internal/agentproto's SerialName).
const (
	qemuAgentSocket = "agent.sock"
	agentSerialName = "org.mergen.agent"
	// qemuConsoleSocket is the host end of the interactive console.
	qemuConsoleSocket = "console.sock"
)

// migrateBandwidth lifts QEMU's default migration bandwidth limit (128
// MiB/s in 7.2), which exists for live migration over a network; a paused
// guest written to a local file should go as fast as the disk takes it.
const migrateBandwidth = 64 << 30

// Snapshot writes the paused guest's migration stream to dir/memory.
func (q *qemu) Snapshot(ctx context.Context, s Spec, dir string) ([]string, error) {
	c, err := dialQMP(ctx, s.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("vm %s: snapshot: %w", s.ID, err)
	}
	defer c.Close()
	var st struct {
		Status string `json:"status"`
	}
	if err := c.execute("query-status", nil, &st); err != nil {
		return nil, fmt.Errorf("vm %s: snapshot: %w", s.ID, err)
	}
	if st.Status != "paused" {
		return nil, fmt.Errorf("vm %s: snapshot: the guest is %q; it must be paused first", s.ID, st.Status)
	}
	path := filepath.Join(dir, qemuMemoryFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("vm %s: snapshot: %w", s.ID, err)
	}
	defer f.Close()
	const fdName = "mergen-snapshot"
	if err := c.sendFD("getfd", map[string]any{"fdname": fdName}, f); err != nil {
		return nil, fmt.Errorf("vm %s: snapshot: hand the memory file to qemu: %w", s.ID, err)
	}
	if err := c.execute("migrate-set-parameters", map[string]any{"max-bandwidth": migrateBandwidth}, nil); err != nil {
		return nil, fmt.Errorf("vm %s: snapshot: %w", s.ID, err)
	}
	if err := c.execute("migrate", map[string]any{"uri": "fd:" + fdName}, nil); err != nil {
		c.execute("closefd", map[string]any{"fdname": fdName}, nil)
		return nil, fmt.Errorf("vm %s: snapshot: %w", s.ID, err)
	}
	if err := c.waitMigration(ctx); err != nil {
		// A stream cut short (a full disk, a cancelled request) leaves the
		// guest paused where it was; the caller removes the partial file.
		c.execute("migrate_cancel", nil, nil)
		return nil, fmt.Errorf("vm %s: snapshot: %w", s.ID, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("vm %s: snapshot: %s: %w", s.ID, path, err)
	}
	return []string{qemuMemoryFile}, nil
}

// waitMigration polls query-migrate until the outgoing migration ends.
func (c *qmpConn) waitMigration(ctx context.Context) error {
	for {
		var m struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := c.execute("query-migrate", nil, &m); err != nil {
			return err
		}
		switch m.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			if m.ErrorDesc == "" {
				m.ErrorDesc = "no reason given"
			}
			return fmt.Errorf("migration stream %s: %s", m.Status, m.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sendFD sends a command with f attached (SCM_RIGHTS), as getfd expects.
func (c *qmpConn) sendFD(cmd string, args any, f *os.File) error {
	uc, ok := c.conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("qmp %s: %s: not a unix socket", c.socket, cmd)
	}
	b, err := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
	if err != nil {
		return err
	}
	if _, _, err := uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil); err != nil {
		return c.wrap(cmd, err)
	}
	return c.answer(cmd, nil)
}

// Restored waits until QEMU has loaded the incoming stream and runs the
// guest. A stream QEMU cannot load ends QEMU, which ends the wait with the
// socket's error.
func (q *qemu) Restored(ctx context.Context, s Spec) error {
	var last error
	var refused time.Time // since when connections have been refused
	for {
		// The socket appears once QEMU is up: until then, and while it
		// loads, wait.
		st, err := q.Status(ctx, s.SocketPath)
		switch {
		case errors.Is(err, unix.ECONNREFUSED):
			// The socket is there and nobody listens: QEMU came up and
			// ended, which it does when it cannot load the stream — or
			// it is between its bind and its listen. Refused for a while
			// means ended.
			if refused.IsZero() {
				refused = time.Now()
			}
			if time.Since(refused) >= restoreRefusedFor {
				return fmt.Errorf("vm %s: restore: qemu exited while loading the snapshot (its console log says why): %w", s.ID, err)
			}
			last = err
		case err != nil:
			refused = time.Time{}
			last = err
		case st.Running:
			return nil
		case st.Paused:
			// The stream records the source's run state, and a snapshot is
			// taken of a paused guest: continue it.
			if err := q.Resume(ctx, s.SocketPath); err != nil {
				return fmt.Errorf("vm %s: restore: resume the loaded guest: %w", s.ID, err)
			}
			continue
		case st.State != "inmigrate" && st.State != "prelaunch":
			return fmt.Errorf("vm %s: restore: qemu reports %q after loading the snapshot", s.ID, st.State)
		default:
			last = fmt.Errorf("qemu reports %q", st.State)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: restore: the guest did not run from the snapshot in time: %v", s.ID, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// restoreRefusedFor is how long QEMU's socket must refuse connections
// before Restored takes QEMU for gone.
const restoreRefusedFor = 2 * time.Second

// Agent connects to the agent port's socket.
func (q *qemu) Agent(ctx context.Context, s Spec) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(s.WorkDir, qemuAgentSocket))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("vm %s: agent: no agent channel (%s is absent: the VM is stopped, or its vm.json predates the channel)", s.ID, qemuAgentSocket)
		}
		return nil, fmt.Errorf("vm %s: agent: %w", s.ID, err)
	}
	return conn, nil
}

// Console connects to the interactive console's socket. QEMU takes one
// client at a time; the caller keeps others out.
func (q *qemu) Console(ctx context.Context, s Spec) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(s.WorkDir, qemuConsoleSocket))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("vm %s: console: %w: no interactive console (the VM is stopped, or its vm.json predates the console)", s.ID, ErrUnavailable)
		}
		return nil, fmt.Errorf("vm %s: console: %w", s.ID, err)
	}
	return conn, nil
}

// Version is the first line of `qemu-system-x86_64 --version` without its
// "QEMU emulator version " prefix, e.g. "7.2.22 (Debian 1:7.2+dfsg-7)":
// the build matters, as a distribution's patches may change the stream.
// It is cached while the binary is unchanged (versions, shared with the
// Firecracker driver).
func (q *qemu) Version(ctx context.Context) (string, error) {
	bin, err := findBinary(q.bin, qemuDefaultBin)
	if err != nil {
		return "", err
	}
	v, err := versions.Load(bin, func([]byte) (string, bool, error) {
		out, err := exec.CommandContext(ctx, bin, "--version").Output()
		if err != nil {
			return "", false, fmt.Errorf("%s --version: %w", bin, err)
		}
		line, _, _ := strings.Cut(string(out), "\n")
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "QEMU emulator version "))
		if line == "" {
			return "", false, fmt.Errorf("%s --version: no version in %q", bin, out)
		}
		return line, true, nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("qemu version: %w: %w", ErrUnavailable, err)
	}
	if err != nil {
		return "", fmt.Errorf("qemu version: %w", err)
	}
	return v, nil
}

// Shape names the machine, accelerator, CPU model, vCPUs, memory and the
// device models in argv order: what the migration stream's device state
// must find again in the restoring QEMU.
func (q *qemu) Shape(s Spec) (string, error) {
	cfg, err := q.config(s)
	if err != nil {
		return "", err
	}
	return qemuShape(cfg), nil
}

func qemuShape(cfg qemuConfig) string {
	cpu := ""
	if i := slices.Index(cfg.Argv, "-cpu"); i >= 0 && i+1 < len(cfg.Argv) {
		cpu = cfg.Argv[i+1]
	}
	var devices []string
	for i := 0; i+1 < len(cfg.Argv); i++ {
		if cfg.Argv[i] == "-serial" {
			// Serial ports are devices too; their backends are per VM.
			devices = append(devices, "serial")
			continue
		}
		if cfg.Argv[i] != "-device" {
			continue
		}
		model, opts, _ := strings.Cut(cfg.Argv[i+1], ",")
		// The MAC is per VM (the guest takes the new one after restore);
		// drive and chardev ids are fixed names.
		var kept []string
		for _, o := range strings.Split(opts, ",") {
			if !strings.HasPrefix(o, "mac=") && o != "" {
				kept = append(kept, o)
			}
		}
		devices = append(devices, model+"("+strings.Join(kept, ",")+")")
	}
	var ro []string
	for _, d := range cfg.Drives {
		mode := "rw"
		if d.ReadOnly {
			mode = "ro"
		}
		ro = append(ro, d.ID+":"+mode)
	}
	return fmt.Sprintf("qemu machine %s, accel %s, cpu %s, %d vCPU, %d MiB, drives [%s], devices [%s]",
		cfg.Machine, cfg.Accel, cpu, cfg.VCPU, cfg.MemMiB, strings.Join(ro, " "), strings.Join(devices, " "))
}

// openRestore opens the snapshot's stream below its directory, without
// following links, for QEMU to inherit; QEMU reads the descriptor itself
// and never reopens it, so the file stays root's.
func openRestore(s Spec) (*os.File, []string, error) {
	f, err := beneath.Open(s.Restore.Dir, filepath.Join(s.Restore.Dir, qemuMemoryFile), os.O_RDONLY)
	if err != nil {
		return nil, nil, fmt.Errorf("vm %s: restore: %w", s.ID, err)
	}
	return f, []string{"-incoming", "fd:" + strconv.Itoa(int(f.Fd()))}, nil
}
