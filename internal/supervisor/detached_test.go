package supervisor_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv"
)

func detached(t *testing.T, f vmFixture, stopTimeout time.Duration) supervisor.Supervisor {
	t.Helper()
	s, err := supervisor.New("detached", supervisor.Options{
		LifecycleBin: testStages(t),
		RunRoot:      f.runRoot,
		ConfigRoot:   f.configRoot,
		StopTimeout:  stopTimeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != "detached" {
		t.Fatalf("Name() = %q, want detached", s.Name())
	}
	// Whatever a failing test leaves running is stopped.
	t.Cleanup(func() { s.Stop(context.Background(), f.id) })
	return s
}

func mustState(t *testing.T, s supervisor.Supervisor, id string) supervisor.State {
	t.Helper()
	before, err := s.States(context.Background(), []string{id})
	if err != nil {
		t.Fatalf("States(%s): %v", id, err)
	}
	st, err := s.State(context.Background(), id)
	if err != nil {
		t.Fatalf("State(%s): %v", id, err)
	}
	after, err := s.States(context.Background(), []string{id})
	if err != nil {
		t.Fatalf("States(%s): %v", id, err)
	}
	// The batch query agrees with State, unless the VM changed meanwhile.
	if before[id] == after[id] && before[id] != st {
		t.Fatalf("States(%s) = %+v, State = %+v", id, before[id], st)
	}
	return st
}

// The supervision contract with the detached supervisor, on this host.
func TestDetachedContract(t *testing.T) {
	im := implementation{root: t.TempDir(), bin: testStages(t), name: "detached"}
	im.sup = func(t *testing.T, stopTimeout time.Duration) supervisor.Supervisor {
		s, err := supervisor.New("detached", im.options(stopTimeout))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Check(context.Background()); err != nil {
			t.Fatalf("Check: %v", err)
		}
		return s
	}
	testContract(t, im)
	testRestart(t, im, func(policy string, delay time.Duration) []string {
		return []string{"MGR_RESTART=" + policy, "MGR_RESTART_DELAY=" + delay.String()}
	})
}

// The detached supervisor's own files: a pid file while it runs, nothing
// left after Forget.
func TestDetachedFiles(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-1111-4d6a-9c1e-000000000001")
	s := detached(t, f, 5*time.Second)
	if s.Name() != "detached" {
		t.Fatalf("Name() = %q", s.Name())
	}
	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	dir := filepath.Join(f.runRoot, f.id)
	b, err := os.ReadFile(filepath.Join(dir, "supervisor.pid"))
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(cmdline), "supervise\x00"+f.id) {
		t.Fatalf("pid file names %d, whose command line is %q", pid, cmdline)
	}
	if err := s.Stop(ctx, f.id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "supervisor.pid")); !os.IsNotExist(err) {
		t.Fatalf("pid file after stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "supervisor.log")); err != nil {
		t.Fatalf("log: %v", err)
	}
	if err := s.Forget(ctx, f.id); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("run directory still there after Forget: %v", err)
	}
}

// If the supervising process itself is killed, the VMM goes on; State says
// so (active/abandoned) and Stop still stops it and runs post-stop.
func TestDetachedSupervisorKilled(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-6666-4d6a-9c1e-000000000006")
	s := detached(t, f, 5*time.Second)

	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(f.runRoot, f.id, "supervisor.pid"))
	if err != nil {
		t.Fatal(err)
	}
	supPID, _ := strconv.Atoi(string(b[:len(b)-1]))
	main := mustState(t, s, f.id).MainPID
	if err := syscall.Kill(supPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "supervisor gone", func() bool { return !processAlive(supPID) })

	st := mustState(t, s, f.id)
	if !st.Active || st.SubState != "abandoned" || st.MainPID != main {
		t.Fatalf("state = %+v, want active/abandoned with MainPID %d", st, main)
	}
	// Start sees the running VMM and does not start a second one.
	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if got := controlStages(f.stages(t)); got != "pre-start,post-start" {
		t.Fatalf("stages = %s", got)
	}
	if err := s.Stop(ctx, f.id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if processAlive(main) {
		t.Fatalf("main process %d survived Stop", main)
	}
	if st := mustState(t, s, f.id); st.ActiveState != "inactive" {
		t.Fatalf("state after Stop = %+v", st)
	}
	if got := controlStages(f.stages(t)); got != "pre-start,post-start,stop,post-stop" {
		t.Fatalf("stages = %s", got)
	}
}

// A pid file naming a process that is not this VM's supervisor (a recycled
// pid) is not believed: State does not report it, and Stop does not signal
// it.
func TestDetachedIgnoresRecycledPIDs(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-8888-4d6a-9c1e-000000000008")
	s := detached(t, f, 5*time.Second)

	stranger := exec.Command("sleep", "300")
	if err := stranger.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stranger.Process.Kill(); stranger.Wait() }()
	pid := strconv.Itoa(stranger.Process.Pid)

	dir := filepath.Join(f.runRoot, f.id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// What a supervisor killed long ago would have left, its pid (and its
	// main process's) since given to the stranger.
	files := map[string]string{
		"supervisor.pid":        pid + "\n",
		"supervisor.state.json": `{"activeState":"active","subState":"running","mainPID":` + pid + `,"mainStart":1,"supervisorPID":` + pid + `}`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	st := mustState(t, s, f.id)
	if st.Active || st.MainPID != 0 || st.ActiveState != "failed" {
		t.Fatalf("state = %+v, want failed without MainPID", st)
	}
	if err := s.Stop(ctx, f.id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !processAlive(stranger.Process.Pid) {
		t.Fatal("Stop killed a process that was not the VM's")
	}
	if n := len(f.stages(t)); n != 0 {
		t.Fatalf("stages ran: %s", stageNames(f.stages(t)))
	}
	// Starting works: the stale files are replaced.
	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if st := mustState(t, s, f.id); !st.Active || st.MainPID == stranger.Process.Pid {
		t.Fatalf("state after Start = %+v", st)
	}
}
