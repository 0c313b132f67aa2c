package converter

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Progress reports long steps (pulls, layer application, ext4). Two real
// implementations: byte bars for a terminal and plain lines for logs.
type Progress interface {
	Task(name string, total int64) Task // total < 0: unknown
}

// Task is one step in progress.
type Task interface {
	Add(n int64)
	Done()
}

type nopTask struct{}

func (nopTask) Add(int64) {}
func (nopTask) Done()     {}

func startTask(p Progress, name string, total int64) Task {
	if p == nil {
		return nopTask{}
	}
	return p.Task(name, total)
}

// Lines prints one line when a step starts and one when it ends, with bytes
// and time: what a log file or a CI console wants.
type Lines struct{ W io.Writer }

func (l Lines) Task(name string, total int64) Task {
	if total >= 0 {
		fmt.Fprintf(l.W, "%s: %d bytes\n", name, total)
	} else {
		fmt.Fprintf(l.W, "%s\n", name)
	}
	return &lineTask{w: l.W, name: name, start: time.Now()}
}

type lineTask struct {
	w     io.Writer
	name  string
	start time.Time
	mu    sync.Mutex
	n     int64
}

func (t *lineTask) Add(n int64) { t.mu.Lock(); t.n += n; t.mu.Unlock() }
func (t *lineTask) Done() {
	fmt.Fprintf(t.w, "%s: done, %d bytes in %s\n", t.name, t.n, time.Since(t.start).Round(time.Millisecond))
}

// Bars draws byte progress bars on a terminal.
type Bars struct{ P *mpb.Progress }

// NewBars starts a bar container writing to w (a terminal).
func NewBars(w io.Writer) Bars { return Bars{P: mpb.New(mpb.WithOutput(w), mpb.WithWidth(40))} }

func (b Bars) Task(name string, total int64) Task {
	unknown := total < 0
	if unknown {
		total = 0
	}
	bar := b.P.AddBar(total,
		mpb.PrependDecorators(decor.Name(name, decor.WC{C: decor.DindentRight | decor.DextraSpace})),
		mpb.AppendDecorators(decor.Current(decor.SizeB1024(0), "% .1f")),
	)
	return &barTask{bar: bar, unknown: unknown}
}

// Wait flushes the bars; call once at the end.
func (b Bars) Wait() { b.P.Wait() }

type barTask struct {
	bar     *mpb.Bar
	unknown bool
	n       int64
}

func (t *barTask) Add(n int64) {
	t.n += n
	if t.unknown {
		t.bar.SetTotal(t.n+1, false)
	}
	t.bar.IncrInt64(n)
}
func (t *barTask) Done() {
	// A step without bytes (ext4) still shows as finished.
	if t.n == 0 {
		t.bar.SetTotal(1, false)
		t.bar.IncrInt64(1)
	}
	t.bar.SetTotal(-1, true)
}
