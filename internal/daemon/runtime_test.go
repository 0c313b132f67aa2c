package daemon

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// The daemon runs twice as many Ps as the runtime would give it, at least
// 4: its goroutines spend much time in blocking file-system calls.
func TestTheDaemonRunsTwiceThePsOfItsProcessors(t *testing.T) {
	for _, c := range []struct{ runtime, want int }{{1, 4}, {2, 4}, {3, 6}, {16, 32}} {
		if got := procs(c.runtime); got != c.want {
			t.Errorf("with %d processors: %d Ps, want %d", c.runtime, got, c.want)
		}
	}
}

// An operator's GOGC and GOMAXPROCS are Go's own, and stay as set.
func TestTheDaemonLeavesTheOperatorsRuntimeSettingsAlone(t *testing.T) {
	ps := runtime.GOMAXPROCS(0)
	gc := debug.SetGCPercent(77)
	defer debug.SetGCPercent(gc)
	set := map[string]string{"GOGC": "77", "GOMAXPROCS": "3"}
	tuneRuntime(func(k string) string { return set[k] })
	if now := debug.SetGCPercent(77); now != 77 {
		t.Errorf("GOGC set: the collector's target became %d", now)
	}
	if now := runtime.GOMAXPROCS(0); now != ps {
		t.Errorf("GOMAXPROCS set: %d Ps became %d", ps, now)
	}
}

// At rest the collector lets the heap grow a quarter past what is live.
// While requests allocate, as Go's default would while the live heap is
// small, by 8 MiB as it grows, and by a quarter from 32 MiB on; and back
// to a quarter once they stop.
func TestTheCollectorsHeadroomFollowsLoadAndTheLiveHeap(t *testing.T) {
	const mib = 1 << 20
	t0 := time.Unix(1000, 0)
	var p gcPolicy
	if got := p.percent(t0, 0, 0); got != 25 {
		t.Errorf("at start, at rest: GOGC %d, want 25", got)
	}
	for _, c := range []struct {
		live uint64
		want int
	}{{0, 100}, {2 * mib, 100}, {8 * mib, 100}, {16 * mib, 50}, {32 * mib, 25}, {400 * mib, 25}} {
		if got := p.percent(t0, c.live, 4*mib); got != c.want {
			t.Errorf("busy, live heap %d MiB: GOGC %d, want %d", c.live/mib, got, c.want)
		}
	}
	if got := p.percent(t0.Add(time.Second), 2*mib, 0); got != 100 {
		t.Errorf("1 s after the last busy tick: GOGC %d, want 100 still", got)
	}
	if got := p.percent(t0.Add(2*time.Second), 2*mib, 0); got != 25 {
		t.Errorf("2 s after the last busy tick: GOGC %d, want 25 again", got)
	}
}
