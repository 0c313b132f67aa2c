package supervisor_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv/nspawn"
)

// Supervision's own cost: one start (pre-start, start, post-start) and one
// stop (stop, SIGTERM, post-stop) of a VM whose stages do nothing, so what
// is measured is the supervisor.
//
//	go test -run '^$' -bench . ./internal/supervisor/
func BenchmarkDetachedStartStop(b *testing.B) {
	root := b.TempDir()
	s, err := supervisor.New("detached", supervisor.Options{
		LifecycleBin: testStages(b),
		RunRoot:      filepath.Join(root, "run"),
		ConfigRoot:   filepath.Join(root, "config"),
		StopTimeout:  5 * time.Second,
		Env:          []string{"TEST_STAGE_LOG=" + filepath.Join(root, "stages")},
	})
	if err != nil {
		b.Fatal(err)
	}
	benchStartStop(b, s)
}

// The same against systemd in a container (root).
func BenchmarkSystemdStartStop(b *testing.B) {
	s, _ := systemdInContainer(b)
	benchStartStop(b, s)
}

// systemdInContainer boots systemd in a container (root) with the units of
// the test stages installed, and returns a systemd supervisor on its bus
// and the options it was made with.
func systemdInContainer(b *testing.B) (supervisor.Supervisor, supervisor.Options) {
	bin := testStages(b)
	root := b.TempDir()
	c := nspawn.Boot(b, nspawn.Config{Binds: []string{filepath.Dir(bin), root}})
	c.UseBus(b)
	o := supervisor.Options{
		LifecycleBin: bin,
		RunRoot:      filepath.Join(root, "run"),
		ConfigRoot:   filepath.Join(root, "config"),
		StopTimeout:  5 * time.Second,
		UnitPrefix:   "mergen",
		Env:          []string{"TEST_STAGE_LOG=" + filepath.Join(root, "stages")},
	}
	if err := supervisor.InstallUnits(context.Background(), o, filepath.Join(c.Root, "etc/systemd/system")); err != nil {
		b.Fatal(err)
	}
	s, err := supervisor.New("systemd", o)
	if err != nil {
		b.Fatal(err)
	}
	return s, o
}

func benchStartStop(b *testing.B, s supervisor.Supervisor) {
	ctx := context.Background()
	var start, stop time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		if err := s.Start(ctx, id); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := s.Stop(ctx, id); err != nil {
			b.Fatal(err)
		}
		start += t1.Sub(t0)
		stop += time.Since(t1)
		if err := s.Forget(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(start.Seconds()*1000/float64(b.N), "start-ms/op")
	b.ReportMetric(stop.Seconds()*1000/float64(b.N), "stop-ms/op")
}

// What a VM's state costs against systemd in a container (root), asked for
// a VM whose unit was never started (a VM just created): State, beside the
// baseline of asking systemd for the unit's properties (how State asked
// before: every property of the unit, then its MainPID), in the same run.
//
//	go test -run '^$' -bench SystemdStateOfANewVM ./internal/supervisor/
func BenchmarkSystemdStateOfANewVM(b *testing.B) {
	s, o := systemdInContainer(b)
	ctx := context.Background()
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	b.Run("State", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			st, err := s.State(ctx, fmt.Sprintf("new-%d", i))
			if err != nil || !st.Available || st.ActiveState != "inactive" {
				b.Fatalf("State: %+v, %v", st, err)
			}
		}
	})
	b.Run("unit-properties", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			unit := supervisor.UnitName(o.UnitPrefix, fmt.Sprintf("old-%d", i))
			props, err := conn.GetUnitPropertiesContext(ctx, unit)
			if err != nil || props["ActiveState"] != "inactive" {
				b.Fatalf("properties of %s: %v, %v", unit, props["ActiveState"], err)
			}
			if _, err := conn.GetServicePropertyContext(ctx, unit, "MainPID"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
