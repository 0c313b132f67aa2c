package api

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"

	"github.com/mergenhq/mergen/internal/errdefs"
)

// payloadPrefix starts each line of payload output on the console:
// mergen-init writes the payload's stdout and stderr as "[payload] LINE".
const payloadPrefix = "[payload] "

// maxHeldLine bounds the part of a line the payload filter holds while it
// waits for the line's end; a longer line is passed (or dropped) in pieces.
const maxHeldLine = 64 << 10

// logs serves the VM's output by lines, as `docker logs` does: ?tail=N the
// last N lines (default all; either way at most the last maxConsoleTail
// bytes of the console log, console.log.1 included), ?follow=1|true then
// streams new output until the client goes away or the VM is deleted, and
// ?source=payload keeps only the payload's lines, without their "[payload] "
// prefix (source=console, the default: the whole console, kernel and
// mergen-init included).
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	tail := int64(-1) // all
	switch v := q.Get("tail"); v {
	case "", "all":
	default:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			s.writeError(w, r, errdefs.Invalid("tail: %q is not a line count (a number ≥ 0, or all)", v))
			return
		}
		tail = n
	}
	var follow bool
	switch v := q.Get("follow"); v {
	case "", "0", "false":
	case "1", "true":
		follow = true
	default:
		s.writeError(w, r, errdefs.Invalid("follow: %q is not 1, true, 0 or false", v))
		return
	}
	var payload bool
	switch v := q.Get("source"); v {
	case "", "console":
	case "payload":
		payload = true
	default:
		s.writeError(w, r, errdefs.Invalid("source: %q is not console or payload", v))
		return
	}
	if _, err := s.mgr.Store().ReadMeta(id); err != nil {
		s.writeError(w, r, err)
		return
	}

	paths := s.mgr.Store().Paths(id)
	var l logWindow
	defer l.close()
	f, err := os.Open(paths.ConsoleLog)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.writeError(w, r, err)
		return
	}
	if f != nil {
		st, err := f.Stat()
		if err != nil {
			f.Close()
			s.writeError(w, r, err)
			return
		}
		// The rotated log comes first, unless it is the current one
		// (rotated between the two opens).
		if o, err := os.Open(paths.ConsoleLogOld); err == nil {
			if ost, err := o.Stat(); err == nil && !os.SameFile(ost, st) {
				l.add(o, ost.Size())
			} else {
				o.Close()
			}
		}
		l.add(f, st.Size())
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	var out io.Writer = w
	var pf *payloadFilter
	if payload {
		pf = &payloadFilter{w: w}
		out = pf
	}
	var match func([]byte) bool
	if payload {
		match = func(head []byte) bool { return bytes.HasPrefix(head, []byte(payloadPrefix)) }
	}
	start := l.tailStart(tail, maxConsoleTail, len(payloadPrefix), match)
	if _, err := io.Copy(out, io.NewSectionReader(&l, start, l.size-start)); err != nil {
		return
	}
	if !follow {
		if pf != nil {
			pf.Flush()
		}
		return
	}
	if f != nil {
		// Go on from the end of what was sent: the files' size when
		// they were looked at, not what has been appended since.
		if _, err := f.Seek(l.sizes[len(l.sizes)-1], io.SeekStart); err != nil {
			return
		}
		l.files = l.files[:len(l.files)-1] // handed to follow, which closes it
	}
	s.follow(w, r, id, f, out)
}

// logWindow reads the console log's files, the rotated one then the current
// one, as one stream of their sizes when they were opened.
type logWindow struct {
	files []*os.File
	sizes []int64
	size  int64
}

func (l *logWindow) add(f *os.File, size int64) {
	l.files = append(l.files, f)
	l.sizes = append(l.sizes, size)
	l.size += size
}

func (l *logWindow) close() {
	for _, f := range l.files {
		f.Close()
	}
}

// ReadAt reads the stream at off, across the files.
func (l *logWindow) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for i, f := range l.files {
		if len(p) == 0 {
			break
		}
		if off >= l.sizes[i] {
			off -= l.sizes[i]
			continue
		}
		want := min(int64(len(p)), l.sizes[i]-off)
		m, err := f.ReadAt(p[:want], off)
		n += m
		if err != nil && !(errors.Is(err, io.EOF) && int64(m) == want) {
			return n, err
		}
		p = p[m:]
		off = 0
	}
	if len(p) > 0 {
		return n, io.EOF
	}
	return n, nil
}

// tailStart returns where the last n lines of the stream begin (n < 0: all
// lines), looking at no more than its last limit bytes: the stream is read
// backwards, a block at a time, so memory stays small however long the log.
// A last line without its newline counts. With match, only lines whose
// first headLen bytes match are counted. When limit cuts a line, the answer
// begins after it, at the next line.
func (l *logWindow) tailStart(n, limit int64, headLen int, match func(head []byte) bool) int64 {
	floor := max(l.size-limit, 0)
	if n == 0 {
		return l.size
	}
	const block = 64 << 10
	buf := make([]byte, block)
	var after []byte // the first headLen bytes after the current block
	count := int64(0)
	end := l.size
	// The stream's final newline ends the last line; it starts none.
	if end > floor {
		var last [1]byte
		if _, err := l.ReadAt(last[:], end-1); err == nil && last[0] == '\n' {
			end--
			after = []byte{'\n'}
		}
	}
	// lineAt counts the line that begins right after a newline (or at the
	// stream's start) whose first bytes are head; true when it is the nth.
	lineAt := func(head []byte) bool {
		if match == nil || match(head) {
			count++
		}
		return n > 0 && count == n
	}
	for end > floor {
		start := max(end-block, floor)
		b := buf[:end-start]
		if _, err := l.ReadAt(b, start); err != nil {
			return l.size // cannot read: nothing rather than garbage
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != '\n' {
				continue
			}
			var head []byte
			if match != nil {
				head = b[i+1 : min(i+1+headLen, len(b))]
				if len(head) < headLen {
					head = append(append([]byte(nil), head...), after[:min(len(after), headLen-len(head))]...)
				}
			}
			if lineAt(head) {
				return start + int64(i) + 1
			}
		}
		if match != nil {
			after = append(append([]byte(nil), b[:min(len(b), headLen)]...), after...)
			after = after[:min(len(after), headLen)]
		}
		end = start
	}
	if floor > 0 {
		// Cut by the limit: a first line that began before it is not
		// shown; the lines counted so far start after its newline.
		var prev [1]byte
		if _, err := l.ReadAt(prev[:], floor-1); err == nil && prev[0] == '\n' {
			return floor
		}
		return l.firstLineEnd(floor)
	}
	return 0 // the whole stream: the first line counts whether or not it is the nth
}

// firstLineEnd returns the offset just past the first newline at or after
// off (the stream's size when there is none).
func (l *logWindow) firstLineEnd(off int64) int64 {
	buf := make([]byte, 32<<10)
	for off < l.size {
		m, err := l.ReadAt(buf[:min(int64(len(buf)), l.size-off)], off)
		if i := bytes.IndexByte(buf[:m], '\n'); i >= 0 {
			return off + int64(i) + 1
		}
		off += int64(m)
		if err != nil {
			break
		}
	}
	return l.size
}

// payloadFilter passes the lines that begin with payloadPrefix, without it,
// and drops the others. A line is held until its newline, up to maxHeldLine
// bytes; past that it is decided by its start and the rest of it passed (or
// dropped) as it comes. Flush decides a last line without its newline.
type payloadFilter struct {
	w    io.Writer
	line []byte
	long bool // within a line longer than maxHeldLine, already decided
	pass bool // the long line is payload output
}

func (p *payloadFilter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i+1]
		}
		b = b[len(chunk):]
		if p.long {
			if p.pass {
				if _, err := p.w.Write(chunk); err != nil {
					return 0, err
				}
			}
			p.long = i < 0
			continue
		}
		p.line = append(p.line, chunk...)
		if i >= 0 || len(p.line) > maxHeldLine {
			pass, err := p.emit()
			if err != nil {
				return 0, err
			}
			p.long, p.pass = i < 0, pass
		}
	}
	return n, nil
}

// emit writes the held line if it is payload output, and empties it.
func (p *payloadFilter) emit() (bool, error) {
	defer func() { p.line = p.line[:0] }()
	if !bytes.HasPrefix(p.line, []byte(payloadPrefix)) {
		return false, nil
	}
	_, err := p.w.Write(p.line[len(payloadPrefix):])
	return true, err
}

// Flush decides a last line that has no newline: the stream has ended.
func (p *payloadFilter) Flush() error {
	if p.long {
		return nil
	}
	_, err := p.emit()
	return err
}
