package progress

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCountersAreSafeForParallelWriters(t *testing.T) {
	tr := New()
	c := tr.File("disk.ext4", 8*1000)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				io.WriteString(c, "x")
			}
		}()
	}
	wg.Wait()
	c.Finish("done")
	got := tr.Snapshot()
	want := []Stat{{Name: "disk.ext4", Done: 8000, Total: 8000, State: "done", Elapsed: got[0].Elapsed}}
	if len(got) != 1 || got[0] != want[0] {
		t.Fatalf("snapshot %+v, want %+v", got, want)
	}
}

func TestNilTrackerCountsNothing(t *testing.T) {
	var tr *Tracker
	c := tr.File("x", 10)
	c.Add(5)
	c.Finish("done")
	if s := tr.Snapshot(); s != nil {
		t.Fatalf("nil tracker snapshot = %v", s)
	}
}

// A non-terminal writer gets plain lines, and stop prints the final state of
// every file.
func TestPlainLinesEndWithFinalState(t *testing.T) {
	tr := New()
	a := tr.File("vmlinux.bin", 2048)
	tr.File("agent-disk.ext4", 10).Finish("skipped")
	var buf bytes.Buffer
	stop := Render(context.Background(), &buf, tr, time.Millisecond)
	a.Add(2048)
	a.Finish("done")
	stop()
	out := buf.String()
	for _, want := range []string{"progress vmlinux.bin 2.0 KiB/2.0 KiB (100.0%)", "done", "progress agent-disk.ext4 0 B/10 B", "skipped"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
}

// The terminal renderer ends every bar, whatever became of its file, so
// stop returns: finished, failed short of its total, empty and skipped.
func TestBarsEndForEveryOutcome(t *testing.T) {
	tr := New()
	done := tr.File("vmlinux.bin", 1000)
	failed := tr.File("disk.ext4", 5000)
	empty := tr.File("empty", 0)
	unknown := tr.File("ext4 payload-rootfs.ext4", Unknown)
	skipped := tr.File("agent-disk.ext4", 700)
	skipped.Set(700)
	skipped.Finish("skipped")
	var buf bytes.Buffer
	stop := renderBars(context.Background(), &buf, tr, time.Millisecond)
	done.Add(1000)
	done.Finish("done")
	failed.Add(3000)
	failed.Finish("failed")
	empty.Finish("done")
	unknown.Add(4096)
	unknown.End(nil)
	returned := make(chan struct{})
	go func() { stop(); close(returned) }()
	select {
	case <-returned:
	case <-time.After(30 * time.Second):
		t.Fatal("stop did not return: a bar never ended")
	}
	for _, name := range []string{"vmlinux.bin", "disk.ext4", "agent-disk.ext4", "payload-rootfs.ext4"} {
		if !strings.Contains(buf.String(), name) {
			t.Fatalf("bars lack %s:\n%s", name, buf.String())
		}
	}
}

// A step of unknown size (a layer being applied, a disk being built) and a
// second counter with the same name each get their own lines; every end is
// reported once, by name, state, bytes and time.
func TestLinesForUnknownTotalsAndRepeatedNames(t *testing.T) {
	tr := New()
	a := tr.File("apply 0123456789ab", -5)
	b := tr.File("apply 0123456789ab", Unknown)
	ext4 := tr.File("ext4 payload-rootfs.ext4", Unknown)
	var buf bytes.Buffer
	stop := Render(context.Background(), &buf, tr, 0)
	a.Add(3 << 10)
	a.End(nil)
	b.End(errors.New("no space left on device"))
	ext4.Set(1 << 20)
	ext4.End(nil)
	stop()
	out := buf.String()
	for _, want := range []string{
		"apply 0123456789ab: done, 3.0 KiB in ",
		"apply 0123456789ab: failed, 0 B in ",
		"ext4 payload-rootfs.ext4: done, 1.0 MiB in ",
		"progress apply 0123456789ab 3.0 KiB ",
		"progress ext4 payload-rootfs.ext4 1.0 MiB ",
	} {
		if strings.Count(out, want) != 1 {
			t.Fatalf("want %q once in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "running") || strings.Contains(out, "3.0 KiB/") {
		t.Fatalf("unknown totals shown as known, or a finished step as running:\n%s", out)
	}
	if s := tr.Snapshot(); s[0].Total != Unknown || s[0].Elapsed <= 0 {
		t.Fatalf("snapshot %+v", s[0])
	}
}

// A finished counter's elapsed time stops at Finish.
func TestElapsedStopsAtFinish(t *testing.T) {
	tr := New()
	c := tr.File("x", 1)
	c.Finish("done")
	first := tr.Snapshot()[0].Elapsed
	c.Finish("failed") // a second Finish changes the state, not the time
	if s := tr.Snapshot()[0]; s.Elapsed != first || s.State != "failed" {
		t.Fatalf("elapsed %v then %v (%s)", first, s.Elapsed, s.State)
	}
}
