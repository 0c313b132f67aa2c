package api

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/execclient"
	"github.com/mergenhq/mergen/internal/execproto"
)

// exec is GET or POST /v1/vms/{id}/exec: a WebSocket that carries the exec
// agent's frames (docs/exec.md), one frame per binary message. The client
// sends the request frame first, then stdin, resize and signal frames; the
// daemon relays the guest's stdout, stderr, error and exit frames. The
// daemon is a checking relay: it authenticates to the guest with the VM's
// secret, which the client never sees, and passes on only the frames a
// client may send. WebSocket handshakes are GET requests (RFC 6455); POST
// is taken too, as the API documents exec as an action.
func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	// Refusals (unknown VM, not running) are plain HTTP answers, before
	// the upgrade.
	target, ok := s.execTarget(w, r)
	if !ok {
		return
	}
	if r.Method == http.MethodPost {
		r.Method = http.MethodGet
	}
	// The front door has refused cross-site origins already; the library's
	// same-host check would refuse the CLI's requests over the socket.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return // Accept answered
	}
	c.SetReadLimit(execproto.HeaderLen + execproto.MaxPayload)
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	err = s.relay(ctx, c, target)
	if err != nil {
		s.log.Info("exec session ended", "vm", target.VM, "err", err)
		// An error frame says why, then the close.
		b, _ := execproto.AppendFrame(nil, execproto.StreamError, []byte(err.Error()))
		c.Write(ctx, websocket.MessageBinary, b)
		c.Close(websocket.StatusInternalError, "exec failed")
		return
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// execTarget finds the guest agent of the request's VM, answering the
// refusal (bad id, unknown VM, not running) itself when there is none.
func (s *Server) execTarget(w http.ResponseWriter, r *http.Request) (execclient.Target, bool) {
	id, err := pathID(r)
	if err == nil {
		var t execclient.Target
		if t, err = s.mgr.ExecTarget(r.Context(), id); err == nil {
			return t, true
		}
	}
	s.writeError(w, r, err)
	return execclient.Target{}, false
}

// relay reads the client's request, opens the session in the guest and
// copies frames both ways until the guest's exit frame (or an end).
func (s *Server) relay(ctx context.Context, c *websocket.Conn, t execclient.Target) error {
	st, payload, err := readFrame(ctx, c)
	if err != nil {
		return err
	}
	if st != execproto.StreamRequest {
		return fmt.Errorf("the first frame must be the request (stream %d), not stream %d", execproto.StreamRequest, st)
	}
	var req execproto.Request
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if req.Op != execproto.OpExec {
		return fmt.Errorf("request op %q: the exec socket runs commands (op %q); files go through /v1/vms/{id}/files", req.Op, execproto.OpExec)
	}
	if err := req.Validate(); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	conn, err := execclient.Dial(ctx, t)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	enc := execproto.NewEncoder(conn)
	if err := enc.JSON(execproto.StreamRequest, req); err != nil {
		return fmt.Errorf("send the request: %w", err)
	}
	// Client to guest: only stdin, resize and signal frames.
	go func() {
		for {
			st, p, err := readFrame(ctx, c)
			if err != nil {
				conn.Close()
				return
			}
			switch st {
			case execproto.StreamStdin, execproto.StreamResize, execproto.StreamSignal:
			default:
				enc.Frame(execproto.StreamError, []byte(fmt.Sprintf("a client may not send stream %d", st)))
				conn.Close()
				return
			}
			if err := enc.Frame(st, p); err != nil {
				return
			}
		}
	}()
	// Guest to client, until the exit frame; a slow client holds the
	// guest's output back (no buffering here beyond one frame).
	gdec := execproto.NewDecoder(conn)
	var buf []byte
	for {
		st, p, err := gdec.Next()
		if err != nil {
			return fmt.Errorf("the guest's agent: %w", err)
		}
		if buf, err = execproto.AppendFrame(buf[:0], st, p); err != nil {
			return err
		}
		if err := c.Write(ctx, websocket.MessageBinary, buf); err != nil {
			return nil // the client went away; closing conn ends the command
		}
		if st == execproto.StreamExit {
			return nil
		}
	}
}

// readFrame reads one binary message holding exactly one frame.
func readFrame(ctx context.Context, c *websocket.Conn) (execproto.Stream, []byte, error) {
	typ, msg, err := c.Read(ctx)
	if err != nil {
		return 0, nil, err
	}
	if typ != websocket.MessageBinary {
		return 0, nil, errors.New("frames are binary messages")
	}
	dec := execproto.NewDecoder(bytes.NewReader(msg))
	st, p, err := dec.Next()
	if err != nil {
		return 0, nil, fmt.Errorf("frame: %w", err)
	}
	if _, _, err := dec.Next(); !errors.Is(err, io.EOF) {
		return 0, nil, errors.New("frame: one frame per message")
	}
	return st, append([]byte(nil), p...), nil
}

// Content types of the files endpoints.
const (
	contentTar = "application/x-tar"
	contentRaw = "application/octet-stream"
)

// filesPath is the files endpoints' path parameter: an absolute path in
// the guest's root (the guest confines it there).
func filesPath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" || !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) || len(p) > 4096 {
		return "", errdefs.Invalid("path: %q must be an absolute path in the guest (at most 4096 bytes)", p)
	}
	return path.Clean(p), nil
}

// getFiles is GET /v1/vms/{id}/files?path=…: a tar of the file or
// directory; with Accept: application/octet-stream and a regular file, its
// bytes alone.
func (s *Server) getFiles(w http.ResponseWriter, r *http.Request) {
	p, err := filesPath(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	t, ok := s.execTarget(w, r)
	if !ok {
		return
	}
	raw := strings.Contains(r.Header.Get("Accept"), contentRaw)
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(execclient.ReadFiles(r.Context(), t, p, pw)) }()
	defer pr.Close()
	if !raw {
		// The first bytes decide the status: an error from the guest
		// (no such file, outside the root) comes before any tar.
		head := make([]byte, 512)
		n, err := io.ReadFull(pr, head)
		if n == 0 && err != nil {
			s.writeError(w, r, filesErr(t.VM, p, err))
			return
		}
		w.Header().Set("Content-Type", contentTar)
		w.WriteHeader(http.StatusOK)
		w.Write(head[:n])
		io.Copy(w, pr)
		return
	}
	tr := tar.NewReader(pr)
	hdr, err := tr.Next()
	if err != nil {
		s.writeError(w, r, filesErr(t.VM, p, err))
		return
	}
	if hdr.Typeflag != tar.TypeReg {
		s.writeError(w, r, errdefs.Invalid("path: %s is not a regular file; ask for a tar (Accept: %s)", p, contentTar))
		return
	}
	w.Header().Set("Content-Type", contentRaw)
	w.Header().Set("Content-Length", strconv.FormatInt(hdr.Size, 10))
	w.Header().Set("X-Mergen-Mode", fmt.Sprintf("%04o", hdr.Mode&0o7777))
	w.WriteHeader(http.StatusOK)
	io.Copy(w, tr)
}

// putFiles is PUT /v1/vms/{id}/files?path=…: a tar body is extracted into
// the directory path; a raw body (application/octet-stream) becomes the
// file path, with ?mode= (octal, default 0644).
func (s *Server) putFiles(w http.ResponseWriter, r *http.Request) {
	p, err := filesPath(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	t, ok := s.execTarget(w, r)
	if !ok {
		return
	}
	body := io.Reader(r.Body)
	dir := p
	if mt == contentRaw {
		mode := int64(0o644)
		if m := r.URL.Query().Get("mode"); m != "" {
			if mode, err = strconv.ParseInt(m, 8, 32); err != nil || mode < 0 || mode > 0o7777 {
				s.writeError(w, r, errdefs.Invalid("mode: %q is not an octal file mode", m))
				return
			}
		}
		if r.ContentLength < 0 {
			s.writeError(w, r, errdefs.Invalid("a raw upload needs a Content-Length"))
			return
		}
		dir = path.Dir(p)
		body = rawAsTar(path.Base(p), mode, r.ContentLength, r.Body)
	}
	if err := execclient.WriteFiles(r.Context(), t, dir, body); err != nil {
		s.writeError(w, r, filesErr(t.VM, p, err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": t.VM, "path": p, "status": "written"})
}

// rawAsTar streams one file of size bytes from r as a tar archive.
func rawAsTar(name string, mode, size int64, r io.Reader) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: size, Typeflag: tar.TypeReg, ModTime: time.Now()})
		if err == nil {
			_, err = io.CopyN(tw, r, size)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}

// filesErr classes the guest's refusals: a missing file is not found, a
// path outside the root or a bad archive is invalid, a full disk is 507.
func filesErr(id, p string, err error) error {
	msg := err.Error()
	var remote *execproto.RemoteError
	switch {
	case strings.Contains(msg, "no space left"):
		return errdefs.NoSpace("vm %s: %s: %v", id, p, err)
	case strings.Contains(msg, "no such file"):
		return errdefs.NotFound("vm %s: %s: %v", id, p, err)
	case errors.As(err, &remote):
		return errdefs.Invalid("vm %s: %s: %v", id, p, err)
	}
	return fmt.Errorf("vm %s: %s: %w", id, p, err)
}

// attachConsole is GET /v1/vms/{id}/console/attach: a WebSocket whose
// binary messages are the bytes of the guest's interactive serial console
// (a shell on its second serial port), both ways.
func (s *Server) attachConsole(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	conn, release, err := s.mgr.AttachConsole(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer release()
	defer conn.Close()
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // a detached client ends the copy below
	defer stop()
	go func() {
		defer cancel()
		for {
			_, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if _, err := conn.Write(msg); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if werr := c.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
}
