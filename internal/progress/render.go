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
// prints a final state and waits for the renderer). A terminal that reports
// its size gets bars; anything else gets plain lines, which keeps logs and
// CI output readable: a line per moving file per period, a line when a file
// ends (NAME: STATE, BYTES in TIME), and at stop the final state of every
// file. A period of zero or less prints no periodic lines.
func Render(ctx context.Context, w io.Writer, t *Tracker, every time.Duration) (stop func()) {
	if f, ok := w.(*os.File); ok && every > 0 && term.IsTerminal(int(f.Fd())) {
		// A terminal that reports no size (some ptys) cannot draw bars.
		if width, height, err := term.GetSize(int(f.Fd())); err == nil && width > 0 && height > 0 {
			return renderBars(ctx, w, t, every)
		}
	}
	return renderLines(ctx, w, t, every)
}

func renderLines(ctx context.Context, w io.Writer, t *Tracker, every time.Duration) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var tick <-chan time.Time
		if every > 0 {
			tk := time.NewTicker(every)
			defer tk.Stop()
			tick = tk.C
		}
		// By position: counters are only ever appended, and two may share
		// a name (an image can hold the same layer twice).
		var shown []bool
		var last []int64
		var ended []bool
		report := func(moving bool) {
			for i, s := range t.Snapshot() {
				if i == len(shown) {
					shown, last, ended = append(shown, false), append(last, 0), append(ended, false)
				}
				switch {
				case ended[i]:
				case s.State != "":
					fmt.Fprintln(w, EndLine(s))
					ended[i] = true
				case moving && (!shown[i] || last[i] != s.Done):
					// Quiet files that have not moved since the last line.
					fmt.Fprintln(w, Line(s))
					shown[i], last[i] = true, s.Done
				}
			}
		}
		for {
			select {
			case <-ctx.Done():
				report(false)
				for _, s := range t.Snapshot() {
					fmt.Fprintln(w, Line(s))
				}
				return
			case <-tick:
				report(true)
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// Line formats one stat as a plain progress line.
func Line(s Stat) string {
	state := s.State
	if state == "" {
		state = "running"
	}
	mbs := 0.0
	if sec := s.Elapsed.Seconds(); sec > 0 {
		mbs = float64(s.Done) / 1e6 / sec
	}
	if s.Total < 0 {
		return fmt.Sprintf("progress %s %s %.1f MB/s %s", s.Name, Bytes(s.Done), mbs, state)
	}
	pct := 100.0
	if s.Total > 0 {
		pct = float64(s.Done) * 100 / float64(s.Total)
	}
	return fmt.Sprintf("progress %s %s/%s (%.1f%%) %.1f MB/s %s", s.Name, Bytes(s.Done), Bytes(s.Total), pct, mbs, state)
}

// EndLine formats a finished stat: what it became, how much and how long.
func EndLine(s Stat) string {
	return fmt.Sprintf("%s: %s, %s in %s", s.Name, s.State, Bytes(s.Done), s.Elapsed.Round(time.Millisecond))
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
		var bars []*mpb.Bar
		var ended []bool
		sync := func(final bool) {
			for i, s := range t.Snapshot() {
				if i == len(bars) {
					counts := decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")
					pct := decor.Percentage(decor.WCSyncSpace)
					if s.Total < 0 {
						counts, pct = decor.Current(decor.SizeB1024(0), "% .1f"), decor.Name("")
					}
					bars = append(bars, p.AddBar(max(s.Total, 0),
						mpb.PrependDecorators(decor.Name(s.Name, decor.WCSyncSpaceR)),
						mpb.AppendDecorators(counts, pct)))
					ended = append(ended, false)
				}
				b := bars[i]
				if ended[i] {
					continue
				}
				b.SetCurrent(s.Done)
				if final || s.State != "" {
					// Every bar must end or Wait never returns: a bar with a
					// total completes by reaching it, one without (unknown
					// or empty) by SetTotal, and one that stopped short
					// (failed, interrupted) is aborted in place.
					finished := s.State == "done" || s.State == "skipped"
					switch {
					case s.Total > 0 && s.Done >= s.Total:
						b.SetCurrent(s.Total)
					case s.Total <= 0 && finished:
						b.SetTotal(-1, true)
					default:
						b.Abort(false)
					}
					ended[i] = true
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
