package supervisor_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/supervisor"
)

func detached(t *testing.T, f vmFixture, stopTimeout time.Duration) supervisor.Supervisor {
	t.Helper()
	s, err := supervisor.New("detached", supervisor.Options{
		LifecycleBin: testStages(t),
		RunRoot:      f.runRoot,
		ConfigRoot:   f.configRoot,
		StopTimeout:  stopTimeout,
		Env:          []string{"TEST_STAGE_LOG=" + f.stageLog},
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
	st, err := s.State(context.Background(), id)
	if err != nil {
		t.Fatalf("State(%s): %v", id, err)
	}
	return st
}

// The full life of a VM: the stages run in systemd's order, the main
// process is the start stage, start and stop are idempotent, and Forget
// leaves nothing behind.
func TestDetachedStartStopRunsStagesInOrder(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-1111-4d6a-9c1e-000000000001")
	s := detached(t, f, 5*time.Second)

	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if st := mustState(t, s, f.id); st.ActiveState != "inactive" || st.Active || !st.Available {
		t.Fatalf("state before start = %+v, want available and inactive", st)
	}
	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	st := mustState(t, s, f.id)
	start := f.waitStage(t, "start")
	if !st.Active || st.ActiveState != "active" || st.SubState != "running" || st.Unit != "mergen@"+f.id+".service" {
		t.Fatalf("state after start = %+v", st)
	}
	if strconv.Itoa(st.MainPID) != start["pid"] {
		t.Fatalf("MainPID = %d, want the start stage's pid %s", st.MainPID, start["pid"])
	}
	if got := f.find(t, "post-start")["MAINPID"]; got != start["pid"] {
		t.Fatalf("post-start saw MAINPID=%q, want %s", got, start["pid"])
	}
	if got := start["TEST_FROM_ENV_FILE"]; got != "from env file" {
		t.Fatalf("start stage saw TEST_FROM_ENV_FILE=%q, want the env file's value", got)
	}
	if _, err := os.Stat(filepath.Join(f.runRoot, f.id, "supervisor.pid")); err != nil {
		t.Fatalf("pid file: %v", err)
	}

	// Starting a running VM changes nothing.
	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	if again := mustState(t, s, f.id); again.MainPID != st.MainPID {
		t.Fatalf("second Start changed MainPID %d -> %d", st.MainPID, again.MainPID)
	}
	if got := controlStages(f.stages(t)); got != "pre-start,post-start" {
		t.Fatalf("stages after two starts = %s", got)
	}

	if err := s.Stop(ctx, f.id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if st := mustState(t, s, f.id); st.Active || st.ActiveState != "inactive" || st.SubState != "dead" || st.MainPID != 0 {
		t.Fatalf("state after stop = %+v, want inactive/dead without MainPID", st)
	}
	if processAlive(st.MainPID) {
		t.Fatalf("main process %d survived Stop", st.MainPID)
	}
	if got := controlStages(f.stages(t)); got != "pre-start,post-start,stop,post-stop" {
		t.Fatalf("stages = %s", got)
	}
	if stop := f.find(t, "stop"); stop["MAINPID"] != start["pid"] || stop["SERVICE_RESULT"] != "success" {
		t.Fatalf("stop stage saw %v, want MAINPID=%s SERVICE_RESULT=success", stop, start["pid"])
	}
	if err := s.Stop(ctx, f.id); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	if err := s.Forget(ctx, f.id); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.runRoot, f.id)); !os.IsNotExist(err) {
		t.Fatalf("run directory still there after Forget: %v", err)
	}
	if st := mustState(t, s, f.id); st.ActiveState != "inactive" {
		t.Fatalf("state after Forget = %+v", st)
	}
}

// The VM belongs to its supervising process, not to whoever started it: a
// SIGKILL of the starting process leaves it running, and a new supervisor
// value (a restarted daemon) finds and stops it.
func TestDetachedSurvivesSIGKILLOfStarter(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-2222-4d6a-9c1e-000000000002")
	bin := testStages(t)
	s := detached(t, f, 5*time.Second)

	starter := exec.Command(bin, "starter", f.id)
	starter.Env = append(os.Environ(),
		"MGR_RUN_ROOT="+f.runRoot, "MGR_CONFIG_ROOT="+f.configRoot, "MGR_STOP_TIMEOUT_SECONDS=5",
		"TEST_STAGE_LOG="+f.stageLog)
	out, err := starter.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	starter.Stderr = os.Stderr
	if err := starter.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "started\n" {
		starter.Process.Kill()
		starter.Wait()
		t.Fatalf("starter said %q, %v", line, err)
	}
	before := mustState(t, s, f.id)
	if err := starter.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	starter.Wait()

	after := mustState(t, s, f.id)
	if !after.Active || after.SubState != "running" || after.MainPID != before.MainPID || !processAlive(after.MainPID) {
		t.Fatalf("after SIGKILL of the starter: %+v (before %+v)", after, before)
	}
	if err := s.Stop(ctx, f.id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if st := mustState(t, s, f.id); st.ActiveState != "inactive" || processAlive(before.MainPID) {
		t.Fatalf("after Stop: %+v, main alive %v", st, processAlive(before.MainPID))
	}
}

// A main process that dies by itself fails the VM: stop and post-stop run
// with systemd's result variables, then on-failure, and State says failed
// until the VM is started again.
func TestDetachedMainProcessFailure(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-3333-4d6a-9c1e-000000000003", "TEST_EXIT_CODE=3")
	s := detached(t, f, 5*time.Second)

	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := os.WriteFile(f.trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "state failed", func() bool { return mustState(t, s, f.id).ActiveState == "failed" })
	eventually(t, "on-failure stage", func() bool { return len(f.stages(t)) >= 6 })
	if got := controlStages(f.stages(t)); got != "pre-start,post-start,stop,post-stop,on-failure" {
		t.Fatalf("stages = %s", got)
	}

	if st := mustState(t, s, f.id); st.Active || st.SubState != "failed" || st.MainPID != 0 {
		t.Fatalf("state = %+v, want failed/failed without MainPID", st)
	}
	if post := f.find(t, "post-stop"); post["SERVICE_RESULT"] != "exit-code" || post["EXIT_STATUS"] != "3" {
		t.Fatalf("post-stop saw %v, want SERVICE_RESULT=exit-code EXIT_STATUS=3", post)
	}
	if of := f.find(t, "on-failure"); of["MONITOR_SERVICE_RESULT"] != "exit-code" || of["MONITOR_EXIT_STATUS"] != "3" {
		t.Fatalf("on-failure saw %v, want MONITOR_SERVICE_RESULT=exit-code MONITOR_EXIT_STATUS=3", of)
	}

	// A failed VM starts again.
	os.Remove(f.trigger)
	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("Start after failure: %v", err)
	}
	if st := mustState(t, s, f.id); !st.Active {
		t.Fatalf("state after restart = %+v", st)
	}
}

// A failing start stage makes Start fail with a clear error; the main
// process never runs, post-stop and on-failure do.
func TestDetachedFailingPreStart(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-4444-4d6a-9c1e-000000000004", "TEST_FAIL_STAGE=pre-start")
	s := detached(t, f, 5*time.Second)

	err := s.Start(ctx, f.id)
	if err == nil {
		t.Fatal("Start succeeded with a failing pre-start stage")
	}
	t.Logf("Start error: %v", err)
	eventually(t, "on-failure stage", func() bool { return stageNames(f.stages(t)) == "pre-start,post-stop,on-failure" })
	if st := mustState(t, s, f.id); st.ActiveState != "failed" {
		t.Fatalf("state = %+v, want failed", st)
	}
}

// A main process that ignores SIGTERM is killed once StopTimeout has
// passed, and the VM is then failed with result timeout, like a unit.
func TestDetachedStopKillsAfterTimeout(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-5555-4d6a-9c1e-000000000005", "TEST_IGNORE_TERM=1")
	s := detached(t, f, time.Second)

	if err := s.Start(ctx, f.id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := mustState(t, s, f.id).MainPID
	if err := s.Stop(ctx, f.id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if processAlive(pid) {
		t.Fatalf("main process %d survived Stop", pid)
	}
	if st := mustState(t, s, f.id); st.ActiveState != "failed" {
		t.Fatalf("state = %+v, want failed", st)
	}
	if post := f.find(t, "post-stop"); post["SERVICE_RESULT"] != "timeout" {
		t.Fatalf("post-stop saw %v, want SERVICE_RESULT=timeout", post)
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
	eventually(t, "supervisor gone", func() bool { return !processAlive(supPID) })

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

// Two callers starting the same VM at once (two goroutines here, two
// daemons or a daemon and an operator in life) start it once.
func TestDetachedConcurrentStartsStartOnce(t *testing.T) {
	ctx := context.Background()
	f := newVM(t, t.TempDir(), "0b6f3c2e-7777-4d6a-9c1e-000000000007")
	a, b := detached(t, f, 5*time.Second), detached(t, f, 5*time.Second)

	errs := make(chan error, 2)
	for _, s := range []supervisor.Supervisor{a, b} {
		go func() { errs <- s.Start(ctx, f.id) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("Start: %v", err)
		}
	}
	f.waitStage(t, "start")
	if got := stageNames(f.stages(t)); got != "pre-start,start,post-start" && got != "pre-start,post-start,start" {
		t.Fatalf("stages = %s, want one start", got)
	}
	if sa, sb := mustState(t, a, f.id), mustState(t, b, f.id); !sa.Active || sa.MainPID != sb.MainPID {
		t.Fatalf("states differ: %+v %+v", sa, sb)
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
