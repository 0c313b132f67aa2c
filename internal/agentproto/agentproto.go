// Package agentproto is the protocol between the host and mergen-init's
// agent inside a guest: how a VM restored from a snapshot learns which VM
// it now is, how a guest gets an environment too large for its kernel
// command line, and the exec agent's secret.
//
// The channel is a byte stream: a virtio-serial port named SerialName under
// QEMU, a vsock connection to VsockPort under Firecracker. On it the host
// writes one Request as a line of JSON, the guest answers one Response as a
// line of JSON, and so on, one request at a time. Every line is at most
// MaxLine bytes; a longer one is an error, never a reason to buffer more.
// The guest ignores empty lines.
//
// A virtio-serial port is one stream for every host connection in turn, and
// the guest cannot always see where one connection ends: a host that
// leaves and another that connects at once look, from inside, like one
// host. Bytes of the first (half a request, a request it did not wait the
// answer of) then reach the guest before the second's, and the guest's
// answers to them reach the second host. So a request carries an ID, the
// answer carries it back, and Call starts every request with a newline (a
// half line before it becomes a line of its own, answered as an error) and
// skips answers that are not to its request.
//
// The package uses the standard library only, so that the host side and the
// guest side link the same few lines and nothing else of each other.
package agentproto

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// VsockPort is the AF_VSOCK port the guest listens on (any CID).
const VsockPort = 1024

// SerialName is the name of the guest's virtio-serial port
// (/sys/class/virtio-ports/*/name).
const SerialName = "org.mergen.agent"

// MaxLine bounds one message, newline excluded.
const MaxLine = 64 << 10

// Operations.
const (
	OpPing     = "ping"     // answers OK once the agent serves; the host waits with it
	OpIdentity = "identity" // makes the guest the VM that Identity describes
	OpSecret   = "secret"   // gives the guest the VM's exec-agent secret (internal/execproto)
	// OpEnv gives a guest booted with mergen.env_from=agent the VM's
	// extraEnv, too large for its kernel command line (internal/bootparam);
	// it starts its payload once it has it.
	OpEnv = "env"
)

// SecretLen is the length of the VM's exec-agent secret.
const SecretLen = 32

// MinEntropy and MaxEntropy bound Identity.Entropy.
const (
	MinEntropy = 32
	MaxEntropy = 4096
)

// Request is what the host sends.
type Request struct {
	// ID is the host's name for the request (Call picks a random one),
	// at most MaxID bytes; the answer carries it back.
	ID       string    `json:"id,omitempty"`
	Op       string    `json:"op"`
	Identity *Identity `json:"identity,omitempty"`
	// Secret is OpSecret's: the key the exec agent checks every
	// connection's answer with. This channel is the only one the guest
	// takes it from: only the host reaches it.
	Secret []byte `json:"secret,omitempty"`
	// Env is OpEnv's: the VM's extraEnv, whole.
	Env map[string]string `json:"env,omitempty"`
}

// MaxID bounds Request.ID.
const MaxID = 128

// Identity is who a restored guest is from now on.
type Identity struct {
	Hostname string `json:"hostname"`
	Device   string `json:"device"` // the interface Addr goes on; "eth0" when empty
	// Addr is the guest's IPv4 address in CIDR form, e.g. "172.31.0.5/24";
	// empty leaves the network as it is (Device, Gateway and MAC are then
	// checked but not used).
	Addr    string            `json:"addr"`
	Gateway string            `json:"gateway,omitempty"`
	MAC     string            `json:"mac,omitempty"`
	Env     map[string]string `json:"env,omitempty"` // the VM's extraEnv, whole
	// UnixNano is the host's wall clock when sent: a restored guest's clock
	// is the snapshot's.
	UnixNano int64 `json:"unixNano"`
	// Entropy is at least MinEntropy random bytes from the host, so that
	// guests restored from one snapshot do not share a random stream.
	Entropy []byte `json:"entropy"`
	// Secret, when set, replaces the exec agent's secret (the snapshot's
	// VM's); when empty, the guest forgets the snapshot's and waits for
	// OpSecret.
	Secret []byte `json:"secret,omitempty"`
}

// Response is what the guest answers.
type Response struct {
	ID    string `json:"id,omitempty"` // the request's; empty for a line that was no request
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

var (
	// RFC 1123 labels (at most 63 bytes, checked apart); the kernel takes
	// at most 64 bytes (HOST_NAME_MAX).
	// A repetition with a bound ({1,64}) compiles to a copy of its
	// class per repetition, kept for the program's life (20 KB and more
	// per expression): the length is checked apart.
	hostLabelRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$`)
	// What a POSIX shell accepts as a variable name: the guest writes the
	// env as shell assignments.
	envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Validate checks a request before it is sent and when it is received.
func (r Request) Validate() error {
	if len(r.ID) > MaxID {
		return fmt.Errorf("id: %d bytes, at most %d", len(r.ID), MaxID)
	}
	switch r.Op {
	case OpPing:
		return nil
	case OpIdentity:
		if r.Identity == nil {
			return errors.New("identity: missing")
		}
		return r.Identity.Validate()
	case OpSecret:
		if len(r.Secret) != SecretLen {
			return fmt.Errorf("secret: %d bytes, want %d", len(r.Secret), SecretLen)
		}
		return nil
	case OpEnv:
		return validEnv("env", r.Env)
	case "":
		return errors.New("op: missing")
	}
	return fmt.Errorf("op %q: unknown (want %s, %s, %s or %s)", r.Op, OpPing, OpIdentity, OpSecret, OpEnv)
}

// Validate reports the first field of id that the guest could not apply,
// naming it.
func (id Identity) Validate() error {
	if err := validHostname(id.Hostname); err != nil {
		return err
	}
	if id.Device != "" && (len(id.Device) > 15 || strings.ContainsAny(id.Device, "/: \t\n\x00")) {
		return fmt.Errorf("identity: device %q is not an interface name", id.Device)
	}
	if id.Addr != "" {
		ip, _, err := net.ParseCIDR(id.Addr)
		if err != nil || ip.To4() == nil {
			return fmt.Errorf("identity: addr %q is not an IPv4 address in CIDR form (a.b.c.d/n)", id.Addr)
		}
	}
	if id.Gateway != "" {
		if ip := net.ParseIP(id.Gateway); ip == nil || ip.To4() == nil {
			return fmt.Errorf("identity: gateway %q is not an IPv4 address", id.Gateway)
		}
	}
	if id.MAC != "" {
		mac, err := net.ParseMAC(id.MAC)
		switch {
		case err != nil || len(mac) != 6:
			return fmt.Errorf("identity: mac %q is not an Ethernet address (aa:bb:cc:dd:ee:ff)", id.MAC)
		case mac[0]&1 != 0:
			return fmt.Errorf("identity: mac %q is a multicast address", id.MAC)
		case bytes.Equal(mac, make([]byte, 6)):
			return fmt.Errorf("identity: mac %q is all zeros", id.MAC)
		}
	}
	if err := validEnv("identity: env", id.Env); err != nil {
		return err
	}
	if id.UnixNano <= 0 {
		return errors.New("identity: unixNano: missing (the host's wall clock in nanoseconds since 1970)")
	}
	if n := len(id.Entropy); n < MinEntropy || n > MaxEntropy {
		return fmt.Errorf("identity: entropy: %d bytes, want %d to %d", n, MinEntropy, MaxEntropy)
	}
	if n := len(id.Secret); n != 0 && n != SecretLen {
		return fmt.Errorf("identity: secret: %d bytes, want %d", n, SecretLen)
	}
	return nil
}

func validHostname(h string) error {
	if h == "" {
		return errors.New("identity: hostname: missing")
	}
	if len(h) > 64 {
		return fmt.Errorf("identity: hostname %q: longer than 64 bytes", h)
	}
	for _, l := range strings.Split(h, ".") {
		if len(l) > 63 || !hostLabelRe.MatchString(l) {
			return fmt.Errorf("identity: hostname %q: want dot-separated labels of letters, digits and '-'", h)
		}
	}
	return nil
}

// validEnv reports the first variable of env the guest could not write as
// a shell assignment, naming it under field.
func validEnv(field string, env map[string]string) error {
	for _, k := range sortedKeys(env) {
		if !envKeyRe.MatchString(k) {
			return fmt.Errorf("%s: %q is not a variable name ([A-Za-z_][A-Za-z0-9_]*)", field, k)
		}
		if strings.ContainsRune(env[k], 0) {
			return fmt.Errorf("%s.%s: value contains NUL", field, k)
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ErrLineTooLong is returned by ReadLine for a line over MaxLine bytes.
var ErrLineTooLong = fmt.Errorf("agentproto: line longer than %d bytes", MaxLine)

// ReadLine reads one line from r and returns it without its newline. A line
// longer than MaxLine is read to its end in bounded pieces and thrown away,
// so the stream stays in step, and ReadLine returns ErrLineTooLong. At the
// end of the stream it returns io.EOF, or io.ErrUnexpectedEOF when a line
// was cut short.
func ReadLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(bytes.TrimSuffix(chunk, []byte("\n"))) > MaxLine {
			for err == bufio.ErrBufferFull {
				_, err = r.ReadSlice('\n')
			}
			if err != nil && err != io.EOF {
				return nil, err
			}
			return nil, ErrLineTooLong
		}
		line = append(line, chunk...)
		switch err {
		case nil:
			return bytes.TrimSuffix(line[:len(line)-1], []byte("\r")), nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			if len(line) > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, io.EOF
		default:
			return nil, err
		}
	}
}

// WriteLine writes v as one line of JSON in a single Write.
func WriteLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > MaxLine {
		return ErrLineTooLong
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ErrRefused is wrapped by Call's error when the guest answered but did not
// do what was asked.
var ErrRefused = errors.New("refused by the guest")

// maxEcho bounds how much of the guest's error text Call puts in its error.
const maxEcho = 256

// maxSkipped bounds the answers to other requests Call passes over.
const maxSkipped = 64

// Call sends req on conn and reads the guest's answer to it, passing over
// answers to other requests (see the package comment); req.ID is set to a
// random one when empty. ctx bounds both: its deadline becomes conn's, and
// cancelling it interrupts the exchange. The error names the operation; it
// wraps ctx's error when ctx ended the call and ErrRefused when the guest
// answered not OK, quoting the guest's reason (escaped and cut to a few
// hundred bytes: the guest is not trusted to write the host's logs). After
// any other error the stream's state is unknown: close conn. Only one Call
// may be in flight on a connection.
func Call(ctx context.Context, conn net.Conn, req Request) (Response, error) {
	fail := func(err error) (Response, error) {
		if ctx.Err() != nil {
			err = ctx.Err()
		} else if d, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
			// conn's deadline (ctx's) passed a moment before ctx noticed.
			err = context.DeadlineExceeded
		}
		return Response{}, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	if req.ID == "" {
		var b [12]byte
		if _, err := rand.Read(b[:]); err != nil {
			return Response{}, fmt.Errorf("agent %s: request id: %w", req.Op, err)
		}
		req.ID = hex.EncodeToString(b[:])
	}
	if err := req.Validate(); err != nil {
		return Response{}, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if d, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(d); err != nil {
			return fail(err)
		}
	}
	// A deadline in the past wakes a read or write blocked on conn.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if stop() {
			conn.SetDeadline(time.Time{})
		}
	}()
	b, err := json.Marshal(req)
	if err != nil {
		return fail(err)
	}
	// The leading newline ends whatever half line is ahead of the request.
	if _, err := conn.Write(append(append([]byte{'\n'}, b...), '\n')); err != nil {
		return fail(err)
	}
	// The guest writes nothing but answers, and none to a later request
	// before that request is sent: this reader cannot take bytes that belong
	// to a later call.
	r := bufio.NewReaderSize(conn, 4096)
	for range maxSkipped + 1 {
		line, err := ReadLine(r)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return fail(err)
		}
		var resp Response
		if err := json.Unmarshal(line, &resp); err != nil {
			return fail(fmt.Errorf("answer is not a JSON response: %w", err))
		}
		if resp.ID != req.ID {
			continue // to a request of an earlier connection, or to a half line
		}
		if !resp.OK {
			msg := resp.Error
			if len(msg) > maxEcho {
				msg = msg[:maxEcho] + "..."
			}
			return resp, fmt.Errorf("agent %s: %w: %q", req.Op, ErrRefused, msg)
		}
		return resp, nil
	}
	return fail(fmt.Errorf("more than %d answers to other requests", maxSkipped))
}

// Handler answers one valid request.
type Handler func(Request) Response

// Serve answers requests on rw until the stream ends between two requests
// (it then returns nil) or fails, mid-request included. Empty lines are
// skipped. A line that is too long, not JSON or not a valid request gets an
// error answer (with the request's ID when it has one), and Serve goes on
// with the next line; only valid requests reach h.
func Serve(rw io.ReadWriter, h Handler) error {
	r := bufio.NewReaderSize(rw, 4096)
	for {
		line, err := ReadLine(r)
		var resp Response
		switch {
		case err == io.EOF:
			return nil
		case err == ErrLineTooLong:
			resp.Error = err.Error()
		case err != nil:
			return fmt.Errorf("read request: %w", err)
		case len(bytes.TrimSpace(line)) == 0:
			continue
		default:
			var req Request
			if err := json.Unmarshal(line, &req); err != nil {
				resp.Error = fmt.Sprintf("request is not JSON: %v", err)
			} else if err := req.Validate(); err != nil {
				resp.Error = err.Error()
			} else {
				resp = h(req)
			}
			if len(req.ID) <= MaxID {
				resp.ID = req.ID
			}
		}
		if err := WriteLine(rw, resp); err != nil {
			return fmt.Errorf("write response: %w", err)
		}
	}
}
