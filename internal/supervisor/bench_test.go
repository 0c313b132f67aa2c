package supervisor_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

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
	bin := testStages(b)
	root := b.TempDir()
	c := nspawn.Boot(b, nspawn.Config{Binds: []string{filepath.Dir(bin), root}})
	c.UseBus(b)
	o := supervisor.Options{
		LifecycleBin: bin,
		RunRoot:      filepath.Join(root, "run"),
		ConfigRoot:   filepath.Join(root, "config"),
		StopTimeout:  5 * time.Second,
		Env:          []string{"TEST_STAGE_LOG=" + filepath.Join(root, "stages")},
	}
	if err := supervisor.InstallUnits(context.Background(), o, filepath.Join(c.Root, "etc/systemd/system")); err != nil {
		b.Fatal(err)
	}
	s, err := supervisor.New("systemd", o)
	if err != nil {
		b.Fatal(err)
	}
	benchStartStop(b, s)
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
