package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/store"
)

// Bounds of one events stream.
const (
	// eventsBatch is how many events one wait hands over: what a watcher
	// costs in memory beyond its connection.
	eventsBatch = 256
	// eventsKeepAlive is how often an idle stream gets a comment line, so
	// proxies and clients see it alive.
	eventsKeepAlive = 15 * time.Second
)

// eventsWriteTimeout is how long a watcher may leave a write pending (not
// reading, its socket buffers full) before it is dropped. A variable for
// the tests.
var eventsWriteTimeout = 10 * time.Second

// eventFilter is what a watcher asked for.
type eventFilter struct {
	vm    string
	types []events.Type
	// noFollow ends the stream at the journal's end as of the request.
	noFollow bool
}

func (f eventFilter) match(ev events.Event) bool {
	return (f.vm == "" || ev.VM == f.vm) && (len(f.types) == 0 || slices.Contains(f.types, ev.Type))
}

// parseEventsQuery reads vm, type (comma-separated) and the position to
// resume after: since, or the Last-Event-ID header an EventSource sends
// when it reconnects. No position means only what happens from now on.
func parseEventsQuery(r *http.Request) (f eventFilter, since uint64, fromNow bool, err error) {
	q := r.URL.Query()
	if v := q.Get("vm"); v != "" {
		if err := store.ValidateID(v); err != nil {
			return f, 0, false, errdefs.Invalid("vm: %q is not a VM id", v)
		}
		f.vm = v
	}
	if v := q.Get("type"); v != "" {
		for _, t := range strings.Split(v, ",") {
			et := events.Type(strings.TrimSpace(t))
			if !et.Valid() {
				return f, 0, false, errdefs.Invalid("type: %q is not an event type (want %s)", t, typeList())
			}
			f.types = append(f.types, et)
		}
	}
	switch v := q.Get("follow"); v {
	case "", "1", "true":
	case "0", "false":
		f.noFollow = true
	default:
		return f, 0, false, errdefs.Invalid("follow: %q is not 1, true, 0 or false", v)
	}
	pos := q.Get("since")
	if h := r.Header.Get("Last-Event-ID"); h != "" && pos == "" {
		pos = h
	}
	if pos == "" {
		return f, 0, true, nil
	}
	since, err = strconv.ParseUint(pos, 10, 64)
	if err != nil {
		return f, 0, false, errdefs.Invalid("since: %q is not an event position (a number ≥ 0: the last seq seen)", pos)
	}
	return f, since, false, nil
}

func typeList() string {
	names := make([]string, len(events.Types))
	for i, t := range events.Types {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// events streams the host's events as Server-Sent Events: each is
// "id: <seq>", "event: <type>" and "data: <the event as JSON>". With
// follow=0 the stream ends at the journal's end as of the request. A watcher
// that reconnects with since=<last id> (or Last-Event-ID) gets every event
// after it, as long as the journal still keeps it (else 410, or a final
// "gone" event when it falls that far behind while connected). A watcher
// that stops reading is dropped after eventsWriteTimeout.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	f, since, fromNow, err := parseEventsQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if fromNow {
		since = s.mgr.LastEvent()
	} else {
		// Refuse a position the journal no longer keeps before streaming:
		// the answer can still be a status code.
		if err := s.mgr.CheckEventPosition(since); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(b []byte) error {
		rc.SetWriteDeadline(time.Now().Add(eventsWriteTimeout))
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	// The first block carries only an id: where this stream starts, so a
	// watcher that loses it before any event reconnects from there.
	if send(fmt.Appendf(nil, ": mergen events\nid: %d\n\n", since)) != nil {
		return
	}
	end := s.mgr.LastEvent()
	for {
		if f.noFollow && since >= end {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), eventsKeepAlive)
		evs, err := s.mgr.Events(ctx, since, eventsBatch)
		cancel()
		switch {
		case errors.Is(err, errdefs.ErrGone):
			b, _ := json.Marshal(errorBody{Error: err.Error()})
			send(fmt.Appendf(nil, "event: gone\ndata: %s\n\n", b))
			s.log.Warn("events watcher fell behind the journal; closing its stream", "remote", r.RemoteAddr, "err", err)
			return
		case errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil:
			if err := send([]byte(": keep-alive\n\n")); err != nil {
				s.dropWatcher(r, err)
				return
			}
			continue
		case err != nil:
			return // the watcher left, or the daemon is stopping
		}
		var buf []byte
		for _, ev := range evs {
			since = ev.Seq
			if !f.match(ev) {
				continue
			}
			b, err := json.Marshal(ev)
			if err != nil {
				continue
			}
			buf = fmt.Appendf(buf, "id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, ev.Type, b)
		}
		if len(buf) == 0 {
			continue
		}
		if err := send(buf); err != nil {
			s.dropWatcher(r, err)
			return
		}
	}
}

// dropWatcher logs why a watcher's stream ended on a failed write: a
// write that ran out its deadline is a watcher that stopped reading; any
// other failure is one that left.
func (s *Server) dropWatcher(r *http.Request, err error) {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	s.log.Warn("events watcher dropped: it did not read its stream", "remote", r.RemoteAddr, "timeout", eventsWriteTimeout, "err", err)
}
