package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/envfile"
	"github.com/mergenhq/mergen/internal/filecache"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/lock"
	"github.com/mergenhq/mergen/internal/proc"
)

// detachedState is the detached supervisor's record of a VM, in systemd's
// vocabulary.
type detachedState struct {
	ActiveState string `json:"activeState"`
	SubState    string `json:"subState"`
	// Result is systemd's: success, exit-code, signal, core-dump, timeout.
	Result  string `json:"result,omitempty"`
	MainPID int    `json:"mainPID,omitempty"`
	// MainStart is the main process's start time (/proc/<pid>/stat field
	// 22): with it a recycled pid is not mistaken for the VMM.
	MainStart     uint64    `json:"mainStart,omitempty"`
	SupervisorPID int       `json:"supervisorPID,omitempty"`
	Updated       time.Time `json:"updated"`
	// How the main process of the last run ended (systemd's ExecMainCode,
	// ExecMainStatus, ExecMainExitTimestamp): ExitCode is exited, killed or
	// dumped, ExitStatus the status or the signal's name.
	ExitCode   string    `json:"exitCode,omitempty"`
	ExitStatus string    `json:"exitStatus,omitempty"`
	Exited     time.Time `json:"exited,omitzero"`
	// Restarts counts the automatic restarts under the VM's restart policy
	// since the VM was started.
	Restarts int `json:"restarts,omitempty"`
	// GaveUp says the restart policy gave up after this run (on-failure:N
	// had made its N restarts); Result stays the run's, as systemd's does.
	GaveUp bool `json:"gaveUp,omitempty"`
}

// RunDetached is the body of `<lifecycle> supervise <id>`: it runs the VM's
// stages the way systemd runs the unit <prefix>@<id>.service and returns
// when the VM has stopped. Start spawns it in a session of its own; SIGTERM
// (or SIGINT) asks it to stop the VM.
//
// Sequence, systemd's: pre-start; start (the main process); post-start;
// then wait. On a stop request: the stop stage, SIGTERM to the main process,
// SIGKILL to its process group after StopTimeout, post-stop. When the main
// process exits cleanly by itself: stop and post-stop; when it fails:
// post-stop and on-failure. A failing pre-start or post-start fails the unit
// without the stop stage. The outcome stays in the state file for State to
// report.
func RunDetached(ctx context.Context, o Options, id string) error {
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	if err := checkID("supervise", id); err != nil {
		return err
	}
	p := o.layout().VM(id)
	if err := os.MkdirAll(p.RunDir, 0o755); err != nil {
		return fmt.Errorf("supervise vm %s: %w", id, err)
	}
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	held, err := lock.Acquire(lctx, p.SupervisorLock)
	cancel()
	if err != nil {
		return fmt.Errorf("supervise vm %s: another supervisor holds its lock: %w", id, err)
	}
	defer held.Release()

	fileEnv, err := envfile.Read(p.Env)
	if err != nil {
		return fmt.Errorf("supervise vm %s: %w", id, err)
	}
	r := &runner{
		o:   o,
		id:  id,
		p:   p,
		log: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("vm", id),
		// Like systemd: Environment= first, EnvironmentFile= overrides it.
		env: append(append(os.Environ(), o.Env...), fileEnv...),
	}
	if err := atomicfile.WriteFile(p.SupervisorPID, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("supervise vm %s: %w", id, err)
	}
	defer os.Remove(p.SupervisorPID)

	stopReq := make(chan os.Signal, 1)
	signal.Notify(stopReq, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(stopReq)
	// A lost terminal is not a reason to stop a VM. Caught rather than
	// ignored: an ignored signal would stay ignored in the stages and the
	// VMM, which systemd would not do.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer func() { signal.Stop(hup); close(hup) }()
	go func() {
		for range hup {
		}
	}()

	// stopping is cancelled on the first stop request: a start stage still
	// running is then interrupted, as systemd cancels a start job.
	stopping, requestStop := context.WithCancel(ctx)
	defer requestStop()
	go func() {
		select {
		case <-stopReq:
			r.log.Info("stop requested")
			requestStop()
		case <-stopping.Done():
		}
	}()

	r.log.Info("starting", "lifecycle", o.LifecycleBin)
	policy, delay := restartSettings(fileEnv, r.log)
	attempts := 0 // restarts since the last reset
	for {
		result := r.run(stopping)
		// A run that lasted resets the backoff and on-failure's count.
		if !r.mainStarted.IsZero() && r.mainEnded.Sub(r.mainStarted) >= RestartResetAfter {
			attempts = 0
		}
		if stopping.Err() != nil || !policy.restarts(result, attempts) {
			if stopping.Err() == nil && policy.givesUp(result, attempts) {
				r.log.Warn("restart policy gave up", "policy", policy, "restarts", r.st.Restarts, "result", result)
				r.st.GaveUp = true
			}
			r.finish(ctx, result)
			return nil
		}
		wait := restartDelay(delay, attempts)
		r.st.Result = result
		r.recordExit()
		r.setState("activating", "auto-restart")
		r.log.Warn("main process ended, restarting", "result", result, "policy", policy, "in", wait, "restarts", r.st.Restarts)
		select {
		case <-stopping.Done():
			// Stopped while waiting: nothing runs, as systemd stops a unit
			// in auto-restart.
			r.log.Info("stop requested during the restart delay")
			r.setState("inactive", "dead")
			return nil
		case <-time.After(wait):
		}
		attempts++
		r.st.Restarts++
		r.reset()
	}
}

// restartSettings reads the VM's restart policy (MGR_RESTART) from its env
// file, and the first delay: RestartDelayMin unless MGR_RESTART_DELAY (a
// duration, which the daemon does not write) says otherwise. A policy the
// supervisor cannot read is no.
func restartSettings(fileEnv []string, log *slog.Logger) (RestartPolicy, time.Duration) {
	var policy, delay string
	for _, kv := range fileEnv {
		if v, ok := strings.CutPrefix(kv, RestartEnv+"="); ok {
			policy = v
		}
		if v, ok := strings.CutPrefix(kv, "MGR_RESTART_DELAY="); ok {
			delay = v
		}
	}
	p, err := ParseRestart(policy)
	if err != nil {
		log.Error("restart policy ignored", "err", err)
		p = RestartPolicy{Mode: RestartNo}
	}
	d := RestartDelayMin
	if delay != "" {
		if v, err := time.ParseDuration(delay); err == nil && v > 0 {
			d = v
		} else {
			log.Error("MGR_RESTART_DELAY ignored", "value", delay)
		}
	}
	return p, d
}

// reset forgets the last run's main process before a restart; the state
// keeps the restart count and how the last run ended.
func (r *runner) reset() {
	r.main, r.mainDone = nil, nil
	r.mainStarted, r.mainEnded = time.Time{}, time.Time{}
	r.exitCode, r.exitStat = "", ""
}

type runner struct {
	o   Options
	id  string
	p   layout.VM
	log *slog.Logger
	env []string

	st          detachedState
	main        *exec.Cmd
	mainDone    chan struct{} // closed when the main process has been waited for
	mainStarted time.Time     // when it was started
	mainEnded   time.Time     // when it was waited for
	exitCode    string        // systemd's EXIT_CODE: exited, killed, dumped
	exitStat    string        // systemd's EXIT_STATUS: number or signal name
}

func (r *runner) setState(active, sub string) {
	r.st.ActiveState, r.st.SubState = active, sub
	r.st.SupervisorPID = os.Getpid()
	r.st.Updated = time.Now().UTC()
	b, _ := json.Marshal(r.st)
	if err := atomicfile.WriteFile(r.p.SupervisorState, append(b, '\n'), 0o644); err != nil {
		r.log.Error("write state", "err", err)
	}
}

// run takes the VM from nothing to running and back to stopped and returns
// the systemd-style result.
func (r *runner) run(stopping context.Context) string {
	r.setState("activating", "start-pre")
	if err := r.stage(stopping, "pre-start", nil); err != nil {
		if stopping.Err() != nil {
			return r.stopAfterStart(stopping, "success")
		}
		return r.stopAfterStart(stopping, "exit-code")
	}
	if err := r.startMain(); err != nil {
		r.log.Error("start stage", "err", err)
		return r.stopAfterStart(stopping, "exit-code")
	}
	r.setState("activating", "start-post")
	if err := r.stage(stopping, "post-start", []string{"MAINPID=" + strconv.Itoa(r.st.MainPID)}); err != nil {
		// The start did not complete: like systemd, no stop stage.
		if stopping.Err() != nil {
			return r.stop("success", false)
		}
		return r.stop("exit-code", false)
	}
	r.setState("active", "running")
	r.log.Info("running", "mainPID", r.st.MainPID)

	select {
	case <-stopping.Done():
		return r.stop("success", true)
	case <-r.mainDone:
		res := r.mainResult()
		r.log.Info("main process ended by itself", "code", r.exitCode, "status", r.exitStat, "result", res)
		// systemd runs ExecStop= after a clean exit only; a failed main
		// process goes straight to the kill and post-stop.
		return r.stop(res, res == "success")
	}
}

// stopAfterStart ends a start that failed before the main process existed:
// systemd skips the stop stage then but still runs post-stop.
func (r *runner) stopAfterStart(ctx context.Context, result string) string {
	r.setState("deactivating", "stop-post")
	r.stage(context.WithoutCancel(ctx), "post-stop", r.resultEnv(result))
	return result
}

func (r *runner) startMain() error {
	cmd := exec.Command(r.o.LifecycleBin, "start", r.id)
	cmd.Env = r.env
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Its own process group: at the end the VMM and whatever it spawned are
	// killed together, like the rest of a unit's control group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	r.main = cmd
	r.mainStarted = time.Now()
	r.mainDone = make(chan struct{})
	r.st.MainPID = cmd.Process.Pid
	r.st.MainStart, _ = proc.StartTime(cmd.Process.Pid)
	go func() {
		cmd.Wait()
		r.mainEnded = time.Now()
		close(r.mainDone)
	}()
	return nil
}

func (r *runner) mainExited() bool {
	select {
	case <-r.mainDone:
		return true
	default:
		return false
	}
}

// mainResult classifies the main process's end like systemd does for a
// service that was not asked to stop.
func (r *runner) mainResult() string {
	ws, _ := r.main.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ws.Exited():
		r.exitCode, r.exitStat = "exited", strconv.Itoa(ws.ExitStatus())
		if ws.ExitStatus() == 0 {
			return "success"
		}
		return "exit-code"
	case ws.Signaled():
		sig := ws.Signal()
		r.exitCode, r.exitStat = "killed", signalName(sig)
		if ws.CoreDump() {
			r.exitCode = "dumped"
			return "core-dump"
		}
		// systemd's default SuccessExitStatus for these signals.
		switch sig {
		case syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE:
			return "success"
		}
		return "signal"
	}
	return "exit-code"
}

// stop runs the stop stage (only after a completed start, as systemd
// does), makes sure the main process is gone and runs post-stop. result is
// the outcome so far; a kill after the timeout turns it into "timeout".
func (r *runner) stop(result string, started bool) string {
	ctx := context.Background()
	pid := r.st.MainPID
	if started {
		r.setState("deactivating", "stop")
		var mainEnv []string
		if !r.mainExited() {
			mainEnv = []string{"MAINPID=" + strconv.Itoa(pid)}
		}
		stopCtx, cancel := context.WithTimeout(ctx, r.o.StopTimeout)
		r.stage(stopCtx, "stop", append(mainEnv, r.resultEnv(result)...))
		cancel()
	}

	if !r.mainExited() {
		// KillMode=mixed: SIGTERM to the main process only.
		r.setState("deactivating", "stop-sigterm")
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-r.mainDone:
		case <-time.After(r.o.StopTimeout):
			r.log.Warn("main process ignored SIGTERM, killing it", "timeout", r.o.StopTimeout)
			r.setState("deactivating", "final-sigkill")
			syscall.Kill(-pid, syscall.SIGKILL)
			<-r.mainDone
			result = "timeout"
		}
	}
	// Whatever the main process left in its group goes with it.
	syscall.Kill(-pid, syscall.SIGKILL)
	r.st.MainPID, r.st.MainStart = 0, 0

	r.setState("deactivating", "stop-post")
	r.stage(ctx, "post-stop", r.resultEnv(result))
	return result
}

// finish records the final state and runs on-failure when the unit failed,
// as OnFailure= would.
func (r *runner) finish(ctx context.Context, result string) {
	r.st.Result = result
	r.recordExit()
	if result == "success" {
		r.setState("inactive", "dead")
		r.log.Info("stopped")
		return
	}
	r.setState("failed", "failed")
	r.log.Warn("failed", "result", result)
	r.stage(context.WithoutCancel(ctx), "on-failure", []string{
		"MONITOR_SERVICE_RESULT=" + result,
		"MONITOR_EXIT_CODE=" + r.exitCode,
		"MONITOR_EXIT_STATUS=" + r.exitStat,
		"MONITOR_UNIT=" + UnitName(r.o.UnitPrefix, r.id),
	})
}

// recordExit keeps how the main process ended, if it ran, in the state.
func (r *runner) recordExit() {
	if r.main == nil || !r.mainExited() {
		r.st.Exited = time.Now().UTC()
		return
	}
	ws, _ := r.main.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ws.Exited():
		r.st.ExitCode, r.st.ExitStatus = "exited", strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		r.st.ExitCode, r.st.ExitStatus = "killed", signalName(ws.Signal())
		if ws.CoreDump() {
			r.st.ExitCode = "dumped"
		}
	}
	if r.mainEnded.IsZero() {
		r.mainEnded = time.Now()
	}
	r.st.Exited = r.mainEnded.UTC()
}

// resultEnv is what systemd tells ExecStop= and ExecStopPost= about how the
// service went.
func (r *runner) resultEnv(result string) []string {
	env := []string{"SERVICE_RESULT=" + result}
	if r.exitCode != "" {
		env = append(env, "EXIT_CODE="+r.exitCode, "EXIT_STATUS="+r.exitStat)
	}
	return env
}

// stage runs `<lifecycle> <stage> <id>` and waits for it. Cancelling ctx
// sends it SIGTERM, then SIGKILL after StopTimeout.
func (r *runner) stage(ctx context.Context, stage string, extra []string) error {
	cmd := exec.CommandContext(ctx, r.o.LifecycleBin, stage, r.id)
	cmd.Env = append(append([]string{}, r.env...), extra...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = r.o.StopTimeout
	start := time.Now()
	err := cmd.Run()
	if err != nil {
		r.log.Error("stage failed", "stage", stage, "err", err, "took", time.Since(start).Round(time.Millisecond))
		return fmt.Errorf("%s vm %s: %w", stage, r.id, err)
	}
	r.log.Info("stage done", "stage", stage, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func signalName(s syscall.Signal) string {
	names := map[syscall.Signal]string{
		syscall.SIGHUP: "HUP", syscall.SIGINT: "INT", syscall.SIGQUIT: "QUIT", syscall.SIGILL: "ILL",
		syscall.SIGABRT: "ABRT", syscall.SIGFPE: "FPE", syscall.SIGKILL: "KILL", syscall.SIGSEGV: "SEGV",
		syscall.SIGPIPE: "PIPE", syscall.SIGALRM: "ALRM", syscall.SIGTERM: "TERM", syscall.SIGUSR1: "USR1",
		syscall.SIGUSR2: "USR2", syscall.SIGBUS: "BUS",
	}
	if n, ok := names[s]; ok {
		return n
	}
	return strconv.Itoa(int(s))
}

func readState(path string) (detachedState, error) {
	st, err := states.Load(path, func(b []byte) (detachedState, bool, error) {
		var st detachedState
		if err := json.Unmarshal(b, &st); err != nil {
			return st, false, fmt.Errorf("%s: %w", path, err)
		}
		return st, true, nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return neverRun, nil
	}
	return st, err
}

// neverRun is the state of a VM with no recorded state: its unit was never
// started, or it was forgotten.
var neverRun = detachedState{ActiveState: "inactive", SubState: "dead"}

// states keeps each VM's recorded state as last decoded, so that a list
// of VMs under the detached supervisor pays one stat per VM while its
// state is unchanged. Every writer replaces the file by rename (writeState
// and the supervising process, through atomicfile) or removes it, so a
// state recorded by any process is read again (filecache's guarantees);
// detachedState holds values only, so the cached one is never shared
// mutably.
var states filecache.Cache[detachedState]

func jsonMarshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
