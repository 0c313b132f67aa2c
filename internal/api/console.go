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
// payload output) as text. ?tail=N limits the answer to the last N bytes,
// taken from the rotated log (console.log.1) too when the current one is
// shorter; ?follow=true keeps the response open and streams new output
// until the client goes away, moving to the new log when the copier rotates
// it.
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

	paths := s.mgr.Store().Paths(id)
	console := paths.ConsoleLog
	f, err := os.Open(console)
	if errors.Is(err, fs.ErrNotExist) {
		f = nil
		if !follow {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			return // never started: an empty console
		}
	} else if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if f != nil {
		writeTail(w, f, paths.ConsoleLogOld, tail)
	}
	if !follow {
		return
	}
	s.follow(w, r, id, f, w) // closes f
	f = nil
}

// follow streams what is appended to the console log from f's position on
// (f nil: the log does not exist yet) to out, flushing w after each round,
// until the client goes away or the VM is deleted; it moves to the new log
// when the copier rotates it. It closes f.
func (s *Server) follow(w http.ResponseWriter, r *http.Request, id string, f *os.File, out io.Writer) {
	console := s.mgr.Store().Paths(id).ConsoleLog
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var err error
	rc := http.NewResponseController(w)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
		if f == nil {
			if f, err = os.Open(console); err != nil {
				f = nil
				if !s.mgr.Store().Exists(id) {
					return
				}
				continue
			}
		}
		if _, err := io.Copy(out, f); err != nil {
			return
		}
		// Rotated: the name now leads to a new log. What reached the old
		// one before the rename was just copied; go on with the new one.
		// (Until the new one exists, the old one is kept.)
		if rotated(f, console) {
			if nf, err := os.Open(console); err == nil {
				if _, err := io.Copy(out, f); err != nil {
					nf.Close()
					return
				}
				f.Close()
				f = nf
				if _, err := io.Copy(out, f); err != nil {
					return
				}
			}
		}
		if !s.mgr.Store().Exists(id) {
			return // deleted
		}
	}
}

// rotated reports whether name now leads to another file than f.
func rotated(f *os.File, name string) bool {
	cur, err := os.Stat(name)
	if err != nil {
		return false
	}
	was, err := f.Stat()
	return err == nil && !os.SameFile(cur, was)
}

// writeTail writes the last tail bytes of the console: from f, the current
// log, and when f holds fewer, the end of the rotated log before them.
func writeTail(w io.Writer, f *os.File, oldPath string, tail int64) {
	st, err := f.Stat()
	if err != nil {
		return
	}
	if st.Size() >= tail {
		f.Seek(st.Size()-tail, io.SeekStart)
		io.Copy(w, f)
		return
	}
	if o, err := os.Open(oldPath); err == nil {
		ost, err := o.Stat()
		// The same file: rotated between the two opens; f holds it all.
		if err == nil && !os.SameFile(ost, st) {
			need := tail - st.Size()
			if ost.Size() > need {
				o.Seek(ost.Size()-need, io.SeekStart)
			}
			io.Copy(w, o)
		}
		o.Close()
	}
	io.Copy(w, f)
}
