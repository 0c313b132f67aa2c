// Package progress is the one model of progress in mergen: a Tracker holds
// a byte counter per file or step (S3 transfers, layer pulls and
// applications, disk builds), safe to bump from many goroutines (parallel
// ranged downloads, multipart uploads). Renderers read snapshots of it: bars
// on a terminal, plain lines otherwise; an HTTP/SSE endpoint can poll
// Snapshot the same way.
package progress

import (
	"sync"
	"sync/atomic"
	"time"
)

// Unknown is the total of a step whose size is not known in advance
// (applying a compressed layer, building a disk).
const Unknown = -1

// Counter counts the bytes of one file or step.
type Counter struct {
	name  string
	start time.Time
	total atomic.Int64 // < 0: Unknown
	done  atomic.Int64
	end   atomic.Int64 // Unix nanoseconds of the first Finish
	state atomic.Value // string
}

// Add records n more bytes.
func (c *Counter) Add(n int64) {
	if c != nil {
		c.done.Add(n)
	}
}

// Set replaces the byte count (a retried part starts over).
func (c *Counter) Set(n int64) {
	if c != nil {
		c.done.Store(n)
	}
}

// Finish marks the file done with state (e.g. "done", "skipped", "failed").
func (c *Counter) Finish(state string) {
	if c != nil {
		c.end.CompareAndSwap(0, time.Now().UnixNano())
		c.state.Store(state)
	}
}

// End finishes the step as "done" when err is nil, else as "failed".
func (c *Counter) End(err error) {
	if err != nil {
		c.Finish("failed")
	} else {
		c.Finish("done")
	}
}

// Write makes a Counter an io.Writer sink for io.TeeReader.
func (c *Counter) Write(p []byte) (int, error) {
	c.Add(int64(len(p)))
	return len(p), nil
}

// Stat is a point-in-time view of one counter.
type Stat struct {
	Name    string        `json:"name"`
	Done    int64         `json:"done"`
	Total   int64         `json:"total"`           // Unknown (-1) when not known in advance
	State   string        `json:"state,omitempty"` // empty while running
	Elapsed time.Duration `json:"elapsed"`         // since the counter was added, until it finished; nanoseconds
}

// Tracker holds the counters of one operation. A nil *Tracker is valid and
// counts nothing, so callers that do not show progress pass nil.
type Tracker struct {
	mu       sync.Mutex
	counters []*Counter
}

// New starts a tracker.
func New() *Tracker { return &Tracker{} }

// File adds a counter for name of total bytes (Unknown if not known).
// Names need not be unique: each counter is its own line or bar.
func (t *Tracker) File(name string, total int64) *Counter {
	if t == nil {
		return nil
	}
	if total < 0 {
		total = Unknown
	}
	c := &Counter{name: name, start: time.Now()}
	c.total.Store(total)
	t.mu.Lock()
	t.counters = append(t.counters, c)
	t.mu.Unlock()
	return c
}

// Snapshot returns every counter in the order they were added.
func (t *Tracker) Snapshot() []Stat {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	cs := append([]*Counter(nil), t.counters...)
	t.mu.Unlock()
	now := time.Now()
	out := make([]Stat, len(cs))
	for i, c := range cs {
		s, _ := c.state.Load().(string)
		end := now
		if e := c.end.Load(); e != 0 && s != "" {
			end = time.Unix(0, e)
		}
		out[i] = Stat{Name: c.name, Done: c.done.Load(), Total: c.total.Load(), State: s, Elapsed: end.Sub(c.start)}
	}
	return out
}
