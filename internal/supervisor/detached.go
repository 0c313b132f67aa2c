package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/envfile"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/lock"
	"github.com/mergenhq/mergen/internal/proc"
)

// detachedSupervisor runs each VM under `<lifecycle> supervise <id>`, a
// process in its own session that the daemon does not wait on: it survives
// the daemon and is found again through RunRoot/<id>/supervisor.pid.
type detachedSupervisor struct{ o Options }

func newDetached(o Options) *detachedSupervisor { return &detachedSupervisor{o: o} }

func (d *detachedSupervisor) Name() string { return "detached" }

const pollEvery = 20 * time.Millisecond

func (d *detachedSupervisor) Check(ctx context.Context) error {
	if err := checkExecutable(d.o.LifecycleBin); err != nil {
		return fmt.Errorf("detached supervisor: lifecycle binary: %w", err)
	}
	if err := os.MkdirAll(d.o.RunRoot, 0o755); err != nil {
		return fmt.Errorf("%w: detached supervisor: run root: %w", ErrUnavailable, err)
	}
	return nil
}

func (d *detachedSupervisor) dir(id string) string { return d.paths(id).RunDir }

func (d *detachedSupervisor) paths(id string) layout.VM { return d.o.layout().VM(id) }

// opLock serialises Start, Stop and Forget on one VM across processes.
func (d *detachedSupervisor) opLock(ctx context.Context, op, id string) (*lock.Lock, error) {
	if err := os.MkdirAll(d.dir(id), 0o755); err != nil {
		return nil, fmt.Errorf("%s vm %s: %w", op, id, err)
	}
	f, err := lock.Acquire(ctx, d.paths(id).SupervisorOp)
	if err != nil {
		return nil, fmt.Errorf("%s vm %s: lock: %w", op, id, err)
	}
	return f, nil
}

// supervisorPID returns the pid of the live supervising process of id, or 0.
// The pid file alone could name a recycled pid: the process must also be
// `… supervise <id>` and not a zombie.
func (d *detachedSupervisor) supervisorPID(id string) int {
	b, err := os.ReadFile(d.paths(id).SupervisorPID)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if isSupervisor(pid, id) {
		return pid
	}
	return 0
}

func isSupervisor(pid int, id string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	// Anywhere in the command line: a lifecycle that is a script runs as
	// `<interpreter> <script> supervise <id>`.
	for i := 1; i+1 < len(args); i++ {
		if args[i] == "supervise" && args[i+1] == id {
			return proc.State(pid) != 'Z'
		}
	}
	return false
}

// mainAlive reports whether the main process recorded in st still runs
// (same pid and same start time).
func mainAlive(st detachedState) bool {
	return st.MainPID > 0 && st.MainStart != 0 && proc.Process{PID: st.MainPID, Start: st.MainStart}.Alive()
}

func (d *detachedSupervisor) Start(ctx context.Context, id string) error {
	if err := checkID("start", id); err != nil {
		return err
	}
	if err := d.Check(ctx); err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	held, err := d.opLock(ctx, "start", id)
	if err != nil {
		return err
	}
	defer held.Release()

	// A supervisor already there: wait for it to settle.
	for {
		pid := d.supervisorPID(id)
		if pid == 0 {
			break
		}
		st, _ := readState(d.paths(id).SupervisorState)
		switch {
		case st.SupervisorPID != pid || st.ActiveState == "activating":
			// Still starting (its first state may not be written yet).
			return d.waitStarted(ctx, id, pid, false)
		case st.ActiveState == "active":
			return nil
		}
		// Deactivating, or failed and running on-failure: let the previous
		// run end, then start afresh.
		if err := d.waitGone(ctx, id, pid); err != nil {
			return fmt.Errorf("start vm %s: waiting for the previous run to end: %w", id, err)
		}
	}
	if st, _ := readState(d.paths(id).SupervisorState); st.ActiveState != "failed" && mainAlive(st) {
		// The supervisor was killed but the VMM still runs: it is started.
		return nil
	}

	pid, err := d.spawn(id)
	if err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	return d.waitStarted(ctx, id, pid, true)
}

// spawn starts `<lifecycle> supervise <id>` in a session of its own, with
// its output appended to RunRoot/<id>/supervisor.log.
func (d *detachedSupervisor) spawn(id string) (int, error) {

	// The outcome of a previous run must not pass for this one's.
	if err := os.Remove(d.paths(id).SupervisorState); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	logf, err := os.OpenFile(d.paths(id).SupervisorLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command(d.o.LifecycleBin, "supervise", id)
	// The supervising process builds its Options from the same variables
	// the daemon was configured with. The daemon's own environment goes
	// first, as systemd's manager environment does for units.
	cmd.Env = append(append(os.Environ(), d.o.Env...), d.o.selfEnv()...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	// Setsid: no terminal, no process group shared with the daemon, so
	// signals aimed at the daemon's group do not reach the VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	// Reap it when it ends while this process lives; after the daemon's
	// death init does.
	go cmd.Wait()
	return cmd.Process.Pid, nil
}

// waitStarted waits until supervisor pid has finished the start stages.
// spawned says pid was just forked here: until it has exec'd, its command
// line is still this process's, so only its existence counts.
func (d *detachedSupervisor) waitStarted(ctx context.Context, id string, pid int, spawned bool) error {
	for {
		st, err := readState(d.paths(id).SupervisorState)
		if err == nil && st.SupervisorPID == pid {
			switch st.ActiveState {
			case "active":
				return nil
			case "activating":
				if st.SubState == "auto-restart" {
					// The first run failed; the restart policy takes over.
					return fmt.Errorf("start vm %s: start failed (result %s), restarting under the VM's restart policy; see %s",
						id, orNone(st.Result), d.paths(id).SupervisorLog)
				}
			case "failed", "inactive":
				// Reported once the supervising process has cleaned up
				// (deactivating), so that the result is known.
				return fmt.Errorf("start vm %s: start stages failed (%s, result %s); see %s",
					id, st.ActiveState, orNone(st.Result), d.paths(id).SupervisorLog)
			}
		}
		alive := isSupervisor(pid, id)
		if spawned {
			alive = proc.State(pid) != 0 && proc.State(pid) != 'Z'
		}
		if !alive {
			// Re-read once: the process may have ended after writing.
			if st, err := readState(d.paths(id).SupervisorState); err == nil && st.SupervisorPID == pid {
				switch st.ActiveState {
				case "active":
					return nil
				case "failed", "inactive":
					return fmt.Errorf("start vm %s: start stages failed (%s, result %s); see %s",
						id, st.ActiveState, orNone(st.Result), d.paths(id).SupervisorLog)
				}
			}
			// The log is not quoted: it holds the stages' output, which
			// may carry what hooks printed, and this error reaches API
			// callers.
			return fmt.Errorf("start vm %s: supervising process %d exited before the VM ran; see %s",
				id, pid, d.paths(id).SupervisorLog)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start vm %s: waiting for the start stages: %w", id, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (d *detachedSupervisor) waitGone(ctx context.Context, id string, pid int) error {
	for isSupervisor(pid, id) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
	return nil
}

func (d *detachedSupervisor) Stop(ctx context.Context, id string) error {
	if err := checkID("stop", id); err != nil {
		return err
	}
	if _, err := os.Stat(d.dir(id)); errors.Is(err, fs.ErrNotExist) {
		return nil // never started here
	}
	held, err := d.opLock(ctx, "stop", id)
	if err != nil {
		return err
	}
	defer held.Release()

	if pid := d.supervisorPID(id); pid != 0 {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stop vm %s: signal supervisor %d: %w", id, pid, err)
		}
		if err := d.waitGone(ctx, id, pid); err != nil {
			return fmt.Errorf("stop vm %s: waiting for supervisor %d: %w", id, pid, err)
		}
		return nil
	}
	st, err := readState(d.paths(id).SupervisorState)
	if err != nil {
		return fmt.Errorf("stop vm %s: %w", id, err)
	}
	if mainAlive(st) {
		return d.stopAbandoned(ctx, id, st)
	}
	return nil
}

// stopAbandoned stops a VM whose supervising process was killed while the
// main process lived on: the same stop sequence, run from here.
func (d *detachedSupervisor) stopAbandoned(ctx context.Context, id string, st detachedState) error {
	fileEnv, err := envfile.Read(d.paths(id).Env)
	if err != nil {
		return fmt.Errorf("stop vm %s: %w", id, err)
	}
	env := append(append(os.Environ(), d.o.Env...), fileEnv...)
	logf, err := os.OpenFile(d.paths(id).SupervisorLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("stop vm %s: %w", id, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "supervising process gone, stopping main process %d from process %d\n", st.MainPID, os.Getpid())
	run := func(stage string, extra ...string) {
		sctx, cancel := context.WithTimeout(ctx, d.o.StopTimeout)
		defer cancel()
		cmd := exec.CommandContext(sctx, d.o.LifecycleBin, stage, id)
		cmd.Env = append(append([]string{}, env...), extra...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Run(); err != nil { // best effort, as in the supervising process
			fmt.Fprintf(logf, "stage %s: %v\n", stage, err)
		}
	}
	run("stop", "MAINPID="+strconv.Itoa(st.MainPID), "SERVICE_RESULT=success")
	result := "success"
	if mainAlive(st) {
		syscall.Kill(st.MainPID, syscall.SIGTERM)
		deadline := time.Now().Add(d.o.StopTimeout)
		for mainAlive(st) && time.Now().Before(deadline) {
			time.Sleep(pollEvery)
		}
		if mainAlive(st) {
			syscall.Kill(-st.MainPID, syscall.SIGKILL)
			result = "timeout"
		}
	}
	run("post-stop", "SERVICE_RESULT="+result)
	st.MainPID, st.MainStart, st.SupervisorPID = 0, 0, 0
	st.ActiveState, st.SubState, st.Result = "inactive", "dead", result
	if result != "success" {
		st.ActiveState, st.SubState = "failed", "failed"
	}
	st.Updated = time.Now().UTC()
	return d.writeState(id, st)
}

func (d *detachedSupervisor) writeState(id string, st detachedState) error {
	b, err := jsonMarshal(st)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(d.paths(id).SupervisorState, b, 0o644)
}

func (d *detachedSupervisor) State(ctx context.Context, id string) (State, error) {
	s := State{Unit: UnitName(d.o.UnitPrefix, id)}
	if err := checkID("state", id); err != nil {
		return s, err
	}
	st, err := readState(d.paths(id).SupervisorState)
	if err != nil {
		return s, fmt.Errorf("state vm %s: %w", id, err)
	}
	return d.report(id, st), nil
}

func (d *detachedSupervisor) Unstarted(id string) State {
	return d.report(id, neverRun)
}

func (d *detachedSupervisor) LastExit(ctx context.Context, id string) (Exit, error) {
	if err := checkID("last exit", id); err != nil {
		return Exit{}, err
	}
	st, err := readState(d.paths(id).SupervisorState)
	if err != nil {
		return Exit{}, fmt.Errorf("last exit of vm %s: %w", id, err)
	}
	s := d.report(id, st)
	if s.ActiveState != "inactive" && s.ActiveState != "failed" {
		return Exit{}, nil // it runs (or changes state) now
	}
	e := Exit{Result: st.Result, Code: st.ExitCode, At: st.Exited, Restarts: st.Restarts, GaveUp: st.GaveUp}
	if e.Result == "" && s.ActiveState == "failed" {
		// The supervising process died without recording an end.
		e.Result = "abandoned"
	}
	switch st.ExitCode {
	case "exited":
		e.Status, _ = strconv.Atoi(st.ExitStatus)
	case "killed", "dumped":
		e.Signal = st.ExitStatus
	}
	return e, nil
}

// States reads each VM's state file once; the supervising process and the
// VMM are checked (in /proc, no process started) only for a VM whose file
// says it runs.
//
// The files are read in one part per processor at once: each is a stat
// (and a read when it changed), which another processor can make
// meanwhile.
func (d *detachedSupervisor) States(ctx context.Context, ids []string) (map[string]State, error) {
	states := make([]State, len(ids))
	errs := make([]error, len(ids))
	l := d.o.layout()
	read := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			id := ids[i]
			if err := checkID("states", id); err != nil {
				states[i], errs[i] = State{Unit: UnitName(d.o.UnitPrefix, id)}, err
				continue
			}
			st, err := readState(l.SupervisorStateFile(id))
			if err != nil {
				states[i], errs[i] = State{Unit: UnitName(d.o.UnitPrefix, id)}, fmt.Errorf("state vm %s: %w", id, err)
				continue
			}
			states[i] = d.report(id, st)
		}
	}
	parts := min(runtime.GOMAXPROCS(0), len(ids)/statesPart)
	if parts <= 1 {
		read(0, len(ids))
	} else {
		var wg sync.WaitGroup
		for p := 0; p < parts; p++ {
			lo, hi := len(ids)*p/parts, len(ids)*(p+1)/parts
			wg.Go(func() { read(lo, hi) })
		}
		wg.Wait()
	}
	out := make(map[string]State, len(ids))
	for i, id := range ids {
		out[id] = states[i]
	}
	return out, errors.Join(errs...)
}

// statesPart is the fewest VMs worth a goroutine of their own in States.
const statesPart = 128

// report is State of VM id from its recorded state st.
func (d *detachedSupervisor) report(id string, st detachedState) State {
	s := State{Unit: UnitName(d.o.UnitPrefix, id), Available: true}
	s.ActiveState, s.SubState = st.ActiveState, st.SubState
	switch st.ActiveState {
	case "activating", "active", "deactivating":
		// Only a running state needs its supervising process: a VM at
		// rest (most of a list) costs one read, not two.
		if d.supervisorPID(id) == 0 {
			// The supervising process died without recording an end.
			if mainAlive(st) {
				s.ActiveState, s.SubState = "active", "abandoned"
			} else {
				s.ActiveState, s.SubState = "failed", "failed"
			}
		}
	}
	if s.ActiveState == "active" || s.ActiveState == "activating" || s.ActiveState == "deactivating" {
		if mainAlive(st) {
			s.MainPID = st.MainPID
		}
	}
	s.Active = s.ActiveState == "active"
	s.Restarts = st.Restarts
	return s
}

// Forget removes the supervisor's files of a VM that is not running, and
// RunRoot/<id> itself when nothing else is left in it.
func (d *detachedSupervisor) Forget(ctx context.Context, id string) error {
	if err := checkID("forget", id); err != nil {
		return err
	}
	if _, err := os.Stat(d.dir(id)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	held, err := d.opLock(ctx, "forget", id)
	if err != nil {
		return err
	}
	defer held.Release()
	if pid := d.supervisorPID(id); pid != 0 {
		st, _ := readState(d.paths(id).SupervisorState)
		if st.SupervisorPID != pid || (st.ActiveState != "failed" && st.ActiveState != "inactive") {
			return fmt.Errorf("forget vm %s: still supervised by process %d; stop it first", id, pid)
		}
		// The run is over and its process only finishes (on-failure).
		if err := d.waitGone(ctx, id, pid); err != nil {
			return fmt.Errorf("forget vm %s: waiting for process %d to end: %w", id, pid, err)
		}
	}
	if st, _ := readState(d.paths(id).SupervisorState); mainAlive(st) {
		return fmt.Errorf("forget vm %s: main process %d still runs; stop it first", id, st.MainPID)
	}
	p := d.paths(id)
	for _, f := range []string{p.SupervisorPID, p.SupervisorState, p.SupervisorLog, p.SupervisorLock, p.SupervisorOp} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("forget vm %s: %w", id, err)
		}
	}
	states.Forget(p.SupervisorState)
	// Other parts of mergen may keep files here (sockets); leave them.
	if err := os.Remove(d.dir(id)); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("forget vm %s: %w", id, err)
	}
	return nil
}
