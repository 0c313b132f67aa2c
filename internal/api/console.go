package api

import (
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
)

// maxConsoleTail bounds what one console request returns without follow.
const maxConsoleTail = 4 << 20

// console serves the VM's serial console log (guest kernel, mergen-init and
// payload output) as text. ?tail=N limits the answer to the last N bytes;
// ?follow=true keeps the response open and streams new output until the
// client goes away.
func (s *Server) console(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, err := s.mgr.Store().ReadMeta(id); err != nil {
		s.writeError(w, r, err)
		return
	}
	tail := int64(maxConsoleTail)
	if v := r.URL.Query().Get("tail"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			s.writeError(w, r, errdefs.Invalid("tail: %q is not a byte count", v))
			return
		}
		tail = min(n, maxConsoleTail)
	}
	follow := r.URL.Query().Get("follow") == "true" || r.URL.Query().Get("follow") == "1"

	console := s.mgr.Store().Paths(id).ConsoleLog
	f, err := os.Open(console)
	if errors.Is(err, fs.ErrNotExist) {
		if !follow {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			return // never started: an empty console
		}
	} else if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if f != nil {
		defer f.Close()
		if st, err := f.Stat(); err == nil && st.Size() > tail {
			f.Seek(st.Size()-tail, io.SeekStart)
		}
		io.Copy(w, f)
	}
	if !follow {
		return
	}
	flusher, _ := w.(http.Flusher)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
		if f == nil {
			if f, err = os.Open(console); err != nil {
				if !s.mgr.Store().Exists(id) {
					return
				}
				f = nil
				continue
			}
			defer f.Close()
		}
		if _, err := io.Copy(w, f); err != nil {
			return
		}
		if !s.mgr.Store().Exists(id) {
			return // deleted
		}
	}
}
