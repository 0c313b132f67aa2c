package execproto

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
)

func TestFramesRoundTripAndSplitAtMaxPayload(t *testing.T) {
	var buf bytes.Buffer
	enc := NewEncoder(&buf)
	big := bytes.Repeat([]byte("x"), MaxPayload+10)
	if err := enc.Frame(StreamStdout, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := enc.Frame(StreamStdin, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := enc.Writer(StreamStderr).Write(big); err != nil || n != len(big) {
		t.Fatalf("stream writer: %d, %v", n, err)
	}
	if err := enc.JSON(StreamExit, Exit{Code: 7}); err != nil {
		t.Fatal(err)
	}
	dec := NewDecoder(&buf)
	want := []struct {
		s Stream
		p string
	}{{StreamStdout, "hello"}, {StreamStdin, ""}, {StreamStderr, string(big[:MaxPayload])}, {StreamStderr, "xxxxxxxxxx"}, {StreamExit, `{"code":7}`}}
	for i, w := range want {
		s, p, err := dec.Next()
		if err != nil || s != w.s || string(p) != w.p {
			t.Fatalf("frame %d: %s %d bytes, %v; want %s %d bytes", i, s, len(p), err, w.s, len(w.p))
		}
	}
	if _, _, err := dec.Next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestDecoderRefusesWhatItCannotTrust(t *testing.T) {
	header := func(s byte, n uint32) []byte {
		b := []byte{s, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], n)
		return b
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"oversized", header(1, MaxPayload+1), ErrTooLarge},
		{"huge", header(1, 0xffffffff), ErrTooLarge},
		{"unknown stream", header(9, 1), ErrBadStream},
		{"stream 255", header(255, 0), ErrBadStream},
		{"cut payload", append(header(1, 10), "abc"...), io.ErrUnexpectedEOF},
		{"cut header", []byte{1, 0, 0}, io.ErrUnexpectedEOF},
	}
	for _, c := range cases {
		_, _, err := NewDecoder(bytes.NewReader(c.in)).Next()
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := AppendFrame(nil, StreamStdout, make([]byte, MaxPayload+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("encode oversized: %v", err)
	}
	if _, err := AppendFrame(nil, Stream(42), nil); !errors.Is(err, ErrBadStream) {
		t.Errorf("encode stream 42: %v", err)
	}
}

func TestRequestValidation(t *testing.T) {
	ok := []Request{
		{Op: OpExec, ExecRequest: ExecRequest{Argv: []string{"id"}}},
		{Op: OpExec, ExecRequest: ExecRequest{Argv: []string{"sh"}, TTY: true, Cols: 80, Rows: 24, Env: []string{"A=1", "B="}, User: "app:app", Workdir: "/app"}},
		{Op: OpRead, Path: "/etc/hosts"},
		{Op: OpWrite, Path: "/"},
	}
	for _, r := range ok {
		if err := r.Validate(); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
	bad := map[string]Request{
		"argv: empty":         {Op: OpExec},
		"argv[1]: contains":   {Op: OpExec, ExecRequest: ExecRequest{Argv: []string{"a", "b\x00"}}},
		"env[0]: not NAME":    {Op: OpExec, ExecRequest: ExecRequest{Argv: []string{"a"}, Env: []string{"1A=x"}}},
		"workdir: path":       {Op: OpExec, ExecRequest: ExecRequest{Argv: []string{"a"}, Workdir: "rel"}},
		"only with tty":       {Op: OpExec, ExecRequest: ExecRequest{Argv: []string{"a"}, Cols: 80}},
		"window size":         {Op: OpExec, ExecRequest: ExecRequest{Argv: []string{"a"}, TTY: true, Cols: -1}},
		"path \"x\": not abs": {Op: OpRead, Path: "x"},
		"path: missing":       {Op: OpWrite},
		"is refused":          {Op: OpRead, Path: "/app/../../etc/shadow"},
		"op \"rm\": unknown":  {Op: "rm"},
		"op: missing":         {},
	}
	for want, r := range bad {
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v, want an error with %q", r, err, want)
		}
	}
	for _, s := range []string{"INT", "SIGTERM", "9", "RTMIN+1"} {
		if err := (SignalMsg{Signal: s}).Validate(); err != nil {
			t.Errorf("signal %s: %v", s, err)
		}
	}
	for _, s := range []string{"", "int; rm", strings.Repeat("A", 20)} {
		if err := (SignalMsg{Signal: s}).Validate(); err == nil {
			t.Errorf("signal %q accepted", s)
		}
	}
}

// handshake runs Challenge on one end of a pipe and respond on the other.
func handshake(t *testing.T, guestSecret []byte, respond func(*Encoder, *Decoder) error) (guestErr, hostErr error) {
	t.Helper()
	g, h := net.Pipe()
	defer g.Close()
	defer h.Close()
	done := make(chan error, 1)
	go func() {
		err := Challenge(NewEncoder(g), NewDecoder(g), guestSecret, rand.Reader)
		g.Close()
		done <- err
	}()
	hostErr = respond(NewEncoder(h), NewDecoder(h))
	h.Close()
	return <-done, hostErr
}

func TestAuthAcceptsTheSecretAndRefusesAnythingElse(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, SecretLen)
	gerr, herr := handshake(t, secret, func(e *Encoder, d *Decoder) error { return Respond(e, d, secret) })
	if gerr != nil || herr != nil {
		t.Fatalf("right secret: guest %v, host %v", gerr, herr)
	}

	wrong := bytes.Repeat([]byte{8}, SecretLen)
	gerr, herr = handshake(t, secret, func(e *Encoder, d *Decoder) error { return Respond(e, d, wrong) })
	if !errors.Is(gerr, ErrRefused) || !errors.Is(herr, ErrRefused) {
		t.Fatalf("wrong secret: guest %v, host %v", gerr, herr)
	}

	gerr, herr = handshake(t, nil, func(e *Encoder, d *Decoder) error { return Respond(e, d, secret) })
	if gerr == nil || !errors.Is(herr, ErrRefused) || !strings.Contains(herr.Error(), "no secret yet") {
		t.Fatalf("no secret in the guest: guest %v, host %v", gerr, herr)
	}

	// A capture of a good session: its answer, replayed to a new challenge.
	var oldNonce []byte
	gerr, herr = handshake(t, secret, func(e *Encoder, d *Decoder) error {
		_, n, err := d.Next()
		oldNonce = append([]byte(nil), n...)
		if err != nil {
			return err
		}
		if err := e.Frame(StreamAuth, Answer(secret, oldNonce)); err != nil {
			return err
		}
		_, _, err = d.Next() // the verdict
		return err
	})
	if gerr != nil || herr != nil {
		t.Fatalf("recording: guest %v, host %v", gerr, herr)
	}
	gerr, herr = handshake(t, secret, func(e *Encoder, d *Decoder) error {
		_, n, err := d.Next()
		if err != nil {
			return err
		}
		if bytes.Equal(n, oldNonce) {
			t.Error("the guest sent the same nonce twice")
		}
		if err := e.Frame(StreamAuth, Answer(secret, oldNonce)); err != nil {
			return err
		}
		s, p, err := d.Next()
		if err != nil || s != StreamError || string(p) != RefusedWrong {
			t.Errorf("replayed answer: the guest answered %s %q, %v", s, p, err)
		}
		return nil
	})
	if !errors.Is(gerr, ErrRefused) {
		t.Fatalf("replayed answer: guest %v", gerr)
	}
}

func TestRemoteErrorIsBounded(t *testing.T) {
	e := NewRemoteError(bytes.Repeat([]byte("a"), 10*MaxEcho))
	if len(e.Msg) > MaxEcho+3 {
		t.Errorf("kept %d bytes", len(e.Msg))
	}
	if s := NewRemoteError([]byte("bad\n\x1b[31m")).Error(); strings.ContainsAny(s, "\n\x1b") {
		t.Errorf("control characters reach the host: %q", s)
	}
}
