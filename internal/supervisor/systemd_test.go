package supervisor_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv/nspawn"
)

// The systemd supervisor against a real systemd (PID 1 of a container):
// units are installed and reloaded over D-Bus, a VM's unit runs the stages
// in order, outlives the client that started it, reports its state, and a
// failed VM triggers the failure unit.
func TestSystemdSupervisesUnitsInContainer(t *testing.T) {
	bin := testStages(t)
	shared := t.TempDir()
	c := nspawn.Boot(t, nspawn.Config{Binds: []string{filepath.Dir(bin), shared}})
	c.UseBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	vm := newVM(t, shared, "5d0c1a7e-aaaa-4b1c-8f00-000000000001")
	o := supervisor.Options{
		LifecycleBin: bin,
		RunRoot:      vm.runRoot,
		ConfigRoot:   vm.configRoot,
		StopTimeout:  5 * time.Second,
		Env:          []string{"TEST_STAGE_LOG=" + vm.stageLog},
	}
	s, err := supervisor.New("systemd", o)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != "systemd" {
		t.Fatalf("Name() = %q", s.Name())
	}
	unit := "mergen@" + vm.id + ".service"
	journal := func() string { return c.Journal(unit) }

	// Before installation the supervisor says what is missing.
	if err := s.Check(ctx); !errors.Is(err, supervisor.ErrUnavailable) || !strings.Contains(err.Error(), "mergen@.service") {
		t.Fatalf("Check before install = %v, want unavailable naming mergen@.service", err)
	}
	if err := s.Start(ctx, vm.id); !errors.Is(err, supervisor.ErrUnavailable) {
		t.Fatalf("Start before install = %v, want unavailable", err)
	} else {
		t.Logf("Start before install: %v", err)
	}
	if err := supervisor.InstallUnits(ctx, o, filepath.Join(c.Root, "etc/systemd/system")); err != nil {
		t.Fatalf("InstallUnits: %v", err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check after install: %v", err)
	}

	t.Run("start, state, idempotency, stop", func(t *testing.T) {
		if err := s.Start(ctx, vm.id); err != nil {
			t.Fatalf("Start: %v\n%s", err, journal())
		}
		st := mustState(t, s, vm.id)
		start := vm.waitStage(t, "start")
		if !st.Available || !st.Active || st.ActiveState != "active" || st.SubState != "running" || st.Unit != unit {
			t.Fatalf("state = %+v", st)
		}
		if strconv.Itoa(st.MainPID) != start["pid"] {
			t.Fatalf("MainPID = %d, want the start stage's pid %s", st.MainPID, start["pid"])
		}
		if start["TEST_FROM_ENV_FILE"] != "from env file" {
			t.Fatalf("start stage did not get the env file: %v", start)
		}
		if out, err := c.Exec(ctx, "systemctl", "is-active", unit); err != nil || strings.TrimSpace(string(out)) != "active" {
			t.Fatalf("systemctl is-active %s = %q, %v", unit, out, err)
		}
		if err := s.Start(ctx, vm.id); err != nil {
			t.Fatalf("second Start: %v", err)
		}
		if again := mustState(t, s, vm.id); again.MainPID != st.MainPID {
			t.Fatalf("second Start changed MainPID %d -> %d", st.MainPID, again.MainPID)
		}
		if got := controlStages(vm.stages(t)); got != "pre-start,post-start" {
			t.Fatalf("stages after two starts = %s", got)
		}

		if err := s.Stop(ctx, vm.id); err != nil {
			t.Fatalf("Stop: %v\n%s", err, journal())
		}
		if st := mustState(t, s, vm.id); st.Active || st.ActiveState != "inactive" || st.MainPID != 0 {
			t.Fatalf("state after stop = %+v", st)
		}
		if got := controlStages(vm.stages(t)); got != "pre-start,post-start,stop,post-stop" {
			t.Fatalf("stages = %s", got)
		}
		if stop := vm.find(t, "stop"); stop["MAINPID"] != start["pid"] {
			t.Fatalf("stop stage saw %v, want MAINPID=%s", stop, start["pid"])
		}
		if err := s.Stop(ctx, vm.id); err != nil {
			t.Fatalf("second Stop: %v", err)
		}
	})

	t.Run("unit outlives the client that started it", func(t *testing.T) {
		other := newVM(t, shared, "5d0c1a7e-bbbb-4b1c-8f00-000000000002")
		starter := exec.Command(bin, "starter", other.id)
		starter.Env = append(os.Environ(), "TEST_SUPERVISOR=systemd",
			"MGR_RUN_ROOT="+o.RunRoot, "MGR_CONFIG_ROOT="+o.ConfigRoot, "MGR_STOP_TIMEOUT_SECONDS=5")
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
		st := mustState(t, s, other.id)
		if !st.Active || st.MainPID == 0 {
			t.Fatalf("after SIGKILL of the starter: %+v", st)
		}
		if err := s.Stop(ctx, other.id); err != nil {
			t.Fatalf("Stop: %v", err)
		}
	})

	t.Run("a main process ignoring SIGTERM is killed after TimeoutStopSec", func(t *testing.T) {
		quick := o
		quick.StopTimeout = time.Second
		if err := supervisor.InstallUnits(ctx, quick, filepath.Join(c.Root, "etc/systemd/system")); err != nil {
			t.Fatalf("InstallUnits: %v", err)
		}
		defer supervisor.InstallUnits(ctx, o, filepath.Join(c.Root, "etc/systemd/system"))
		stubborn := newVM(t, shared, "5d0c1a7e-eeee-4b1c-8f00-000000000004", "TEST_IGNORE_TERM=1", "TEST_STAGE_LOG="+filepath.Join(shared, "stubborn.stages"))
		stubborn.stageLog = filepath.Join(shared, "stubborn.stages")
		if err := s.Start(ctx, stubborn.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := s.Stop(ctx, stubborn.id); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		// The detached supervisor's TestDetachedStopKillsAfterTimeout
		// asserts the same outcome.
		if st := mustState(t, s, stubborn.id); st.ActiveState != "failed" {
			t.Fatalf("state = %+v, want failed", st)
		}
		if post := stubborn.find(t, "post-stop"); post["SERVICE_RESULT"] != "timeout" {
			t.Fatalf("post-stop saw %v, want SERVICE_RESULT=timeout", post)
		}
		if err := s.Forget(ctx, stubborn.id); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("failure runs the failure unit, Forget clears it", func(t *testing.T) {
		bad := newVM(t, shared, "5d0c1a7e-cccc-4b1c-8f00-000000000003", "TEST_EXIT_CODE=3", "TEST_STAGE_LOG="+filepath.Join(shared, "bad.stages"))
		bad.stageLog = filepath.Join(shared, "bad.stages")
		if err := s.Start(ctx, bad.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := os.WriteFile(bad.trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		eventually(t, "unit failed", func() bool { return mustState(t, s, bad.id).ActiveState == "failed" })
		of := bad.waitStage(t, "on-failure")
		if of["MONITOR_SERVICE_RESULT"] != "exit-code" || of["MONITOR_EXIT_STATUS"] != "3" {
			t.Fatalf("on-failure saw %v, want MONITOR_SERVICE_RESULT=exit-code MONITOR_EXIT_STATUS=3", of)
		}
		if post := bad.find(t, "post-stop"); post["SERVICE_RESULT"] != "exit-code" {
			t.Fatalf("post-stop saw %v, want SERVICE_RESULT=exit-code", post)
		}
		if err := s.Forget(ctx, bad.id); err != nil {
			t.Fatalf("Forget: %v", err)
		}
		if st := mustState(t, s, bad.id); st.ActiveState != "inactive" {
			t.Fatalf("state after Forget = %+v, want inactive", st)
		}
		// Forgetting twice, or a VM systemd never saw, is fine.
		if err := s.Forget(ctx, bad.id); err != nil {
			t.Fatalf("second Forget: %v", err)
		}
		if err := s.Stop(ctx, "5d0c1a7e-dddd-4b1c-8f00-00000000ffff"); err != nil {
			t.Fatalf("Stop of a never started VM: %v", err)
		}
	})
}
