// Package execclient is the host's side of the exec agent (internal/execproto):
// commands and file copies in a running guest, over TCP to the guest's
// execproto.Port from inside the VM's network namespace.
//
// Every connection proves it holds the VM's secret (EnsureSecret keeps it in
// the VM's run directory). A guest that refuses the proof has no secret yet
// (booted, rebooted) or another VM's (restored from a snapshot): Dial then
// hands it the host's over the agent channel, through Target.Deliver, and
// tries once more.
//
// The package does not link the guest's code, nor the guest the host's.
package execclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mergenhq/mergen/internal/execproto"
	"github.com/mergenhq/mergen/internal/vmnet"
)

// Target is one VM's exec agent.
type Target struct {
	VM    string // the VM's id, for errors
	Netns string // the VM's network namespace by name (its record's netns); empty: the caller's own (bridge mode)
	Addr  string // guestIP:execproto.Port
	// Secret is the VM's secret (EnsureSecret).
	Secret []byte
	// Deliver gives the guest Secret over the agent channel (vmm.Driver's
	// Agent and an agentproto.OpSecret call). Nil: a refusal is final.
	Deliver func(ctx context.Context, secret []byte) error
}

// Request is a command to run.
type Request = execproto.ExecRequest

// dialTimeout bounds one connect and auth exchange when ctx has no
// earlier deadline.
const dialTimeout = 10 * time.Second

// copyBuffer is the size of every copy's buffer.
const copyBuffer = 32 << 10

// Dial connects to the guest's exec agent and proves the secret; a refused
// proof delivers the secret (Target.Deliver) and tries once more. The
// connection is ready for the request frame. ctx bounds the dial, not the
// connection's use.
func Dial(ctx context.Context, t Target) (net.Conn, error) {
	conn, err := dialOnce(ctx, t)
	if errors.Is(err, execproto.ErrRefused) && t.Deliver != nil {
		if derr := t.Deliver(ctx, t.Secret); derr != nil {
			return nil, fmt.Errorf("exec vm %s: deliver the agent secret after %w: %w", t.VM, err, derr)
		}
		conn, err = dialOnce(ctx, t)
	}
	if err != nil {
		return nil, fmt.Errorf("exec vm %s: %w", t.VM, err)
	}
	return conn, nil
}

func dialOnce(ctx context.Context, t Target) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, err := vmnet.DialInNetns(ctx, t.Netns, t.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", t.Addr, err)
	}
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	err = execproto.Respond(execproto.NewEncoder(conn), execproto.NewDecoder(conn), t.Secret)
	stop()
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// start dials and sends the request. ctx bounds the whole session:
// ending it closes the connection.
func start(ctx context.Context, t Target, req execproto.Request) (net.Conn, *execproto.Encoder, func() bool, error) {
	if err := req.Validate(); err != nil {
		return nil, nil, nil, fmt.Errorf("%s vm %s: %w", req.Op, t.VM, err)
	}
	conn, err := Dial(ctx, t)
	if err != nil {
		return nil, nil, nil, err
	}
	enc := execproto.NewEncoder(conn)
	if err := enc.JSON(execproto.StreamRequest, req); err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("%s vm %s: send the request: %w", req.Op, t.VM, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return conn, enc, stop, nil
}

// Session is one command running in the guest.
//
// Its stdout and stderr are pipes: read both (concurrently, as with
// os/exec), or the command stalls once the one left unread fills; with a
// TTY there is only stdout.
type Session struct {
	vm      string
	conn    net.Conn
	enc     *execproto.Encoder
	stop    func() bool
	stdin   *stdinWriter
	stdout  *io.PipeReader
	stderr  *io.PipeReader
	done    chan struct{}
	exit    execproto.Exit
	err     error
	closing sync.Once
}

// Exec starts req in the guest. ctx bounds the whole session: when it
// ends, the connection closes and the guest hangs the command up (SIGHUP,
// then SIGKILL).
func Exec(ctx context.Context, t Target, req Request) (*Session, error) {
	conn, enc, stop, err := start(ctx, t, execproto.Request{Op: execproto.OpExec, ExecRequest: req})
	if err != nil {
		return nil, err
	}
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	s := &Session{vm: t.VM, conn: conn, enc: enc, stop: stop, stdin: &stdinWriter{enc: enc},
		stdout: outR, stderr: errR, done: make(chan struct{})}
	go s.receive(ctx, outW, errW)
	return s, nil
}

// receive passes the guest's frames on until the exit status or an error.
// A write to a pipe waits for its reader: a slow reader holds the guest
// back instead of growing a buffer here.
func (s *Session) receive(ctx context.Context, outW, errW *io.PipeWriter) {
	defer close(s.done)
	dec := execproto.NewDecoder(s.conn)
	end := func(err error) {
		s.err = err
		if err == nil {
			err = io.EOF
		}
		outW.CloseWithError(err)
		errW.CloseWithError(err)
	}
	for {
		st, p, err := dec.Next()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			} else if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			end(fmt.Errorf("exec vm %s: connection ended before the exit status: %w", s.vm, err))
			return
		}
		switch st {
		case execproto.StreamStdout:
			outW.Write(p) // fails only once the reader closed: output dropped
		case execproto.StreamStderr:
			errW.Write(p)
		case execproto.StreamExit:
			if err := json.Unmarshal(p, &s.exit); err != nil {
				end(fmt.Errorf("exec vm %s: exit status: %w", s.vm, err))
				return
			}
			end(nil)
			return
		case execproto.StreamError:
			end(fmt.Errorf("exec vm %s: %w", s.vm, execproto.NewRemoteError(p)))
			return
		}
	}
}

// Stdin is the command's input (when the request asked for it): Close sends
// EOF (on a TTY, ^D).
func (s *Session) Stdin() io.WriteCloser { return s.stdin }

// Stdout is the command's output (the terminal's, with a TTY).
func (s *Session) Stdout() io.Reader { return s.stdout }

// Stderr is the command's error output; empty with a TTY.
func (s *Session) Stderr() io.Reader { return s.stderr }

// Resize sets the terminal's size.
func (s *Session) Resize(cols, rows int) error {
	w := execproto.WindowSize{Cols: cols, Rows: rows}
	if err := w.Validate(); err != nil {
		return fmt.Errorf("exec vm %s: resize: %w", s.vm, err)
	}
	if err := s.enc.JSON(execproto.StreamResize, w); err != nil {
		return fmt.Errorf("exec vm %s: resize: %w", s.vm, err)
	}
	return nil
}

// Signal sends sig ("INT", "SIGTERM", "9") to the command's process group
// (with a TTY, to the terminal's foreground group).
func (s *Session) Signal(sig string) error {
	m := execproto.SignalMsg{Signal: sig}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("exec vm %s: %w", s.vm, err)
	}
	if err := s.enc.JSON(execproto.StreamSignal, m); err != nil {
		return fmt.Errorf("exec vm %s: signal %s: %w", s.vm, sig, err)
	}
	return nil
}

// Wait returns the command's exit status once the guest sent it, which it
// does after the command's output. It returns an error when the session
// ended without one (the guest's reason, a closed connection, ctx).
func (s *Session) Wait() (execproto.Exit, error) {
	<-s.done
	return s.exit, s.err
}

// Close ends the session; a command still running is hung up.
func (s *Session) Close() error {
	s.closing.Do(func() {
		s.stop()
		s.conn.Close()
		s.stdout.Close()
		s.stderr.Close()
	})
	return nil
}

// stdinWriter sends input frames; an empty write sends nothing (an empty
// frame is EOF).
type stdinWriter struct {
	enc    *execproto.Encoder
	mu     sync.Mutex
	closed bool
}

func (w *stdinWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, io.ErrClosedPipe
	}
	return w.enc.Writer(execproto.StreamStdin).Write(p)
}

func (w *stdinWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	return w.enc.Frame(execproto.StreamStdin, nil)
}

// ReadFiles writes a tar of path in the guest (a file, or a directory with
// everything below it) to w.
func ReadFiles(ctx context.Context, t Target, path string, w io.Writer) error {
	conn, _, stop, err := start(ctx, t, execproto.Request{Op: execproto.OpRead, Path: path})
	if err != nil {
		return err
	}
	defer conn.Close()
	defer stop()
	dec := execproto.NewDecoder(conn)
	for {
		st, p, err := dec.Next()
		if err != nil {
			return fmt.Errorf("read %s from vm %s: %w", path, t.VM, sessionErr(ctx, err))
		}
		switch st {
		case execproto.StreamStdout:
			if _, err := w.Write(p); err != nil {
				return fmt.Errorf("read %s from vm %s: %w", path, t.VM, err)
			}
		case execproto.StreamExit:
			return nil
		case execproto.StreamError:
			return fmt.Errorf("read %s from vm %s: %w", path, t.VM, execproto.NewRemoteError(p))
		}
	}
}

// WriteFiles extracts the tar read from r below dir in the guest. Files
// land whole or not at all; the guest refuses entries that leave dir and
// device nodes.
func WriteFiles(ctx context.Context, t Target, dir string, r io.Reader) error {
	conn, enc, stop, err := start(ctx, t, execproto.Request{Op: execproto.OpWrite, Path: dir})
	if err != nil {
		return err
	}
	defer conn.Close()
	defer stop()
	sent := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(enc.Writer(execproto.StreamStdin), onlyReader{r}, make([]byte, copyBuffer))
		if err == nil {
			err = enc.Frame(execproto.StreamStdin, nil)
		} else if rerr := (*readError)(nil); errors.As(err, &rerr) {
			conn.Close() // the guest sees a cut stream and keeps nothing of it
		}
		sent <- err
	}()
	dec := execproto.NewDecoder(conn)
	for {
		st, p, err := dec.Next()
		if err != nil {
			// A failure to read r closes the connection: that is the cause.
			select {
			case serr := <-sent:
				if serr != nil {
					err = serr
				}
			default:
			}
			return fmt.Errorf("write %s in vm %s: %w", dir, t.VM, sessionErr(ctx, err))
		}
		switch st {
		case execproto.StreamExit:
			// The guest answers once it has read the whole stream.
			return nil
		case execproto.StreamError:
			return fmt.Errorf("write %s in vm %s: %w", dir, t.VM, execproto.NewRemoteError(p))
		}
	}
}

// readError marks a failure to read the caller's tar, apart from one to
// send it.
type readError struct{ err error }

func (e *readError) Error() string { return "read the tar: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// onlyReader wraps the caller's reader's errors and hides WriterTo, so
// the copy goes through the fixed buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	if err != nil && err != io.EOF {
		err = &readError{err}
	}
	return n, err
}

func sessionErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == io.EOF {
		return fmt.Errorf("connection ended before the exit status: %w", io.ErrUnexpectedEOF)
	}
	return err
}
