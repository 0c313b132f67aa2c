package supervisor_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv"
)

// implementation is what the contract needs from one supervisor: a
// directory the stages can write into and a way to get the supervisor with
// a given stop timeout.
type implementation struct {
	root string // VM fixtures live here (run root, config root, stage logs)
	bin  string // the stand-in lifecycle program
	name string // for New and for the starter process
	sup  func(t *testing.T, stopTimeout time.Duration) supervisor.Supervisor
}

func (im implementation) options(stopTimeout time.Duration) supervisor.Options {
	return supervisor.Options{
		LifecycleBin: im.bin,
		RunRoot:      filepath.Join(im.root, "run"),
		ConfigRoot:   filepath.Join(im.root, "config"),
		StopTimeout:  stopTimeout,
	}
}

// vm makes a VM fixture with a fresh id and stops the VM when the test
// ends, whatever happened.
func (im implementation) vm(t *testing.T, s supervisor.Supervisor, env ...string) vmFixture {
	t.Helper()
	vmSeq++
	f := newVM(t, im.root, fmt.Sprintf("7f3e9b10-0000-4000-8000-%012d", vmSeq), env...)
	t.Cleanup(func() { s.Stop(context.Background(), f.id) })
	return f
}

var vmSeq int

// testContract is the behaviour both supervisors promise, which is
// systemd's behaviour for a unit like mergen@.service. Each scenario runs
// against the detached supervisor on this host and against a real systemd.
func testContract(t *testing.T, im implementation) {
	ctx := context.Background()

	t.Run("start runs the start stages, stop the stop stages, both idempotent", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s)
		st := mustState(t, s, f.id)
		if !st.Available || st.Active || st.ActiveState != "inactive" || st.MainPID != 0 {
			t.Fatalf("state before start = %+v, want available and inactive", st)
		}
		if u := s.Unstarted(f.id); u != st {
			t.Fatalf("Unstarted = %+v; want what State says before the first start, %+v", u, st)
		}
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		st = mustState(t, s, f.id)
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
		if err := s.Forget(ctx, f.id); err != nil {
			t.Fatalf("second Forget: %v", err)
		}
		if st := mustState(t, s, f.id); st.ActiveState != "inactive" {
			t.Fatalf("state after Forget = %+v", st)
		}
	})

	t.Run("a VM outlives a SIGKILL of the process that started it", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s)
		starter := exec.Command(im.bin, "starter", f.id)
		starter.Env = append(os.Environ(), "TEST_SUPERVISOR="+im.name,
			"MGR_RUN_ROOT="+filepath.Join(im.root, "run"), "MGR_CONFIG_ROOT="+filepath.Join(im.root, "config"),
			"MGR_STOP_TIMEOUT_SECONDS=5")
		out, err := starter.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		starter.Stderr = os.Stderr
		if err := starter.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		starter.Process.Signal(syscall.SIGKILL)
		starter.Wait()
		if err != nil || line != "started\n" {
			t.Fatalf("starter said %q, %v", line, err)
		}
		// Another supervisor value, as a restarted daemon would have, finds
		// the VM running and stops it.
		st := mustState(t, s, f.id)
		if !st.Active || st.SubState != "running" || st.MainPID == 0 {
			t.Fatalf("after SIGKILL of the starter: %+v", st)
		}
		if err := s.Stop(ctx, f.id); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if st := mustState(t, s, f.id); st.ActiveState != "inactive" {
			t.Fatalf("after Stop: %+v", st)
		}
	})

	t.Run("a main process exiting cleanly runs stop and post-stop", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s, "TEST_EXIT_CODE=0")
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := os.WriteFile(f.trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, time.Minute, "post-stop", func() bool { return len(f.stages(t)) == 5 })
		testenv.Eventually(t, time.Minute, "state inactive", func() bool { return mustState(t, s, f.id).ActiveState == "inactive" })
		if got := controlStages(f.stages(t)); got != "pre-start,post-start,stop,post-stop" {
			t.Fatalf("stages = %s", got)
		}
		if post := f.find(t, "post-stop"); post["SERVICE_RESULT"] != "success" || post["EXIT_STATUS"] != "0" {
			t.Fatalf("post-stop saw %v, want SERVICE_RESULT=success EXIT_STATUS=0", post)
		}
	})

	t.Run("a main process that fails runs post-stop and on-failure", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s, "TEST_EXIT_CODE=3")
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := os.WriteFile(f.trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, time.Minute, "state failed", func() bool { return mustState(t, s, f.id).ActiveState == "failed" })
		f.waitStage(t, "on-failure")
		if got := controlStages(f.stages(t)); got != "pre-start,post-start,post-stop,on-failure" {
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
		if e, err := s.LastExit(ctx, f.id); err != nil || e.Result != "exit-code" || e.Code != "exited" || e.Status != 3 || e.Signal != "" || e.At.IsZero() {
			t.Fatalf("LastExit = %+v, %v; want exit-code, exited with status 3, with its time", e, err)
		}

		// A failed VM starts again; Forget after a stop leaves it inactive.
		os.Remove(f.trigger)
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start after failure: %v", err)
		}
		if st := mustState(t, s, f.id); !st.Active {
			t.Fatalf("state after restart = %+v", st)
		}
	})

	t.Run("a main process killed by a signal reports the signal", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s, "TEST_EXIT_SIGNAL=KILL")
		if e, err := s.LastExit(ctx, f.id); err != nil || e != (supervisor.Exit{}) {
			t.Fatalf("LastExit before any run = %+v, %v; want nothing", e, err)
		}
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if e, err := s.LastExit(ctx, f.id); err != nil || e != (supervisor.Exit{}) {
			t.Fatalf("LastExit while running = %+v, %v; want nothing", e, err)
		}
		if err := os.WriteFile(f.trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, time.Minute, "state failed", func() bool { return mustState(t, s, f.id).ActiveState == "failed" })
		f.waitStage(t, "on-failure")
		if e, err := s.LastExit(ctx, f.id); err != nil || e.Result != "signal" || e.Code != "killed" || e.Signal != "KILL" || e.Status != 0 || e.At.IsZero() {
			t.Fatalf("LastExit = %+v, %v; want signal, killed by KILL", e, err)
		}
	})

	t.Run("a stopped VM's last exit is a success or forgotten", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s)
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := s.Stop(ctx, f.id); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		// systemd unloads a unit that stopped cleanly and forgets its run.
		if e, err := s.LastExit(ctx, f.id); err != nil || e != (supervisor.Exit{}) && (e.Result != "success" || e.Code == "" || e.At.IsZero()) {
			t.Fatalf("LastExit = %+v, %v; want success with how the main process ended, or nothing", e, err)
		}
	})

	t.Run("a failing pre-start fails the start without running the VM", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s, "TEST_FAIL_STAGE=pre-start")
		err := s.Start(ctx, f.id)
		if err == nil {
			t.Fatal("Start succeeded with a failing pre-start stage")
		}
		t.Logf("Start error: %v", err)
		testenv.Eventually(t, time.Minute, "on-failure stage", func() bool { return stageNames(f.stages(t)) == "pre-start,post-stop,on-failure" })
		if st := mustState(t, s, f.id); st.ActiveState != "failed" {
			t.Fatalf("state = %+v, want failed", st)
		}
		if err := s.Forget(ctx, f.id); err != nil {
			t.Fatalf("Forget: %v", err)
		}
		if st := mustState(t, s, f.id); st.ActiveState != "inactive" {
			t.Fatalf("state after Forget = %+v, want inactive", st)
		}
	})

	t.Run("a failing post-start stops the main process without the stop stage", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s, "TEST_FAIL_STAGE=post-start")
		if err := s.Start(ctx, f.id); err == nil {
			t.Fatal("Start succeeded with a failing post-start stage")
		}
		// The main process may be terminated before it writes its own
		// record: only the control stages are certain.
		testenv.Eventually(t, time.Minute, "on-failure stage", func() bool { return controlStages(f.stages(t)) == "pre-start,post-start,post-stop,on-failure" })
		if st := mustState(t, s, f.id); st.ActiveState != "failed" || st.MainPID != 0 {
			t.Fatalf("state = %+v, want failed without MainPID", st)
		}
	})

	t.Run("a main process ignoring SIGTERM is killed after the stop timeout", func(t *testing.T) {
		s := im.sup(t, time.Second)
		f := im.vm(t, s, "TEST_IGNORE_TERM=1")
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := s.Stop(ctx, f.id); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if st := mustState(t, s, f.id); st.ActiveState != "failed" || st.MainPID != 0 {
			t.Fatalf("state = %+v, want failed without MainPID", st)
		}
		if post := f.find(t, "post-stop"); post["SERVICE_RESULT"] != "timeout" {
			t.Fatalf("post-stop saw %v, want SERVICE_RESULT=timeout", post)
		}
	})

	t.Run("concurrent starts start once", func(t *testing.T) {
		a, b := im.sup(t, 5*time.Second), im.sup(t, 5*time.Second)
		f := im.vm(t, a)
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
	})

	t.Run("States reports many VMs in one call as State does for each", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		running, failed, never := im.vm(t, s), im.vm(t, s, "TEST_EXIT_CODE=3"), im.vm(t, s)
		for _, f := range []vmFixture{running, failed} {
			if err := s.Start(ctx, f.id); err != nil {
				t.Fatalf("Start: %v", err)
			}
		}
		if err := os.WriteFile(failed.trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, time.Minute, "state failed", func() bool { return mustState(t, s, failed.id).ActiveState == "failed" })
		failed.waitStage(t, "on-failure")
		ids := []string{running.id, failed.id, never.id}
		got, err := s.States(ctx, ids)
		if err != nil {
			t.Fatalf("States: %v", err)
		}
		if len(got) != len(ids) {
			t.Fatalf("States = %+v, want %d VMs", got, len(ids))
		}
		for _, id := range ids {
			if want := mustState(t, s, id); got[id] != want {
				t.Errorf("States[%s] = %+v, State = %+v", id, got[id], want)
			}
		}
		if st := got[running.id]; !st.Active || st.MainPID == 0 {
			t.Errorf("running VM: %+v, want active with its MainPID", st)
		}
		if st := got[never.id]; !st.Available || st.ActiveState != "inactive" || st.SubState != "dead" || st.MainPID != 0 {
			t.Errorf("never started VM: %+v, want inactive/dead", st)
		}
	})
}
