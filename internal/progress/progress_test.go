package progress

import (
	"bytes"
	"context"
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
	want := []Stat{{Name: "disk.ext4", Done: 8000, Total: 8000, State: "done"}}
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

func TestEveryFromEnv(t *testing.T) {
	for v, want := range map[string]time.Duration{"": DefaultEvery, "40": 40 * time.Millisecond, "-3": DefaultEvery, "soon": DefaultEvery} {
		t.Setenv("MGR_PROGRESS_EVERY_MILLISECONDS", v)
		if got := EveryFromEnv(); got != want {
			t.Errorf("MGR_PROGRESS_EVERY_MILLISECONDS=%q: got %v want %v", v, got, want)
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
	returned := make(chan struct{})
	go func() { stop(); close(returned) }()
	select {
	case <-returned:
	case <-time.After(30 * time.Second):
		t.Fatal("stop did not return: a bar never ended")
	}
	for _, name := range []string{"vmlinux.bin", "disk.ext4", "agent-disk.ext4"} {
		if !strings.Contains(buf.String(), name) {
			t.Fatalf("bars lack %s:\n%s", name, buf.String())
		}
	}
}
