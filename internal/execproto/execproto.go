// Package execproto is the protocol between the host and mergen-init's exec
// agent: running commands in a guest and copying files in and out of it.
//
// The host connects to the guest's TCP port Port from inside the VM's
// network namespace. The guest speaks first:
//
//  1. guest → host: a StreamAuth frame holding NonceLen fresh random bytes;
//  2. host → guest: a StreamAuth frame holding Answer(secret, nonce), the
//     HMAC-SHA256 of the nonce and AuthContext under the VM's agent secret;
//  3. guest → host: an empty StreamAuth frame (accepted), or a StreamError
//     frame and the end of the connection (refused: wrong answer, or no
//     secret yet).
//
// A guest that cannot take the connection (too many sessions) answers a
// StreamError frame instead of step 1. After the exchange the host sends
// one StreamRequest frame and the session runs until the guest sends
// StreamExit or StreamError, its last frame.
//
// Every frame is [1 byte stream][4 bytes big-endian length][payload], the
// payload at most MaxPayload bytes; a longer length or an unknown stream
// is an error, never a reason to buffer more. The same frames travel one
// per binary WebSocket message between the API and its clients, so
// encoding and decoding work on any io.Reader and io.Writer.
//
// The package uses the standard library only: the daemon and the guest
// link it and nothing of each other.
package execproto

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"
	"sync"
)

// Port is the guest's TCP port for exec sessions, on every guest address.
// It is reached only from the VM's network namespace: never published,
// never routed by the forwarder.
const Port = 10022

// MaxPayload bounds one frame's payload.
const MaxPayload = 64 << 10

// HeaderLen is the size of a frame's header.
const HeaderLen = 5

// Stream says what a frame carries.
type Stream byte

// Streams.
const (
	StreamStdin   Stream = 0 // host → guest: command input; an empty payload is EOF
	StreamStdout  Stream = 1 // guest → host: output (the terminal's, with a TTY); a read's tar
	StreamStderr  Stream = 2 // guest → host: error output (none with a TTY)
	StreamResize  Stream = 3 // host → guest: JSON WindowSize
	StreamExit    Stream = 4 // guest → host: JSON Exit, the session's last frame
	StreamSignal  Stream = 5 // host → guest: JSON SignalMsg, for the command's process group
	StreamError   Stream = 6 // guest → host: why the session failed (text), its last frame
	StreamRequest Stream = 7 // host → guest: JSON Request, the first frame after the auth exchange
	StreamAuth    Stream = 8 // both ways, before the request: the challenge (see the package comment)
)

var streamNames = [...]string{"stdin", "stdout", "stderr", "resize", "exit", "signal", "error", "request", "auth"}

func (s Stream) String() string {
	if int(s) < len(streamNames) {
		return streamNames[s]
	}
	return fmt.Sprintf("stream(%d)", byte(s))
}

// Valid reports whether s is a stream of this protocol.
func (s Stream) Valid() bool { return int(s) < len(streamNames) }

// Errors of the framing.
var (
	ErrTooLarge  = fmt.Errorf("execproto: frame payload larger than %d bytes", MaxPayload)
	ErrBadStream = errors.New("execproto: unknown stream")
)

// AppendFrame appends one frame to b.
func AppendFrame(b []byte, s Stream, payload []byte) ([]byte, error) {
	if !s.Valid() {
		return b, fmt.Errorf("%w %d", ErrBadStream, s)
	}
	if len(payload) > MaxPayload {
		return b, ErrTooLarge
	}
	b = append(b, byte(s), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], uint32(len(payload)))
	return append(b, payload...), nil
}

// Decoder reads frames from a stream.
type Decoder struct {
	r   io.Reader
	buf []byte
}

// NewDecoder reads frames from r. It buffers nothing beyond the frame it
// reads: bytes after it stay in r.
func NewDecoder(r io.Reader) *Decoder { return &Decoder{r: r} }

// Next reads one frame. The payload is valid until the next call. At the
// end of the stream between frames it returns io.EOF; inside a frame,
// io.ErrUnexpectedEOF. A frame with an unknown stream or a length over
// MaxPayload is an error (ErrBadStream, ErrTooLarge) and the stream is
// then out of step: close it.
func (d *Decoder) Next() (Stream, []byte, error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(d.r, h[:]); err != nil {
		return 0, nil, err
	}
	s, n := Stream(h[0]), binary.BigEndian.Uint32(h[1:])
	if !s.Valid() {
		return 0, nil, fmt.Errorf("%w %d", ErrBadStream, h[0])
	}
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("%w (%s frame of %d bytes)", ErrTooLarge, s, n)
	}
	if d.buf == nil {
		d.buf = make([]byte, 0, 4096)
	}
	if cap(d.buf) < int(n) {
		d.buf = make([]byte, n, MaxPayload)
	}
	p := d.buf[:n]
	if _, err := io.ReadFull(d.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return s, p, nil
}

// Encoder writes frames to a stream; it is safe for concurrent use, and
// every frame is one Write (one WebSocket message, when w makes it one).
type Encoder struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	err error
}

// NewEncoder writes frames to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: w} }

// Frame writes one frame. After a failed write every later one fails with
// the same error: the peer's view of the stream is unknown.
func (e *Encoder) Frame(s Stream, payload []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	b, err := AppendFrame(e.buf[:0], s, payload)
	if err != nil {
		return err
	}
	e.buf = b
	if cap(e.buf) > 2*4096 {
		e.buf = nil // a big frame's buffer is not kept for the session's life
	}
	_, e.err = e.w.Write(b)
	return e.err
}

// JSON writes v as one frame of JSON.
func (e *Encoder) JSON(s Stream, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.Frame(s, b)
}

// Writer returns an io.Writer that sends what is written to it on stream
// s, cut into frames of at most MaxPayload bytes.
func (e *Encoder) Writer(s Stream) io.Writer { return streamWriter{e, s} }

type streamWriter struct {
	e *Encoder
	s Stream
}

func (w streamWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, MaxPayload)
		if err := w.e.Frame(w.s, p[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// Operations of a Request.
const (
	OpExec  = "exec"  // run a command
	OpRead  = "read"  // the guest sends a tar of Path on stdout, then exit 0
	OpWrite = "write" // the host sends a tar on stdin that the guest extracts below Path
)

// ExecRequest is a command to run.
type ExecRequest struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"` // KEY=VALUE, over the payload's environment
	// User is user[:group], names from the image's /etc/passwd and
	// /etc/group or numeric ids; empty runs as the image's user.
	User string `json:"user,omitempty"`
	// Workdir is absolute; empty is the image's working directory.
	Workdir string `json:"workdir,omitempty"`
	// TTY runs the command on a terminal of Cols×Rows: its output comes
	// on stdout only.
	TTY  bool `json:"tty,omitempty"`
	Cols int  `json:"cols,omitempty"`
	Rows int  `json:"rows,omitempty"`
	// Stdin says the host sends input; without it the command's stdin is
	// /dev/null (or, with a TTY, a terminal nobody types on).
	Stdin bool `json:"stdin,omitempty"`
}

// Request is the first frame of a session.
type Request struct {
	Op string `json:"op"`
	ExecRequest
	Path string `json:"path,omitempty"` // read, write: an absolute path in the guest's root
}

// Bounds of a request.
const (
	MaxArgs    = 4096
	MaxWinSize = 65535
)

var (
	envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	signalRe = regexp.MustCompile(`^(SIG)?[A-Z0-9+-]{1,10}$`)
)

// Validate checks a request before it is sent and when it is received.
func (r Request) Validate() error {
	switch r.Op {
	case OpExec:
		return r.ExecRequest.Validate()
	case OpRead, OpWrite:
		return validPath(r.Path)
	case "":
		return errors.New("op: missing")
	}
	return fmt.Errorf("op %q: unknown (want %s, %s or %s)", r.Op, OpExec, OpRead, OpWrite)
}

// Validate names the first field of r the guest could not run.
func (r ExecRequest) Validate() error {
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return errors.New("argv: empty")
	}
	if len(r.Argv) > MaxArgs {
		return fmt.Errorf("argv: %d arguments, at most %d", len(r.Argv), MaxArgs)
	}
	for i, a := range r.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("argv[%d]: contains NUL", i)
		}
	}
	for i, kv := range r.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !envKeyRe.MatchString(k) {
			return fmt.Errorf("env[%d]: not NAME=value with a variable name", i)
		}
		if strings.IndexByte(kv, 0) >= 0 {
			return fmt.Errorf("env[%d] (%s): contains NUL", i, k)
		}
	}
	if strings.IndexByte(r.User, 0) >= 0 || strings.Count(r.User, ":") > 1 {
		return fmt.Errorf("user %q: want user[:group]", r.User)
	}
	if r.Workdir != "" {
		if err := validPath(r.Workdir); err != nil {
			return fmt.Errorf("workdir: %w", err)
		}
	}
	if err := (WindowSize{Cols: r.Cols, Rows: r.Rows}).validate(r.TTY); err != nil {
		return err
	}
	return nil
}

func validPath(p string) error {
	switch {
	case p == "":
		return errors.New("path: missing")
	case !path.IsAbs(p):
		return fmt.Errorf("path %q: not absolute", p)
	case strings.IndexByte(p, 0) >= 0:
		return errors.New("path: contains NUL")
	case len(p) > 4096:
		return errors.New("path: longer than 4096 bytes")
	case p == "/.." || strings.HasSuffix(p, "/..") || strings.Contains(p, "/../"):
		// Links resolve inside the guest's root anyway; a ".." that
		// tries to climb out of it is a mistake said so.
		return fmt.Errorf("path %q: \"..\" is refused", p)
	}
	return nil
}

// WindowSize is a terminal's size, the payload of StreamResize.
type WindowSize struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// Validate checks a resize.
func (w WindowSize) Validate() error { return w.validate(true) }

func (w WindowSize) validate(tty bool) error {
	if w.Cols < 0 || w.Rows < 0 || w.Cols > MaxWinSize || w.Rows > MaxWinSize {
		return fmt.Errorf("window size %dx%d: want 0 to %d each", w.Cols, w.Rows, MaxWinSize)
	}
	if !tty && (w.Cols != 0 || w.Rows != 0) {
		return errors.New("cols, rows: only with tty")
	}
	return nil
}

// SignalMsg is the payload of StreamSignal.
type SignalMsg struct {
	Signal string `json:"signal"` // "INT", "SIGTERM", "9"
}

// Validate checks the signal's spelling; the guest knows which exist.
func (s SignalMsg) Validate() error {
	if !signalRe.MatchString(s.Signal) {
		return fmt.Errorf("signal %q: want a name like INT or SIGTERM, or a number", s.Signal)
	}
	return nil
}

// Exit is the payload of StreamExit.
type Exit struct {
	Code   int    `json:"code"`             // the exit status; 128+n when killed by signal n
	Signal string `json:"signal,omitempty"` // the signal's name (e.g. "KILL") when killed by one
}

// Exit statuses a command gets from the agent rather than from itself, as
// a shell gives them.
const (
	ExitNotExecutable = 126
	ExitNotFound      = 127
)

// Authentication.
const (
	NonceLen    = 32
	SecretLen   = 32
	AuthContext = "mergen-exec-v1"
)

// Answer is the host's answer to the guest's nonce: HMAC-SHA256 under the
// VM's secret of the nonce followed by AuthContext. The context keeps an
// answer from meaning anything in another protocol that would MAC nonces
// with the same secret.
func Answer(secret, nonce []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(nonce)
	m.Write([]byte(AuthContext))
	return m.Sum(nil)
}

// CheckAnswer compares an answer with the expected one in constant time.
// An empty secret (none delivered yet) accepts nothing.
func CheckAnswer(secret, nonce, answer []byte) bool {
	if len(secret) == 0 || len(nonce) != NonceLen {
		return false
	}
	return hmac.Equal(Answer(secret, nonce), answer)
}

// Refusal texts the guest sends in a StreamError frame at step 3; a host
// that reads either delivers the secret again and retries.
const (
	RefusedWrong    = "agent secret refused"
	RefusedNoSecret = "agent secret refused: the guest has no secret yet"
)

// ErrRefused is wrapped by Respond's error when the guest refused the
// answer: a wrong secret, or none delivered yet.
var ErrRefused = errors.New(RefusedWrong)

// RemoteError is a StreamError frame's text: what the guest said went
// wrong. It is the guest's text: cut to MaxEcho bytes and quoted when
// printed, the guest is not trusted to write the host's logs.
type RemoteError struct{ Msg string }

// MaxEcho bounds how much of a guest's error text a RemoteError keeps.
const MaxEcho = 512

// NewRemoteError keeps at most MaxEcho bytes of msg.
func NewRemoteError(msg []byte) *RemoteError {
	if len(msg) > MaxEcho {
		return &RemoteError{Msg: string(msg[:MaxEcho]) + "..."}
	}
	return &RemoteError{Msg: string(msg)}
}

func (e *RemoteError) Error() string { return fmt.Sprintf("the guest says %q", e.Msg) }

// Challenge is the guest's side of the exchange: it sends a fresh nonce,
// reads the answer and accepts it or refuses it with the reason. secret is
// nil when the host has not delivered one yet. The error says why the
// connection must end.
func Challenge(enc *Encoder, dec *Decoder, secret []byte, random io.Reader) error {
	nonce := make([]byte, NonceLen)
	if _, err := io.ReadFull(random, nonce); err != nil {
		return fmt.Errorf("auth: nonce: %w", err)
	}
	if err := enc.Frame(StreamAuth, nonce); err != nil {
		return fmt.Errorf("auth: send the nonce: %w", err)
	}
	s, answer, err := dec.Next()
	if err != nil {
		return fmt.Errorf("auth: read the answer: %w", err)
	}
	if s != StreamAuth {
		enc.Frame(StreamError, []byte(RefusedWrong))
		return fmt.Errorf("auth: a %s frame instead of the answer", s)
	}
	if len(secret) == 0 {
		enc.Frame(StreamError, []byte(RefusedNoSecret))
		return errors.New(RefusedNoSecret)
	}
	if !CheckAnswer(secret, nonce, answer) {
		enc.Frame(StreamError, []byte(RefusedWrong))
		return ErrRefused
	}
	if err := enc.Frame(StreamAuth, nil); err != nil {
		return fmt.Errorf("auth: accept: %w", err)
	}
	return nil
}

// Respond is the host's side of the exchange. It returns nil once the
// guest accepted, an error wrapping ErrRefused when the guest refused the
// answer, and a *RemoteError when the guest turned the connection down
// before the challenge (e.g. too many sessions).
func Respond(enc *Encoder, dec *Decoder, secret []byte) error {
	s, nonce, err := dec.Next()
	if err != nil {
		return fmt.Errorf("auth: read the challenge: %w", err)
	}
	switch {
	case s == StreamError:
		return NewRemoteError(nonce)
	case s != StreamAuth || len(nonce) != NonceLen:
		return fmt.Errorf("auth: want a %d-byte challenge, got a %s frame of %d bytes", NonceLen, s, len(nonce))
	}
	if err := enc.Frame(StreamAuth, Answer(secret, nonce)); err != nil {
		return fmt.Errorf("auth: send the answer: %w", err)
	}
	s, p, err := dec.Next()
	if err != nil {
		return fmt.Errorf("auth: read the verdict: %w", err)
	}
	switch {
	case s == StreamAuth && len(p) == 0:
		return nil
	case s == StreamError:
		return fmt.Errorf("%w (%w)", ErrRefused, NewRemoteError(p))
	}
	return fmt.Errorf("auth: want the verdict, got a %s frame", s)
}
