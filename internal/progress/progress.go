// Package progress is the one model of transfer progress: a Tracker holds a
// byte counter per file, safe to bump from many goroutines (parallel ranged
// downloads, multipart uploads). Renderers read snapshots of it: bars on a
// terminal, plain periodic lines otherwise; an HTTP/SSE endpoint can poll
// Snapshot the same way.
package progress

import (
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultEvery is the render period when MGR_PROGRESS_EVERY_MILLISECONDS is
// unset.
const DefaultEvery = 250 * time.Millisecond

// EveryFromEnv reads MGR_PROGRESS_EVERY_MILLISECONDS; an unset, malformed or
// non-positive value means DefaultEvery.
func EveryFromEnv() time.Duration {
	v := os.Getenv("MGR_PROGRESS_EVERY_MILLISECONDS")
	ms, err := strconv.Atoi(v)
	if err != nil || ms <= 0 {
		return DefaultEvery
	}
	return time.Duration(ms) * time.Millisecond
}

// Counter counts the bytes of one file.
type Counter struct {
	name  string
	total atomic.Int64
	done  atomic.Int64
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
		c.state.Store(state)
	}
}

// Write makes a Counter an io.Writer sink for io.TeeReader.
func (c *Counter) Write(p []byte) (int, error) {
	c.Add(int64(len(p)))
	return len(p), nil
}

// Stat is a point-in-time view of one counter.
type Stat struct {
	Name  string `json:"name"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	State string `json:"state,omitempty"` // empty while running
}

// Tracker holds the counters of one operation. A nil *Tracker is valid and
// counts nothing, so callers that do not show progress pass nil.
type Tracker struct {
	mu       sync.Mutex
	counters []*Counter
	start    time.Time
}

// New starts a tracker.
func New() *Tracker { return &Tracker{start: time.Now()} }

// File adds a counter for name of total bytes.
func (t *Tracker) File(name string, total int64) *Counter {
	if t == nil {
		return nil
	}
	c := &Counter{name: name}
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
	out := make([]Stat, len(cs))
	for i, c := range cs {
		s, _ := c.state.Load().(string)
		out[i] = Stat{Name: c.name, Done: c.done.Load(), Total: c.total.Load(), State: s}
	}
	return out
}

// Elapsed is the time since New.
func (t *Tracker) Elapsed() time.Duration { return time.Since(t.start) }
