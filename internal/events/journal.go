// Package events is the host's one account of what happened to its VMs:
// every lifecycle transition, in the order it happened, with a sequence
// number a client can resume from.
//
// Transitions happen in two kinds of process: the daemon (create, the
// start and stop it was asked for, pause, snapshot, health, delete) and the
// lifecycle stages the service manager runs (a VM that started again by its
// restart policy, became ready, or ended by itself) — the latter also while
// the daemon is down. Both append to one journal file under a lock, which
// gives every event its number; the daemon's Bus follows the file and
// serves it to watchers (GET /v1/events) and to the manager's hooks. The
// journal is kept to MaxJournalBytes plus one rotated file.
package events

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/lock"
	"github.com/mergenhq/mergen/internal/regfile"
)

// Type names a transition.
type Type string

// The transitions of a VM.
const (
	Created     Type = "created"     // the VM exists (made, or restored from a snapshot)
	Starting    Type = "starting"    // a start was asked for through the API
	Restarted   Type = "restarted"   // its service manager started it again, not the API (restart policy, host boot)
	Ready       Type = "ready"       // its health check passed, or (without one) its VMM runs
	Unhealthy   Type = "unhealthy"   // its health check failed its retries
	Stopping    Type = "stopping"    // a stop was asked for through the API
	Stopped     Type = "stopped"     // its run ended as asked or by a clean guest exit
	Failed      Type = "failed"      // its run ended in a failure; Reason says which
	Paused      Type = "paused"      // its guest is paused
	Resumed     Type = "resumed"     // its guest runs again
	Snapshotted Type = "snapshotted" // a snapshot of it was taken (Attrs["snapshot"])
	Deleting    Type = "deleting"    // a delete was asked for
	Deleted     Type = "deleted"     // the VM is gone
	// Vetoed follows a Stopping or Deleting that a strict hook refused:
	// the operation did not happen.
	Vetoed Type = "vetoed"
)

// Types is every Type, in the order of a VM's life.
var Types = []Type{Created, Starting, Restarted, Ready, Unhealthy, Stopping, Stopped, Failed, Paused, Resumed, Snapshotted, Deleting, Deleted, Vetoed}

// Valid reports whether t is one of Types.
func (t Type) Valid() bool {
	for _, k := range Types {
		if k == t {
			return true
		}
	}
	return false
}

// Where an event was recorded.
const (
	SourceDaemon    = "daemon"
	SourceLifecycle = "lifecycle"
)

// Event is one transition of one VM.
type Event struct {
	// Seq numbers the host's events from 1, without gaps: a client that
	// saw n resumes with since=n.
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Type   Type      `json:"type"`
	VM     string    `json:"vm"`
	Name   string    `json:"name,omitempty"` // the VM's name tag, when it has one
	Source string    `json:"source"`
	// Reason is a machine-readable cause (failed: the lastRun reason;
	// vetoed: "hook"), Message a sentence for people.
	Reason  string            `json:"reason,omitempty"`
	Message string            `json:"message,omitempty"`
	Attrs   map[string]string `json:"attrs,omitempty"`
}

// Bounds of the journal and of one event.
const (
	MaxJournalBytes = 4 << 20
	maxMessage      = 2048
	maxLine         = 16 << 10 // longer lines (never written) are skipped
	appendWait      = 5 * time.Second
)

// seqOf reads the number of an event line as Append writes it
// ({"seq":N,…}); 0 when the line starts otherwise.
func seqOf(line []byte) uint64 {
	rest, ok := bytes.CutPrefix(line, []byte(`{"seq":`))
	if !ok {
		return 0
	}
	var n uint64
	for _, c := range rest {
		if c < '0' || c > '9' {
			return n
		}
		n = n*10 + uint64(c-'0')
	}
	return 0
}

// ErrGone is returned for a position older than the journal still keeps.
var ErrGone = errors.New("events before that position are no longer kept")

// Journal is the event file of one host.
type Journal struct {
	p layout.Events

	// Appends in one process are written in batches: the ones that arrive
	// while a batch is written form the next, which takes the file lock
	// once and is written in one write (the creates of a group return, and
	// emit, together). Guarded by mu.
	mu      sync.Mutex
	queue   []*appendReq
	writing bool

	// end is where this journal's last batch left the file; only the
	// goroutine writing batches (drain) uses it.
	end fileEnd
	// written, when set (by the Bus following this journal, before the
	// first Append), is told of every batch once its lines are in the
	// file, before its appends return.
	written func(b batchWritten)
}

// fileEnd is the journal file after a batch: its inode, its size and the
// number of its last event. While the file under the lock is still that
// inode and that size, nobody appended since, and the next number is
// known without reading the file's tail.
type fileEnd struct {
	ino  uint64
	size int64
	seq  uint64
}

// batchWritten says where a batch's lines went: bytes [from, to) of the
// file with inode ino, holding evs in order.
type batchWritten struct {
	ino      uint64
	from, to int64
	evs      []Event
}

// appendReq is one Append waiting for its batch.
type appendReq struct {
	ctx  context.Context
	ev   Event
	err  error
	done chan struct{}
}

// NewJournal returns the journal at p; files are made on the first Append.
func NewJournal(p layout.Events) *Journal { return &Journal{p: p} }

// Append numbers ev, stamps its time when unset and writes it. The lock
// makes appends from the daemon and from lifecycle stages one sequence;
// concurrent appends in one process are numbered in the order they were
// made. Waiting for the lock ends with ctx, or after appendWait.
func (j *Journal) Append(ctx context.Context, ev Event) (Event, error) {
	if !ev.Type.Valid() || ev.VM == "" {
		return ev, fmt.Errorf("append event: bad event %q of vm %q", ev.Type, ev.VM)
	}
	r := &appendReq{ctx: ctx, ev: ev, done: make(chan struct{})}
	j.mu.Lock()
	j.queue = append(j.queue, r)
	if !j.writing {
		j.writing = true
		go j.drain()
	}
	j.mu.Unlock()
	<-r.done
	return r.ev, r.err
}

// drain writes batches until no append waits.
func (j *Journal) drain() {
	for {
		j.mu.Lock()
		batch := j.queue
		j.queue = nil
		if len(batch) == 0 {
			j.writing = false
			j.mu.Unlock()
			return
		}
		j.mu.Unlock()
		j.write(batch)
		for _, r := range batch {
			close(r.done)
		}
	}
}

// write numbers and writes a batch under the file lock, waiting for it as
// long as the oldest append of the batch would. Each append gets its own
// outcome.
func (j *Journal) write(batch []*appendReq) {
	if err := os.MkdirAll(j.p.Dir, 0o700); err != nil {
		failAll(batch, err)
		return
	}
	lctx, cancel := context.WithTimeout(batch[0].ctx, appendWait)
	defer cancel()
	held, err := lock.Acquire(lctx, j.p.Lock)
	if err != nil {
		failAll(batch, err)
		return
	}
	defer held.Release()

	last, size, err := j.lastKnown()
	if err != nil {
		failAll(batch, err)
		return
	}
	if size >= MaxJournalBytes {
		if err := os.Rename(j.p.Journal, j.p.JournalOld); err != nil {
			failAll(batch, fmt.Errorf("rotate: %w", err))
			return
		}
	}
	j.end = fileEnd{} // known again once this batch is written
	var lines []byte
	var written []*appendReq
	for _, r := range batch {
		ev := r.ev
		ev.Seq = last + 1
		if ev.Time.IsZero() {
			ev.Time = time.Now().UTC()
		}
		if len(ev.Message) > maxMessage {
			ev.Message = ev.Message[:maxMessage] + "…"
		}
		b, err := json.Marshal(ev)
		if err != nil {
			r.err = err
			continue
		}
		last++
		r.ev = ev
		lines = append(append(lines, b...), '\n')
		written = append(written, r)
	}
	if len(written) == 0 {
		return
	}
	// One write of whole lines with O_APPEND: readers see whole lines or
	// none (a reader takes a line only once its newline is there).
	f, err := regfile.Open(j.p.Journal, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		failAll(written, err)
		return
	}
	_, werr := f.Write(lines)
	fi, serr := f.Stat()
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		failAll(written, werr)
		return
	}
	if serr != nil {
		return
	}
	// Every writer holds the lock: the file ends with this batch.
	j.end = fileEnd{ino: inode(fi), size: fi.Size(), seq: last}
	if j.written != nil {
		evs := make([]Event, len(written))
		for i, r := range written {
			evs[i] = r.ev
		}
		j.written(batchWritten{ino: j.end.ino, from: fi.Size() - int64(len(lines)), to: fi.Size(), evs: evs})
	}
}

// lastKnown is last, without reading the file when it is as this
// journal's last batch left it. Hold the file lock.
func (j *Journal) lastKnown() (seq uint64, size int64, err error) {
	if e := j.end; e.seq > 0 {
		if fi, err := os.Stat(j.p.Journal); err == nil && inode(fi) == e.ino && fi.Size() == e.size {
			return e.seq, e.size, nil
		}
	}
	return j.last()
}

func inode(fi fs.FileInfo) uint64 { return fi.Sys().(*syscall.Stat_t).Ino }

func failAll(rs []*appendReq, err error) {
	for _, r := range rs {
		r.err = fmt.Errorf("append %s event of vm %s: %w", r.ev.Type, r.ev.VM, err)
	}
}

// last returns the newest sequence number and the current file's size.
func (j *Journal) last() (seq uint64, size int64, err error) {
	for i, path := range []string{j.p.Journal, j.p.JournalOld} {
		s, n, err := lastInFile(path)
		if err != nil {
			return 0, 0, err
		}
		if i == 0 {
			size = n
		}
		if s > 0 {
			return s, size, nil
		}
	}
	return 0, size, nil
}

// lastInFile reads the sequence number of the file's last whole line.
func lastInFile(path string) (seq uint64, size int64, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	size = fi.Size()
	off := max(0, size-maxLine)
	buf := make([]byte, size-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return 0, 0, err
	}
	lines := bytes.Split(bytes.TrimRight(buf, "\n"), []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		var ev Event
		if json.Unmarshal(lines[i], &ev) == nil && ev.Seq > 0 {
			return ev.Seq, size, nil
		}
	}
	return 0, size, nil
}

// After returns the events after position since, in order, at most limit
// (0: all). A position older than the journal keeps is ErrGone; since 0
// means from the oldest kept.
func (j *Journal) After(since uint64, limit int) ([]Event, error) {
	var out []Event
	first := uint64(0)
	for _, path := range []string{j.p.JournalOld, j.p.Journal} {
		err := scanFile(path, func(line []byte) bool {
			// The oldest kept is still needed to tell a gap.
			seq := seqOf(line)
			return first != 0 && seq != 0 && seq <= since
		}, func(ev Event) bool {
			if first == 0 {
				first = ev.Seq
			}
			if ev.Seq > since {
				out = append(out, ev)
			}
			return limit == 0 || len(out) < limit
		})
		if err != nil {
			return nil, err
		}
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	if since > 0 && first > since+1 {
		return nil, fmt.Errorf("%w (asked from %d, the oldest kept is %d)", ErrGone, since+1, first)
	}
	return out, nil
}

// LastOf returns the newest event of vm in the current journal file, and
// whether there is one.
func (j *Journal) LastOf(vm string) (Event, bool, error) {
	var last Event
	found := false
	// Only the VM's own lines are decoded: the pre-start stage asks this
	// on every start, of a journal of up to MaxJournalBytes.
	mark := []byte(`"vm":"` + vm + `"`)
	err := scanFile(j.p.Journal, func(line []byte) bool { return !bytes.Contains(line, mark) }, func(ev Event) bool {
		if ev.VM == vm {
			last, found = ev, true
		}
		return true
	})
	return last, found, err
}

// scanFile calls fn for every event of the file until it returns false. A
// missing file has none; a line that is not an event is skipped, and so is
// one skip (when set) says to skip: looking at the raw line, it spares
// decoding the events a reader has no use for.
func scanFile(path string, skip func(line []byte) bool, fn func(Event) bool) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	for sc.Scan() {
		line := sc.Bytes()
		if skip != nil && skip(line) {
			continue
		}
		var ev Event
		if json.Unmarshal(line, &ev) != nil || ev.Seq == 0 {
			continue
		}
		if !fn(ev) {
			return nil
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return nil
	}
	return sc.Err()
}
