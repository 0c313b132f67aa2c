// Package lifecycle runs the stages of a VM's life, as the service manager
// calls them through mergen-lifecycle: pre-start, start, post-start, stop,
// post-stop and on-failure; and the toolkit stages operators and the daemon
// call: status, pre-delete, delete and post-delete.
//
// Every stage reads the VM's record from the store and its paths from the
// layout, so a stage run by systemd, by the detached supervisor or by hand
// behaves the same; none re-decides from its own environment what create
// decided. Network and runtime files are torn down along one path
// (teardown), by post-stop and by delete.
package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mergenhq/mergen/internal/bootparam"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/hooks"
	"github.com/mergenhq/mergen/internal/proc"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/vmnet"
)

// Stage names, as the service manager calls them.
const (
	PreStart   = "pre-start"
	Start      = "start"
	PostStart  = "post-start"
	Stop       = "stop"
	PostStop   = "post-stop"
	OnFailure  = "on-failure"
	Status     = "status"
	PreDelete  = "pre-delete"
	DeleteStg  = "delete"
	PostDelete = "post-delete"
)

// Stages lists every stage Runner.Run runs. Restart is a toolkit command of
// mergen-lifecycle that goes through the manager (stop and start under the
// VM's lock, with its hooks), not a stage.
var Stages = []string{PreStart, Start, PostStart, Stop, PostStop, OnFailure, Status, PreDelete, DeleteStg, PostDelete}

// Runner runs stages for one host configuration.
type Runner struct {
	Config config.Config
	Store  *store.Store
	Log    *slog.Logger
	Out    io.Writer // where status prints
	// Result is how the run that ended went, for the post-stop stage.
	Result config.RunResult
}

// vm loads the VM, failing clearly for an unknown id.
func (r *Runner) vm(stage, id string) (store.Meta, error) {
	if err := store.ValidateID(id); err != nil {
		return store.Meta{}, fmt.Errorf("%s: %w", stage, err)
	}
	m, err := r.Store.ReadMeta(id)
	if err != nil {
		return store.Meta{}, fmt.Errorf("%s vm %s: %w", stage, id, err)
	}
	return m, nil
}

// stageLock serialises stages of one VM with each other and with the
// daemon's removal of the VM.
func (r *Runner) stageLock(ctx context.Context, stage, id string) (store.Unlock, error) {
	lctx, cancel := context.WithTimeout(ctx, r.Config.CommandTimeout+r.Config.StopTimeout)
	defer cancel()
	unlock, err := r.Store.LockStage(lctx, id)
	if err != nil {
		return nil, fmt.Errorf("%s vm %s: %w", stage, id, err)
	}
	return unlock, nil
}

// Run executes one stage for the VM id. Start does not return on success: it
// replaces the process with the VMM.
func (r *Runner) Run(ctx context.Context, stage, id string) (err error) {
	startT := time.Now()
	defer func() {
		if stage != Start || err != nil {
			r.event(id, stage, "", err, time.Since(startT))
		}
	}()
	switch stage {
	case PreStart:
		return r.preStart(ctx, id)
	case Start:
		return r.start(ctx, id)
	case PostStart:
		return r.postStart(ctx, id)
	case Stop:
		return r.stop(ctx, id)
	case PostStop:
		return r.postStop(ctx, id)
	case OnFailure:
		return r.onFailure(ctx, id)
	case Status:
		return r.status(ctx, id)
	case DeleteStg:
		return r.delete(ctx, id)
	case PreDelete, PostDelete:
		m, err := r.vm(stage, id)
		if err != nil {
			return err
		}
		return r.stageHooks(ctx, m, map[string]string{PreDelete: "preDelete", PostDelete: "postDelete"}[stage])
	}
	return errdefs.Invalid("unknown stage %q (want one of %v)", stage, Stages)
}

func (r *Runner) event(id, stage, hook string, err error, d time.Duration) {
	ev := hooks.Record{Time: time.Now().UTC(), VMID: id, Stage: stage, Hook: hook, Duration: d}
	if err != nil {
		ev.Result, ev.Error = "error", err.Error()
	} else {
		ev.Result = "ok"
	}
	if werr := hooks.AppendEvent(r.Config.DaemonLogFile, ev); werr != nil {
		r.Log.Warn("stage event log", "file", r.Config.DaemonLogFile, "err", werr)
	}
}

// stageHooks runs the lifecycle-hooks.json and MGN_LIFECYCLE_* extensions of
// a stage, each waited for, in order.
func (r *Runner) stageHooks(ctx context.Context, m store.Meta, stage string) error {
	list, err := hooks.StageHooks(r.Store.Paths(m.ID).LifecycleHooks, stage, r.Config.StageHooks)
	if err != nil {
		return fmt.Errorf("%s vm %s: %w", stage, m.ID, err)
	}
	return hooks.RunStage(ctx, r.Log, m.ID, stage, list, r.Config.DaemonLogFile)
}

// netConfig is the VM's network as vmnet needs it: the record's identity,
// and the host's allow-list of ports guests may reach (a host-wide setting,
// applied when the VM's network is set up).
func netConfig(m store.Meta, cfg config.Config) (vmnet.Config, error) {
	c := vmnet.Config{ID: m.ID, Netns: m.Netns, Tap: m.TapName, Veth: store.VethName(m.ID), PrefixLen: m.PrefixLen, MAC: m.MAC, Ports: m.Ports, Bridge: m.Bridge}
	var err error
	if c.TapUID, c.TapGID, err = m.VMMIDs(); err != nil {
		return c, fmt.Errorf("vm %s: %w", m.ID, err)
	}
	for _, s := range cfg.GuestHostPorts {
		p, err := vmnet.ParseHostPort(s)
		if err != nil {
			return c, fmt.Errorf("vm %s: MGR_GUEST_HOST_PORTS: %w", m.ID, err)
		}
		c.HostPorts = append(c.HostPorts, p)
	}
	if c.GuestIP, err = netip.ParseAddr(m.GuestIP); err != nil {
		return c, fmt.Errorf("vm %s: guestIP %q: %w", m.ID, m.GuestIP, err)
	}
	if c.Gateway, err = netip.ParseAddr(m.Gateway); err != nil {
		return c, fmt.Errorf("vm %s: gateway %q: %w", m.ID, m.Gateway, err)
	}
	return c, nil
}

func (r *Runner) preStart(ctx context.Context, id string) error {
	unlock, err := r.stageLock(ctx, PreStart, id)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := r.vm(PreStart, id)
	if err != nil {
		return err
	}
	r.recordRestart(ctx, m)
	driver, err := vmm.New(m.VMM, m.Driver)
	if err != nil {
		return fmt.Errorf("pre-start vm %s: %w", id, err)
	}
	if err := driver.Check(); err != nil {
		return fmt.Errorf("pre-start vm %s: %w", id, err)
	}
	p := r.Store.Paths(id)
	for _, d := range []string{p.RunDir, p.DataDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("pre-start vm %s: %w", id, err)
		}
	}
	// A socket left by a VMM that died without cleaning up would make the
	// next VMM fail to bind.
	for _, f := range []string{p.Socket, p.PIDFile, p.Paused} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pre-start vm %s: %w", id, err)
		}
	}
	nc, err := netConfig(m, r.Config)
	if err != nil {
		return fmt.Errorf("pre-start vm %s: %w", id, err)
	}
	if err := vmnet.Setup(ctx, nc); err != nil {
		return fmt.Errorf("pre-start vm %s: network: %w", id, err)
	}
	if err := r.stageHooks(ctx, m, "preStart"); err != nil {
		return err
	}
	return nil
}

// start replaces this process with the VMM, inside the VM's network
// namespace, with the serial console written to the console log. The
// service manager thus supervises the VMM itself.
//
// The VMM's stdout and stderr are a pipe to a small copier (this program's
// hidden console-log command, see ConsoleLog) that bounds the log by
// MGR_CONSOLE_LOG_MAX_BYTES with one rotation. The copier runs in a process
// group of its own, so signals meant for the VMM's group do not cut the log
// short, ignores termination signals, and exits when the VMM has exited and
// the pipe is drained.
//
// The driver opens the VM's kernel, initrd and disks below the roots the
// record says they were checked in, without following links, and the VMM
// inherits those descriptors (it opens /proc/self/fd/N): a disk swapped for
// a link after create is refused here, and one swapped after this point is
// not what the VMM gets.
func (r *Runner) start(ctx context.Context, id string) error {
	m, err := r.vm(Start, id)
	if err != nil {
		return err
	}
	driver, err := vmm.New(m.VMM, m.Driver)
	if err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	p := r.Store.Paths(id)
	spec := restoreSpec(m, p)
	if m.VMM == "qemu" && spec.UID != 0 && spec.NIC != nil {
		// QEMU runs as the VM's uid, which cannot open /dev/net/tun on a
		// host that leaves it to root: it gets the tap open instead.
		tap, err := vmnet.OpenTap(m.Netns, m.TapName)
		if err != nil {
			return fmt.Errorf("start vm %s: %w", id, err)
		}
		spec.NIC.File = tap
	}
	launch, err := driver.Command(spec, p.VMConfig)
	if err != nil {
		if spec.NIC != nil && spec.NIC.File != nil {
			spec.NIC.File.Close()
		}
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	// Reached only when the exec fails; it also keeps the files from being
	// collected (and closed) before the exec.
	defer launch.Close()
	argv := launch.Argv
	bin, err := lookPath(argv[0])
	if err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	console, copier, err := r.startConsoleLog(id)
	if err != nil {
		return fmt.Errorf("start vm %s: console log: %w", id, err)
	}
	// Not waited for: this process becomes the VMM; the copier outlives
	// it by the time it takes to drain the pipe.
	copier.Release()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	// This process becomes the VMM: its pid and start time identify the
	// VMM for as long as it runs.
	if err := proc.WritePIDFile(p.PIDFile, proc.Self()); err != nil {
		return fmt.Errorf("start vm %s: pid file: %w", id, err)
	}
	r.event(id, Start, "", nil, 0)

	// From here on only this thread matters: enter the namespace on it and
	// exec from it.
	runtime.LockOSThread()
	if m.Netns != "" {
		h, err := netns.GetFromName(m.Netns)
		if err != nil {
			return fmt.Errorf("start vm %s: network namespace %s: %w (did pre-start run?)", id, m.Netns, err)
		}
		if err := netns.Set(h); err != nil {
			return fmt.Errorf("start vm %s: enter network namespace %s: %w", id, m.Netns, err)
		}
	}
	for fd, f := range map[int]*os.File{0: devnull, 1: console, 2: console} {
		if err := syscall.Dup3(int(f.Fd()), fd, 0); err != nil {
			return fmt.Errorf("start vm %s: redirect fd %d: %w", id, fd, err)
		}
	}
	// Drop to the VM's own ids, on every thread (Go applies set*id to all
	// of them), now that everything the VMM needs is open or its own.
	if c := launch.Cred; c != nil {
		if err := syscall.Setgroups(c.Groups); err != nil {
			return fmt.Errorf("start vm %s: setgroups: %w", id, err)
		}
		if err := syscall.Setgid(c.GID); err != nil {
			return fmt.Errorf("start vm %s: setgid %d: %w", id, c.GID, err)
		}
		if err := syscall.Setuid(c.UID); err != nil {
			return fmt.Errorf("start vm %s: setuid %d: %w", id, c.UID, err)
		}
	}
	// The VM's files pass to the VMM at their own numbers.
	if err := launch.Inherit(); err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	err = syscall.Exec(bin, argv, os.Environ())
	return fmt.Errorf("start vm %s: exec %s: %w", id, bin, err)
}

// startConsoleLog starts the console copier of VM id (this program, run as
// its hidden console-log command) and returns the write end of its pipe.
func (r *Runner) startConsoleLog(id string) (*os.File, *os.Process, error) {
	p := r.Store.Paths(id)
	// A log that cannot be written fails the start here, not in the copier.
	f, err := os.OpenFile(p.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, nil, err
	}
	f.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	defer pr.Close()
	cmd := exec.Command(self, ConsoleLogStage, id)
	cmd.Stdin = pr
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, nil, err
	}
	return pw, cmd.Process, nil
}

func (r *Runner) postStart(ctx context.Context, id string) error {
	m, err := r.vm(PostStart, id)
	if err != nil {
		return err
	}
	driver, err := vmm.New(m.VMM, m.Driver)
	if err != nil {
		return fmt.Errorf("post-start vm %s: %w", id, err)
	}
	// Wait until the VMM answers on its socket and reports the guest running.
	wctx, cancel := context.WithTimeout(ctx, r.Config.CommandTimeout)
	defer cancel()
	p := r.Store.Paths(id)
	spec := restoreSpec(m, p)
	switch {
	case spec.Restore != nil:
		if err := r.restored(wctx, driver, spec, m); err != nil {
			return fmt.Errorf("post-start vm %s: %w", id, err)
		}
	case bootparam.EnvFromAgent(m.ExtraEnv):
		if err := r.handEnv(wctx, driver, spec, m); err != nil {
			return fmt.Errorf("post-start vm %s: %w", id, err)
		}
	}
	var last error
	for {
		st, err := driver.Status(wctx, r.Store.Paths(id).Socket)
		if err == nil && st.Running {
			break
		}
		if err == nil {
			err = fmt.Errorf("vmm reports state %q", st.State)
		}
		last = err
		select {
		case <-wctx.Done():
			return fmt.Errorf("post-start vm %s: vmm did not report running within %s: %v", id, r.Config.CommandTimeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := r.stageHooks(ctx, m, "postStart"); err != nil {
		return err
	}
	if m.HealthCheck == nil {
		// A VM with a health check is ready when it passes: the daemon
		// records that.
		r.record(ctx, m, events.Ready, "", "")
	}
	return nil
}

// stop asks the guest to power off and waits for the VMM to exit; the
// service manager kills it when the stop timeout runs out.
func (r *Runner) stop(ctx context.Context, id string) error {
	m, err := r.vm(Stop, id)
	if err != nil {
		return err
	}
	if err := r.stageHooks(ctx, m, "preStop"); err != nil {
		r.Log.Warn("preStop hooks failed", "vm", id, "err", err)
	}
	p := r.Store.Paths(id)
	vmmProc, err := proc.ReadPIDFile(p.PIDFile)
	if err != nil || !vmmProc.Alive() {
		return nil
	}
	driver, err := vmm.New(m.VMM, m.Driver)
	if err != nil {
		return fmt.Errorf("stop vm %s: %w", id, err)
	}
	sctx, cancel := context.WithTimeout(ctx, r.Config.CommandTimeout)
	// A paused guest cannot act on the power-off request: resume it first.
	if st, err := driver.Status(sctx, p.Socket); err == nil && st.Paused {
		if err := driver.Resume(sctx, p.Socket); err != nil {
			r.Log.Warn("resume of the paused VM before its shutdown failed", "vm", id, "err", err)
		}
	}
	err = driver.Shutdown(sctx, p.Socket)
	cancel()
	if err != nil {
		r.Log.Warn("graceful shutdown request failed; the VMM will be terminated", "vm", id, "err", err)
		return nil
	}
	deadline := time.Now().Add(r.Config.StopTimeout)
	for vmmProc.Alive() && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if vmmProc.Alive() {
		r.Log.Warn("guest did not power off in time; the VMM will be terminated", "vm", id, "timeout", r.Config.StopTimeout)
	}
	return nil
}

// postStop removes the network and runtime files; it runs after every stop
// and after a failed start, so it tolerates anything being already gone.
func (r *Runner) postStop(ctx context.Context, id string) error {
	unlock, err := r.stageLock(ctx, PostStop, id)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := r.vm(PostStop, id)
	if err != nil {
		return err
	}
	r.recordEnd(ctx, m)
	if err := r.teardown(ctx, m); err != nil {
		return fmt.Errorf("post-stop vm %s: %w", id, err)
	}
	return r.stageHooks(ctx, m, "postStop")
}

func (r *Runner) teardown(ctx context.Context, m store.Meta) error {
	nc, err := netConfig(m, r.Config)
	if err != nil {
		return err
	}
	if err := vmnet.Teardown(ctx, nc); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	p := r.Store.Paths(m.ID)
	if driver, err := vmm.New(m.VMM, m.Driver); err == nil {
		if err := driver.Release(store.Spec(m, p)); err != nil {
			return err
		}
	}
	for _, f := range []string{p.Socket, p.PIDFile, p.Paused} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

func (r *Runner) onFailure(ctx context.Context, id string) error {
	m, err := r.vm(OnFailure, id)
	if err != nil {
		return err
	}
	r.Log.Error("vm failed", "vm", m.ID, "console", r.Store.Paths(id).ConsoleLog)
	return nil
}

// StatusReport is what `mergen-lifecycle status` prints.
type StatusReport struct {
	ID      string `json:"id"`
	VMM     string `json:"vmm"`
	PID     int    `json:"pid"`
	Alive   bool   `json:"alive"`
	Running bool   `json:"running"`
	State   string `json:"state"`
	Error   string `json:"error,omitempty"`
}

func (r *Runner) status(ctx context.Context, id string) error {
	m, err := r.vm(Status, id)
	if err != nil {
		return err
	}
	p := r.Store.Paths(id)
	vmmProc, _ := proc.ReadPIDFile(p.PIDFile)
	rep := StatusReport{ID: id, VMM: m.VMM, PID: vmmProc.PID, Alive: vmmProc.Alive()}
	if driver, err := vmm.New(m.VMM, m.Driver); err != nil {
		rep.Error = err.Error()
	} else if st, err := driver.Status(ctx, p.Socket); err != nil {
		rep.Error = err.Error()
	} else {
		rep.Running, rep.State = st.Running, st.State
	}
	enc := json.NewEncoder(r.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// delete runs the delete stages of a VM that is already stopped: preDelete
// and delete hooks, network and runtime clean-up, postDelete hooks (best
// effort: the VM is gone by then). The daemon runs it before removing the
// VM's files; a strict failure before the teardown keeps the VM.
func (r *Runner) delete(ctx context.Context, id string) error {
	unlock, err := r.stageLock(ctx, DeleteStg, id)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := r.vm(DeleteStg, id)
	if err != nil {
		return err
	}
	for _, st := range []string{"preDelete", "delete"} {
		if err := r.stageHooks(ctx, m, st); err != nil {
			return err
		}
	}
	if err := r.teardown(ctx, m); err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	if err := r.stageHooks(ctx, m, "postDelete"); err != nil {
		r.Log.Warn("postDelete hooks failed", "vm", id, "err", err)
	}
	return nil
}
