package agentproto

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func validIdentity() Identity {
	return Identity{Hostname: "vm-1", Device: "eth0", Addr: "172.31.0.5/24", Gateway: "172.31.0.1",
		MAC: "06:00:ac:1f:00:05", Env: map[string]string{"A": "1"}, UnixNano: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		Entropy: bytes.Repeat([]byte{7}, MinEntropy)}
}

func TestIdentityValidateNamesTheBadField(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*Identity)
		want string // "" = valid
	}{
		{"valid", func(*Identity) {}, ""},
		{"network left alone", func(id *Identity) { id.Addr, id.Gateway, id.MAC, id.Device = "", "", "", "" }, ""},
		{"fqdn", func(id *Identity) { id.Hostname = "web-1.example.internal" }, ""},
		{"no hostname", func(id *Identity) { id.Hostname = "" }, "hostname: missing"},
		{"hostname with space", func(id *Identity) { id.Hostname = "a b" }, `hostname "a b"`},
		{"hostname with newline", func(id *Identity) { id.Hostname = "a\n127.0.0.1 evil" }, "hostname"},
		{"hostname too long", func(id *Identity) { id.Hostname = strings.Repeat("a.", 40) + "a" }, "longer than 64"},
		{"label of 63 bytes", func(id *Identity) { id.Hostname = strings.Repeat("a", 63) }, ""},
		{"label of 64 bytes", func(id *Identity) { id.Hostname = strings.Repeat("a", 64) }, "want dot-separated labels"},
		{"device with slash", func(id *Identity) { id.Device = "../eth0" }, "device"},
		{"addr without prefix", func(id *Identity) { id.Addr = "172.31.0.5" }, `addr "172.31.0.5" is not an IPv4 address in CIDR form`},
		{"addr bad octet", func(id *Identity) { id.Addr = "172.31.0.300/24" }, "addr"},
		{"addr IPv6", func(id *Identity) { id.Addr = "fd00::5/64" }, "addr"},
		{"bad gateway", func(id *Identity) { id.Gateway = "gw" }, `gateway "gw"`},
		{"gateway and mac without addr: unused", func(id *Identity) { id.Addr = "" }, ""},
		{"bad gateway without addr", func(id *Identity) { id.Addr, id.Gateway = "", "300.1.1.1" }, "gateway"},
		{"bad mac", func(id *Identity) { id.MAC = "06:00:ac:1f:00" }, `mac "06:00:ac:1f:00" is not an Ethernet address`},
		{"mac not hex", func(id *Identity) { id.MAC = "zz:00:ac:1f:00:05" }, "mac"},
		{"multicast mac", func(id *Identity) { id.MAC = "01:00:5e:00:00:01" }, "multicast"},
		{"zero mac", func(id *Identity) { id.MAC = "00:00:00:00:00:00" }, "all zeros"},
		{"env key not a shell name", func(id *Identity) { id.Env = map[string]string{"A-B": "1"} }, `env: "A-B" is not a variable name`},
		{"env key empty", func(id *Identity) { id.Env = map[string]string{"": "1"} }, "env"},
		{"env value with NUL", func(id *Identity) { id.Env = map[string]string{"A": "x\x00y"} }, "env.A: value contains NUL"},
		{"env value with quote and newline", func(id *Identity) { id.Env = map[string]string{"A": "it's\nfine"} }, ""},
		{"no clock", func(id *Identity) { id.UnixNano = 0 }, "unixNano: missing"},
		{"short entropy", func(id *Identity) { id.Entropy = id.Entropy[:MinEntropy-1] }, "entropy: 31 bytes, want 32 to 4096"},
		{"no entropy", func(id *Identity) { id.Entropy = nil }, "entropy: 0 bytes"},
		{"too much entropy", func(id *Identity) { id.Entropy = make([]byte, MaxEntropy+1) }, "entropy"},
		{"secret", func(id *Identity) { id.Secret = make([]byte, SecretLen) }, ""},
		{"short secret", func(id *Identity) { id.Secret = make([]byte, SecretLen-1) }, "secret: 31 bytes, want 32"},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := validIdentity()
			c.edit(&id)
			err := id.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestRequestValidate(t *testing.T) {
	id := validIdentity()
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{Op: OpPing}, ""},
		{Request{Op: OpIdentity, Identity: &id}, ""},
		{Request{Op: OpIdentity}, "identity: missing"},
		{Request{}, "op: missing"},
		{Request{Op: "reboot"}, `op "reboot": unknown`},
		{Request{Op: OpSecret, Secret: make([]byte, SecretLen)}, ""},
		{Request{Op: OpSecret}, "secret: 0 bytes, want 32"},
		{Request{Op: OpSecret, Secret: make([]byte, 64)}, "secret: 64 bytes"},
	} {
		err := c.req.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: Validate = %v, want %q", c.req, err, c.want)
		}
	}
}

func TestReadLineIsBounded(t *testing.T) {
	max := strings.Repeat("a", MaxLine)
	in := "first\r\n" + max + "\n" + max + "b\n" + strings.Repeat("c", 3*MaxLine) + "\nafter\ncut"
	r := bufio.NewReaderSize(strings.NewReader(in), 4096)
	for i, want := range []struct {
		line string
		err  error
	}{
		{"first", nil},
		{max, nil}, // exactly MaxLine is allowed
		{"", ErrLineTooLong},
		{"", ErrLineTooLong},
		{"after", nil}, // the stream is still in step
		{"", io.ErrUnexpectedEOF},
		{"", io.EOF},
	} {
		got, err := ReadLine(r)
		if err != want.err || string(got) != want.line {
			t.Fatalf("line %d: got %d bytes, %v; want %d bytes, %v", i, len(got), err, len(want.line), want.err)
		}
	}
}

// pipe connects a Call to a Serve running h, over net.Pipe.
func pipe(t *testing.T, h Handler) net.Conn {
	t.Helper()
	host, guest := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(guest, h); guest.Close() }()
	t.Cleanup(func() {
		host.Close()
		if err := <-done; err != nil && !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("Serve: %v", err)
		}
	})
	return host
}

func TestCallAndServe(t *testing.T) {
	var got []Request
	conn := pipe(t, func(r Request) Response {
		got = append(got, r)
		if r.Op == OpIdentity && r.Identity.Hostname == "refuse-me" {
			return Response{Error: "network: interface eth9: Link not found\n" + strings.Repeat("x", 1000)}
		}
		return Response{OK: true}
	})
	ctx := context.Background()
	if resp, err := Call(ctx, conn, Request{Op: OpPing}); err != nil || !resp.OK {
		t.Fatalf("ping: %+v, %v", resp, err)
	}
	id := validIdentity()
	if _, err := Call(ctx, conn, Request{Op: OpIdentity, Identity: &id}); err != nil {
		t.Fatalf("identity: %v", err)
	}
	if len(got) != 2 || got[1].Identity == nil || !bytes.Equal(got[1].Identity.Entropy, id.Entropy) || got[1].Identity.Env["A"] != "1" {
		t.Fatalf("the guest received %+v", got)
	}

	// A refusal carries the guest's reason, escaped and cut short.
	id.Hostname = "refuse-me"
	resp, err := Call(ctx, conn, Request{Op: OpIdentity, Identity: &id})
	if !errors.Is(err, ErrRefused) || resp.OK || !strings.Contains(err.Error(), `"network: interface eth9: Link not found\nxxx`) {
		t.Fatalf("refused identity: %+v, %v", resp, err)
	}
	if strings.Contains(err.Error(), "\n") || len(err.Error()) > 400 {
		t.Errorf("the error echoes the guest's text unbounded or unescaped: %q", err)
	}

	// An invalid request is refused before anything is sent.
	bad := validIdentity()
	bad.Entropy = nil
	if _, err := Call(ctx, conn, Request{Op: OpIdentity, Identity: &bad}); err == nil || !strings.Contains(err.Error(), "agent identity: identity: entropy") {
		t.Fatalf("invalid identity: %v", err)
	}
	if len(got) != 3 {
		t.Fatalf("the guest received %d requests, want 3", len(got))
	}
	// The connection is still usable after all of that.
	if _, err := Call(ctx, conn, Request{Op: OpPing}); err != nil {
		t.Fatalf("ping after: %v", err)
	}
}

func TestServeAnswersBadLinesAndGoesOn(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	go func() { Serve(guest, func(Request) Response { return Response{OK: true} }); guest.Close() }()
	r := bufio.NewReader(host)
	for _, c := range []struct{ send, want string }{
		{"not json\n", `"error":"request is not JSON`},
		{`{"op":"format-disk"}` + "\n", `op \"format-disk\": unknown`},
		{`{"op":"identity","identity":{"hostname":"h","unixNano":1,"entropy":"AAAA"}}` + "\n", "entropy: 3 bytes"},
		{strings.Repeat("z", MaxLine+10) + "\n", "line longer than"},
		{`{"op":"ping"}` + "\n", `{"ok":true}`},
	} {
		go host.Write([]byte(c.send))
		line, err := ReadLine(r)
		if err != nil || !strings.Contains(string(line), c.want) {
			t.Fatalf("sent %.40q: got %q, %v; want %q", c.send, line, err, c.want)
		}
	}
}

func TestCallHonoursContext(t *testing.T) {
	// A guest that reads the request and never answers.
	host, guest := net.Pipe()
	defer host.Close()
	go func() { bufio.NewReader(guest).ReadString('\n'); select {} }()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Call(ctx, host, Request{Op: OpPing}); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "agent ping") {
		t.Fatalf("deadline: %v, want context.DeadlineExceeded", err)
	}

	// Cancelling interrupts a call blocked on a guest that does not even read.
	host2, guest2 := net.Pipe()
	defer host2.Close()
	defer guest2.Close()
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := Call(ctx2, host2, Request{Op: OpPing}); errc <- err }()
	cancel2()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: %v, want context.Canceled", err)
	}

	// An answer that is not a response is an error, not a silent OK.
	host3, guest3 := net.Pipe()
	defer host3.Close()
	go func() { bufio.NewReader(guest3).ReadString('\n'); guest3.Write([]byte("[1,2]\n")); guest3.Close() }()
	if _, err := Call(context.Background(), host3, Request{Op: OpPing}); err == nil || !strings.Contains(err.Error(), "not a JSON response") {
		t.Fatalf("garbage answer: %v", err)
	}
	// A guest that hangs up mid-answer.
	host4, guest4 := net.Pipe()
	defer host4.Close()
	go func() { bufio.NewReader(guest4).ReadString('\n'); guest4.Write([]byte(`{"ok":tr`)); guest4.Close() }()
	if _, err := Call(context.Background(), host4, Request{Op: OpPing}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut answer: %v", err)
	}
}

// unixPair is a connected pair of unix stream sockets: buffered like the
// real channels, unlike net.Pipe.
func unixPair(t *testing.T) (host, guest net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	host, err = net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	guest, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close(); guest.Close() })
	return host, guest
}

// What an earlier host left in a virtio-serial port (a request it did not
// wait the answer of, half a request) reaches the guest ahead of the next
// host's request: Call gets the answer to its own all the same.
func TestCallPassesOverWhatAnEarlierHostLeft(t *testing.T) {
	host, guest := unixPair(t)
	var mu sync.Mutex
	var seen []string
	go Serve(guest, func(r Request) Response {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, r.ID)
		return Response{OK: true}
	})
	// The earlier host's leftovers, written before this host's request.
	host.Write([]byte(`{"id":"earlier","op":"ping"}` + "\n\n" + `{"op":"identity","identity":{"hostn`))
	resp, err := Call(context.Background(), host, Request{ID: "mine", Op: OpPing})
	if err != nil || resp.ID != "mine" || !resp.OK {
		t.Fatalf("Call: %+v, %v", resp, err)
	}
	mu.Lock()
	if len(seen) != 2 || seen[0] != "earlier" || seen[1] != "mine" {
		t.Errorf("the handler saw %q", seen)
	}
	mu.Unlock()
	// A random ID when none is given; the connection stays in step.
	resp, err = Call(context.Background(), host, Request{Op: OpPing})
	if err != nil || len(resp.ID) != 24 || resp.ID == "mine" {
		t.Fatalf("Call without an id: %+v, %v", resp, err)
	}
}

func TestCallGivesUpOnEndlessOtherAnswers(t *testing.T) {
	host, guest := unixPair(t)
	go func() {
		bufio.NewReader(guest).ReadString('\n')
		for range maxSkipped + 1 {
			guest.Write([]byte(`{"id":"someone-else","ok":true}` + "\n"))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Call(ctx, host, Request{Op: OpPing}); err == nil || !strings.Contains(err.Error(), "answers to other requests") {
		t.Fatalf("Call: %v", err)
	}
	long := Request{ID: strings.Repeat("i", MaxID+1), Op: OpPing}
	if err := long.Validate(); err == nil || !strings.Contains(err.Error(), "id: 129 bytes") {
		t.Fatalf("long id: %v", err)
	}
}
