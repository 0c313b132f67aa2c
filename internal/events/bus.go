package events

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// ringSize is how many recent events the Bus keeps in memory at least
// (at most twice as many): watchers that are at most this far behind
// never read the file.
const ringSize = 1024

// pollEvery is how often the Bus looks at the journal when no file
// notification came: the fallback when notifications are unavailable.
const pollEvery = time.Second

// Bus follows the journal in the daemon and hands its events to whoever
// waits for them. Watchers pull (Next) from their own position, so a slow
// one costs nothing but its position: nothing is buffered per watcher.
type Bus struct {
	j   *Journal
	log *slog.Logger

	loadMu sync.Mutex // one load at a time
	ino    uint64     // inode of the journal file being followed
	off    int64      // bytes of it read

	mu   sync.Mutex
	ring []Event // the newest events, oldest first
	last uint64
	wake chan struct{} // closed when events arrive, then replaced
}

// NewBus returns a Bus positioned after the journal's current end, with
// the newest events already in memory. A journal that cannot be read now
// is logged and read again by Run.
func NewBus(j *Journal, log *slog.Logger) *Bus {
	b := &Bus{j: j, log: log, wake: make(chan struct{})}
	if err := b.load(); err != nil {
		log.Warn("read the event journal", "err", err)
	}
	j.written = b.wrote
	return b
}

// wrote takes a batch the journal wrote in this process without reading
// it back, when it follows what the Bus has read; otherwise lines of
// another writer come first, and the next load reads them all.
func (b *Bus) wrote(w batchWritten) {
	b.loadMu.Lock()
	defer b.loadMu.Unlock()
	if w.ino != b.ino || w.from != b.off {
		return
	}
	for i := range w.evs {
		// As a watcher would have read it from the file.
		w.evs[i].Time = w.evs[i].Time.Round(0)
	}
	b.off = w.to
	b.publish(w.evs)
}

// Journal is the journal the Bus follows.
func (b *Bus) Journal() *Journal { return b.j }

// Append writes ev to the journal and makes it visible to watchers before
// returning it, numbered.
func (b *Bus) Append(ctx context.Context, ev Event) (Event, error) {
	ev, err := b.j.Append(ctx, ev)
	if err != nil {
		return ev, err
	}
	if b.Last() < ev.Seq { // not taken as written: read it
		if err := b.load(); err != nil {
			b.log.Warn("read the event journal", "err", err)
		}
	}
	return ev, nil
}

// Last is the newest position the Bus has seen.
func (b *Bus) Last() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// Next returns up to max events after position since, waiting until there
// is one or ctx ends. A position older than the journal keeps is ErrGone.
func (b *Bus) Next(ctx context.Context, since uint64, max int) ([]Event, error) {
	if max <= 0 {
		max = ringSize
	}
	for {
		b.mu.Lock()
		if since < b.last {
			if len(b.ring) > 0 && since+1 >= b.ring[0].Seq {
				i := int(since + 1 - b.ring[0].Seq)
				out := append([]Event(nil), b.ring[i:min(len(b.ring), i+max)]...)
				b.mu.Unlock()
				return out, nil
			}
			b.mu.Unlock()
			return b.j.After(since, max)
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Kept returns ErrGone when events after position since are no longer
// all kept; it does not wait.
func (b *Bus) Kept(since uint64) error {
	b.mu.Lock()
	inRing := since >= b.last || (len(b.ring) > 0 && since+1 >= b.ring[0].Seq)
	b.mu.Unlock()
	if inRing {
		return nil
	}
	_, err := b.j.After(since, 1)
	return err
}

// Run follows the journal until ctx ends: on every change of its directory
// (appends by lifecycle stages) and at least every pollEvery.
func (b *Bus) Run(ctx context.Context) {
	var changes <-chan fsnotify.Event
	if w, err := fsnotify.NewWatcher(); err != nil {
		b.log.Warn("event journal: no file notifications, polling", "err", err)
	} else {
		defer w.Close()
		if err := os.MkdirAll(b.j.p.Dir, 0o700); err == nil {
			err = w.Add(b.j.p.Dir)
		}
		if err != nil {
			b.log.Warn("event journal: no file notifications, polling", "err", err)
		} else {
			changes = w.Events
		}
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-tick.C:
		}
		if err := b.load(); err != nil {
			b.log.Warn("read the event journal", "err", err)
		}
	}
}

// load reads what was appended since the last load, across a rotation.
func (b *Bus) load() error {
	b.loadMu.Lock()
	defer b.loadMu.Unlock()
	fi, err := os.Stat(b.j.p.Journal)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	ino := inode(fi)
	if ino == b.ino && fi.Size() == b.off {
		return nil // nothing new (a notification of the Bus's own batch)
	}
	var fresh []Event
	if ino != b.ino {
		// Rotated (or first load): finish the file followed so far, which
		// is now the old one, then read the new one from its start.
		if b.ino != 0 {
			if ofi, err := os.Stat(b.j.p.JournalOld); err == nil && ofi.Sys().(*syscall.Stat_t).Ino == b.ino {
				evs, _, err := readFrom(b.j.p.JournalOld, b.off)
				if err != nil {
					return err
				}
				fresh = append(fresh, evs...)
			}
		}
		b.ino, b.off = ino, 0
	}
	evs, n, err := readFrom(b.j.p.Journal, b.off)
	if err != nil {
		return err
	}
	b.off += n
	fresh = append(fresh, evs...)
	b.publish(fresh)
	return nil
}

// publish adds events newer than the last to the ring and wakes waiters.
func (b *Bus) publish(evs []Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	added := false
	for _, ev := range evs {
		if ev.Seq <= b.last {
			continue
		}
		b.ring = append(b.ring, ev)
		b.last = ev.Seq
		added = true
	}
	if len(b.ring) >= 2*ringSize {
		// Slide the newest ringSize to the front of the same array: an
		// event is moved once per ringSize appends, where copying the
		// ring on every append moved (and allocated) all of it each time.
		n := copy(b.ring, b.ring[len(b.ring)-ringSize:])
		clear(b.ring[n:]) // let go of the dropped events' strings and maps
		b.ring = b.ring[:n]
	}
	if added {
		close(b.wake)
		b.wake = make(chan struct{})
	}
}

// readFrom reads the whole lines of path after byte off: the events among
// them and how many bytes they took.
func readFrom(path string, off int64) ([]Event, int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil, 0, err
	}
	r := bufio.NewReaderSize(f, maxLine)
	var out []Event
	var n int64
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// Longer than any event written: skip it whole.
			n += int64(len(line))
			for err == bufio.ErrBufferFull {
				line, err = r.ReadSlice('\n')
				n += int64(len(line))
			}
			continue
		}
		if err != nil {
			// EOF: a line without its newline is still being written.
			return out, n, nil
		}
		n += int64(len(line))
		var ev Event
		if json.Unmarshal(line, &ev) == nil && ev.Seq > 0 {
			out = append(out, ev)
		}
	}
}
