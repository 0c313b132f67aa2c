package progress

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// Render shows t on w every period until the returned stop is called (stop
// prints a final state and waits for the renderer). A terminal gets bars;
// anything else gets one plain line per file per period, which keeps logs
// and CI output readable.
func Render(ctx context.Context, w io.Writer, t *Tracker, every time.Duration) (stop func()) {
	if every <= 0 {
		every = DefaultEvery
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return renderBars(ctx, w, t, every)
	}
	return renderLines(ctx, w, t, every)
}

func renderLines(ctx context.Context, w io.Writer, t *Tracker, every time.Duration) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		last := map[string]int64{}
		for {
			select {
			case <-ctx.Done():
				for _, s := range t.Snapshot() {
					fmt.Fprintln(w, Line(s, t.Elapsed()))
				}
				return
			case <-tick.C:
				for _, s := range t.Snapshot() {
					// Quiet files that have not moved since the last line.
					if prev, ok := last[s.Name]; ok && prev == s.Done {
						continue
					}
					last[s.Name] = s.Done
					fmt.Fprintln(w, Line(s, t.Elapsed()))
				}
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// Line formats one stat as a plain progress line.
func Line(s Stat, elapsed time.Duration) string {
	pct := 100.0
	if s.Total > 0 {
		pct = float64(s.Done) * 100 / float64(s.Total)
	}
	state := s.State
	if state == "" {
		state = "running"
	}
	mbs := 0.0
	if sec := elapsed.Seconds(); sec > 0 {
		mbs = float64(s.Done) / 1e6 / sec
	}
	return fmt.Sprintf("progress %s %s/%s (%.1f%%) %.1f MB/s %s", s.Name, Bytes(s.Done), Bytes(s.Total), pct, mbs, state)
}

// Bytes formats n in binary units.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func renderBars(ctx context.Context, w io.Writer, t *Tracker, every time.Duration) func() {
	ctx, cancel := context.WithCancel(ctx)
	// Auto refresh is explicit so the bars render on any writer, not only
	// one mpb recognises as a terminal.
	p := mpb.New(mpb.WithOutput(w), mpb.WithRefreshRate(every), mpb.WithWidth(40), mpb.WithAutoRefresh())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		bars := map[string]*mpb.Bar{}
		ended := map[string]bool{}
		sync := func(final bool) {
			for _, s := range t.Snapshot() {
				b, ok := bars[s.Name]
				if !ok {
					b = p.AddBar(s.Total,
						mpb.PrependDecorators(decor.Name(s.Name, decor.WCSyncSpaceR)),
						mpb.AppendDecorators(decor.Counters(decor.SizeB1024(0), "% .1f / % .1f"), decor.Percentage(decor.WCSyncSpace)))
					bars[s.Name] = b
				}
				if ended[s.Name] {
					continue
				}
				b.SetCurrent(s.Done)
				if final || s.State != "" {
					// Every bar must end or Wait never returns: a bar with a
					// total completes by reaching it, an empty one by
					// SetTotal, and one that stopped short (failed,
					// interrupted) is aborted in place.
					switch {
					case s.Total <= 0:
						b.SetTotal(-1, true)
					case s.Done >= s.Total:
						b.SetCurrent(s.Total)
					default:
						b.Abort(false)
					}
					ended[s.Name] = true
				}
			}
		}
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				sync(true)
				return
			case <-tick.C:
				sync(false)
			}
		}
	}()
	return func() { cancel(); wg.Wait(); p.Wait() }
}
