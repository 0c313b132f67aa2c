package supervisor_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
)

// countStages counts the records of stage in the stage log.
func (f vmFixture) countStages(t *testing.T, stage string) int {
	t.Helper()
	n := 0
	for _, r := range f.stages(t) {
		if r["stage"] == stage {
			n++
		}
	}
	return n
}

// testRestart is the restart policy's part of the contract. restartEnv
// turns a policy into what the VM's fixture needs (the env file's
// MGR_RESTART for the detached supervisor); delay is the first wait
// between restarts the implementation was given.
func testRestart(t *testing.T, im implementation, restartEnv func(policy string, delay time.Duration) []string) {
	ctx := context.Background()

	t.Run("on-failure:N restarts a failing main process N times, then the unit stays failed", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s, append(restartEnv("on-failure:2", 50*time.Millisecond), "TEST_EXIT_CODE=3")...)
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := os.WriteFile(f.trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		f.waitStage(t, "on-failure")
		testenv.Eventually(t, time.Minute, "state failed", func() bool { return mustState(t, s, f.id).ActiveState == "failed" })
		st := mustState(t, s, f.id)
		// systemd also counts the restart its start limit refused; that one
		// never happened and is not reported.
		if st.Restarts != 2 || st.MainPID != 0 {
			t.Fatalf("state = %+v, want failed after 2 restarts", st)
		}
		// The last exit says the policy gave up, and how the last run ended.
		if e, err := s.LastExit(ctx, f.id); err != nil || !e.GaveUp || e.Result != "exit-code" || e.Restarts != 2 || e.Code != "exited" || e.Status != 3 {
			t.Fatalf("LastExit = %+v, %v; want the policy given up after 2 restarts, the last run exited with status 3", e, err)
		}
		if n := f.countStages(t, "start"); n != 3 {
			t.Fatalf("the main process ran %d times, want 3", n)
		}
		want := strings.Repeat("pre-start,post-start,post-stop,", 3) + "on-failure"
		if got := controlStages(f.stages(t)); got != want {
			t.Fatalf("stages = %s, want %s", got, want)
		}
	})

	t.Run("always restarts a main process that exits cleanly", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s, append(restartEnv("always", 50*time.Millisecond), "TEST_EXIT_CODE=0")...)
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := os.WriteFile(f.trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, time.Minute, "two restarts", func() bool { return mustState(t, s, f.id).Restarts >= 2 })
		os.Remove(f.trigger)
		testenv.Eventually(t, time.Minute, "running again", func() bool {
			st := mustState(t, s, f.id)
			return st.ActiveState == "active" && st.MainPID != 0
		})
		if n, st := f.countStages(t, "stop"), mustState(t, s, f.id); n < st.Restarts {
			t.Fatalf("stop ran %d times for %d restarts: a clean exit runs stop", n, st.Restarts)
		}
		if f.countStages(t, "on-failure") != 0 {
			t.Fatal("on-failure ran for clean exits")
		}
		if err := s.Stop(ctx, f.id); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if st := mustState(t, s, f.id); st.ActiveState != "inactive" {
			t.Fatalf("state after stop = %+v, want inactive: a stop is never restarted", st)
		}
	})

	t.Run("a stop request during the restart delay stops the VM", func(t *testing.T) {
		s := im.sup(t, 5*time.Second)
		f := im.vm(t, s, append(restartEnv("on-failure", time.Hour), "TEST_EXIT_CODE=3")...)
		if err := s.Start(ctx, f.id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := os.WriteFile(f.trigger, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, time.Minute, "auto-restart", func() bool {
			st := mustState(t, s, f.id)
			return st.ActiveState == "activating" && st.SubState == "auto-restart"
		})
		begin := time.Now()
		if err := s.Stop(ctx, f.id); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if st := mustState(t, s, f.id); st.ActiveState != "inactive" || st.MainPID != 0 {
			t.Fatalf("state after stop = %+v, want inactive", st)
		}
		if time.Since(begin) > 30*time.Second {
			t.Fatalf("stop took %v: it waited for the restart delay", time.Since(begin))
		}
		if n := f.countStages(t, "start"); n != 1 || f.countStages(t, "on-failure") != 0 {
			t.Fatalf("stages = %s, want one run and no on-failure", stageNames(f.stages(t)))
		}
	})
}
