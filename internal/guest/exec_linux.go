package guest

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/execproto"
	"golang.org/x/sys/unix"
)

// Bounds of the exec agent.
const (
	maxExecSessions = 64
	// handshakeTimeout bounds the auth exchange and the request: a
	// connection that says nothing does not hold a session slot.
	handshakeTimeout = 10 * time.Second
	// hangupGrace is how long a command whose host left has between
	// SIGHUP and SIGKILL.
	hangupGrace = 2 * time.Second
	// outputGrace is how long a session waits, once its command exited,
	// for output that a process the command left behind may still write
	// into the same pipe or terminal; after it, an output stream that is
	// waiting for data (not for a slow host) is cut.
	outputGrace = 500 * time.Millisecond
	// lingerTimeout bounds how long a session reads what the host still
	// sends after the last frame, so the host reads that frame instead of
	// a reset.
	lingerTimeout = 5 * time.Second
	copyBuffer    = 32 << 10
)

// execServer is the exec agent: commands and files in the payload's root,
// for a host that proves it holds the VM's secret (execproto).
type execServer struct {
	root     string                     // the payload's root
	user     Cred                       // the image's user, for requests without one
	workdir  string                     // the image's working directory
	env      func(home string) []string // the payload's environment now, with HOME
	secret   func() []byte              // nil until the host delivers one
	children *children
	slots    chan struct{}
}

func newExecServer(root string, user Cred, workdir string, env func(string) []string, secret func() []byte, c *children) *execServer {
	if workdir == "" {
		workdir = "/"
	}
	return &execServer{root: root, user: user, workdir: workdir, env: env, secret: secret, children: c,
		slots: make(chan struct{}, maxExecSessions)}
}

// serve accepts connections until l fails, each served on its own.
func (s *execServer) serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			logf("exec: accept: %v", err)
			time.Sleep(time.Second) // e.g. out of file descriptors: do not spin
			continue
		}
		go s.serveConn(c)
	}
}

// session is one connection's state.
type session struct {
	conn net.Conn
	enc  *execproto.Encoder
	dec  *execproto.Decoder
	// reading is closed when the frames reader the session started, if
	// any, has returned: the linger waits for it instead of reading.
	reading chan struct{}
}

func (s *execServer) serveConn(conn net.Conn) {
	ss := &session{conn: conn, enc: execproto.NewEncoder(conn), dec: execproto.NewDecoder(conn)}
	defer ss.linger()
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		ss.enc.Frame(execproto.StreamError, fmt.Appendf(nil, "too many exec sessions (at most %d)", maxExecSessions))
		return
	}
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := execproto.Challenge(ss.enc, ss.dec, s.secret(), rand.Reader); err != nil {
		logf("exec: %s: %v", conn.RemoteAddr(), err)
		return
	}
	st, p, err := ss.dec.Next()
	if err != nil {
		logf("exec: %s: read the request: %v", conn.RemoteAddr(), err)
		return
	}
	var req execproto.Request
	switch {
	case st != execproto.StreamRequest:
		err = fmt.Errorf("want a request, got a %s frame", st)
	case json.Unmarshal(p, &req) != nil:
		err = errors.New("request: not JSON")
	default:
		err = req.Validate()
	}
	if err != nil {
		ss.enc.Frame(execproto.StreamError, []byte(err.Error()))
		return
	}
	conn.SetDeadline(time.Time{})
	switch req.Op {
	case execproto.OpExec:
		err = s.exec(ss, req.ExecRequest)
	case execproto.OpRead:
		err = s.read(ss, req.Path)
	case execproto.OpWrite:
		err = s.write(ss, req.Path)
	}
	if err != nil {
		ss.enc.Frame(execproto.StreamError, []byte(err.Error()))
	}
}

// linger ends the connection after the session's last frame: it stops
// sending, reads what the host still sends (for at most lingerTimeout)
// and closes. Closing with unread input would send a reset, which can
// destroy the last frame before the host reads it.
func (ss *session) linger() {
	if tc, ok := ss.conn.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
	ss.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	if ss.reading != nil {
		<-ss.reading
	} else {
		io.Copy(io.Discard, ss.conn)
	}
	ss.conn.Close()
}

func exitFrame(ws unix.WaitStatus) execproto.Exit {
	switch {
	case ws.Signaled():
		return execproto.Exit{Code: 128 + int(ws.Signal()), Signal: strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")}
	default:
		return execproto.Exit{Code: ws.ExitStatus()}
	}
}

// exec runs one command. An error is one the host gets as an error frame:
// the command did not run.
func (s *execServer) exec(ss *session, req execproto.ExecRequest) error {
	cred := s.user
	if req.User != "" {
		c, err := LookupUser(s.root, req.User)
		if err != nil {
			return fmt.Errorf("exec: %w", err)
		}
		cred = c
	}
	env := MergeEnv(s.env(cred.Home), req.Env)
	wd := req.Workdir
	if wd == "" {
		wd = s.workdir
	}
	if err := dirInRoot(s.root, wd); err != nil {
		return fmt.Errorf("exec: working directory %s: %w", wd, err)
	}
	pathEnv, _ := LookupEnv(env, "PATH")
	exe, err := ResolveCommand(s.root, req.Argv[0], pathEnv)
	if err != nil {
		// As a shell says it: on stderr, with status 127.
		ss.enc.Frame(execproto.StreamStderr, fmt.Appendf(nil, "mergen exec: %v\n", err))
		return ss.enc.JSON(execproto.StreamExit, execproto.Exit{Code: execproto.ExitNotFound})
	}

	attr := &os.ProcAttr{Dir: wd, Env: env, Sys: &syscall.SysProcAttr{
		Chroot:     s.root,
		Credential: &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: cred.Groups},
	}}
	// The parent's ends of the command's stdio: in (nil when the host
	// sends none), and the outputs to copy to the host.
	var in io.WriteCloser
	var outs []*outputCopy
	var term *os.File
	var childEnds []*os.File
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
	}()
	if req.TTY {
		master, tty, err := openPTY()
		if err != nil {
			return fmt.Errorf("exec: terminal: %w", err)
		}
		term = master
		defer term.Close()
		childEnds = append(childEnds, tty)
		if req.Cols > 0 && req.Rows > 0 {
			if err := setWinsize(term, req.Cols, req.Rows); err != nil {
				return fmt.Errorf("exec: terminal size: %w", err)
			}
		}
		attr.Files = []*os.File{tty, tty, tty}
		// A session of its own with the terminal as its controlling one:
		// job control, ^C and SIGHUP work as on a login.
		attr.Sys.Setsid, attr.Sys.Setctty, attr.Sys.Ctty = true, true, 0
		if req.Stdin {
			in = term
		}
		outs = append(outs, &outputCopy{from: term, stream: execproto.StreamStdout})
	} else {
		stdin, err := os.Open(os.DevNull)
		if req.Stdin {
			var w *os.File
			stdin, w, err = os.Pipe()
			in = w
			if w != nil {
				defer w.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("exec: stdin: %w", err)
		}
		childEnds = append(childEnds, stdin)
		attr.Files = []*os.File{stdin}
		for _, st := range []execproto.Stream{execproto.StreamStdout, execproto.StreamStderr} {
			r, w, err := os.Pipe()
			if err != nil {
				return fmt.Errorf("exec: %s: %w", st, err)
			}
			defer r.Close()
			childEnds = append(childEnds, w)
			attr.Files = append(attr.Files, w)
			outs = append(outs, &outputCopy{from: r, stream: st})
		}
		attr.Sys.Setpgid = true
	}

	pid, exited, err := s.children.start(func() (int, error) {
		p, err := os.StartProcess(exe, req.Argv, attr)
		if err != nil {
			return 0, err
		}
		pid := p.Pid
		p.Release() // the reaper, not os.Process, collects it
		return pid, nil
	})
	for _, f := range childEnds {
		f.Close()
	}
	childEnds = nil
	if err != nil {
		code := execproto.ExitNotExecutable
		if errors.Is(err, unix.ENOENT) {
			code = execproto.ExitNotFound // e.g. a script's interpreter is missing
		} else if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.ENOEXEC) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("exec %s: %w", req.Argv[0], err)
		}
		ss.enc.Frame(execproto.StreamStderr, fmt.Appendf(nil, "mergen exec: %s: %v\n", req.Argv[0], errors.Unwrap(err)))
		return ss.enc.JSON(execproto.StreamExit, execproto.Exit{Code: code})
	}

	// Signals go to the command's process group or, on a terminal, to its
	// foreground group (a shell's current job), as a key would send them;
	// only while the command has not been collected, so its id cannot
	// have been reused.
	var mu sync.Mutex
	done := false
	signal := func(sig unix.Signal) {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return
		}
		group := pid
		if term != nil && sig != unix.SIGHUP && sig != unix.SIGKILL {
			if fg, err := foreground(term); err == nil && fg > 0 {
				group = fg
			}
		}
		unix.Kill(-group, sig)
	}

	var copies sync.WaitGroup
	for _, o := range outs {
		copies.Add(1)
		go func() { defer copies.Done(); o.run(ss.enc) }()
	}
	ss.reading = make(chan struct{})
	go func() {
		defer close(ss.reading)
		s.input(ss, in, term, signal)
	}()

	ws := <-exited
	mu.Lock()
	done = true
	mu.Unlock()
	waitOutputs(&copies, outs)
	return ss.enc.JSON(execproto.StreamExit, exitFrame(ws))
}

// input reads the host's frames for a running command until the
// connection ends. Input is written as it comes, so a command that does
// not read holds the host back (and, with it, the frames after).
func (s *execServer) input(ss *session, in io.WriteCloser, term *os.File, signal func(unix.Signal)) {
	discard := in == nil
	for {
		st, p, err := ss.dec.Next()
		if err != nil {
			// The host left (or broke the framing): the command's group
			// hangs up, as at the end of a login.
			signal(unix.SIGHUP)
			time.AfterFunc(hangupGrace, func() { signal(unix.SIGKILL) })
			return
		}
		switch st {
		case execproto.StreamStdin:
			if discard {
				continue
			}
			if len(p) == 0 {
				if term != nil {
					// A terminal has no end: ^D at the start of a line is
					// what a reader takes for one.
					in.Write([]byte{4})
				} else {
					in.Close()
				}
				discard = term == nil
				continue
			}
			if _, err := in.Write(p); err != nil {
				discard = true // the command closed its input
			}
		case execproto.StreamResize:
			var w execproto.WindowSize
			if term != nil && json.Unmarshal(p, &w) == nil && w.Validate() == nil && w.Cols > 0 && w.Rows > 0 {
				setWinsize(term, w.Cols, w.Rows)
			}
		case execproto.StreamSignal:
			var m execproto.SignalMsg
			if json.Unmarshal(p, &m) == nil && m.Validate() == nil {
				if sig, ok := ParseSignal(m.Signal); ok {
					signal(sig)
				}
			}
		}
	}
}

// outputCopy copies one output of a command to the host through a fixed
// buffer: a host that reads slowly blocks the copy, the pipe fills and the
// command waits, and memory stays bounded.
type outputCopy struct {
	from    *os.File
	stream  execproto.Stream
	reading atomic.Bool // blocked in a read (waiting for the command), not in a write to the host
	ended   atomic.Bool
}

func (o *outputCopy) run(enc *execproto.Encoder) {
	defer o.ended.Store(true)
	buf := make([]byte, copyBuffer)
	for {
		o.reading.Store(true)
		n, err := o.from.Read(buf)
		o.reading.Store(false)
		if n > 0 {
			if enc.Frame(o.stream, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			return // EOF; EIO from a terminal whose last user left; closed
		}
	}
}

// waitOutputs waits for the copies of a command that exited. Output the
// command wrote is all copied; a copy still waiting for data after
// outputGrace is cut, as what it waits for is a process the command left
// behind that kept the pipe or terminal.
func waitOutputs(copies *sync.WaitGroup, outs []*outputCopy) {
	done := make(chan struct{})
	go func() { copies.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(outputGrace):
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, o := range outs {
			if !o.ended.Load() && o.reading.Load() {
				o.from.Close() // wakes the read (the file is in the poller)
			}
		}
		select {
		case <-done:
			return
		case <-tick.C:
		}
	}
}

// openPTY opens a terminal pair: the master in the runtime's poller (so
// closing it wakes a read blocked on it), the slave for the command.
func openPTY() (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err == nil {
		err = unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0)
	}
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("/dev/ptmx: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "ptmx"), os.NewFile(uintptr(sfd), name), nil
}

// foreground is the terminal's foreground process group.
func foreground(term *os.File) (int, error) {
	rc, err := term.SyscallConn()
	if err != nil {
		return 0, err
	}
	var pg int
	var ierr error
	if err := rc.Control(func(fd uintptr) { pg, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPGRP) }); err != nil {
		return 0, err
	}
	return pg, ierr
}

func setWinsize(term *os.File, cols, rows int) error {
	rc, err := term.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: uint16(cols), Row: uint16(rows)})
	}); err != nil {
		return err
	}
	return ierr
}

// dirInRoot checks that dir (absolute, as the payload sees it) is a
// directory in the payload's root.
func dirInRoot(root, dir string) error {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the payload's root: %w", err)
	}
	defer unix.Close(rfd)
	fd, err := openat2InRoot(rfd, path.Clean("./"+dir))
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}
