package forwarder

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mergenhq/mergen/internal/certs"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
)

// These tests run real TLS clients against a forwarder on 127.0.0.1 and
// real backends listening on 127.0.0.1: in the test's own namespace for
// what does not depend on namespaces (VMs without a netns, the bridge mode
// the resolver also serves; runs without root), inside network namespaces
// the test creates for the dial into a VM's namespace (root). A forwarder
// that dialled in the wrong namespace would find nothing (or the other
// VM's backend), never a remote host.

const netnsRoot = "/run/netns"

// hostNS is the test's own namespace, for backends and VMs without a netns.
const hostNS = ""

var nsSeq atomic.Int32

// newNetns creates a namespace with loopback up and removes it at cleanup.
// It needs root.
func newNetns(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	name := fmt.Sprintf("fwdtest-%d-%d", os.Getpid(), nsSeq.Add(1))
	ip := testenv.Tool(t, "ip")
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() { exec.Command(ip, "netns", "del", name).Run() })
	if out, err := exec.Command(ip, "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v\n%s", name, err, out)
	}
	return name
}

// listen opens a TCP listener on addr, a loopback address, in the test's
// own namespace when ns is hostNS, else inside namespace ns.
func listen(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	if ip := net.ParseIP(strings.Split(addr, ":")[0]); ip == nil || !ip.IsLoopback() {
		t.Fatalf("test backends listen on loopback only, not %s", addr)
	}
	if ns == hostNS {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(filepath.Join(netnsRoot, ns))
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	ln, lerr := net.Listen("tcp", addr)
	if err := netns.Set(orig); err != nil {
		panic("cannot return to the test's namespace: " + err.Error())
	}
	if lerr != nil {
		t.Fatal(lerr)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func portOf(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// serveTCP serves raw TCP on ln: serve runs for each connection, which is
// closed when serve returns.
func serveTCP(ln net.Listener, serve func(net.Conn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
}

// tcpBackend serves raw TCP on 127.0.0.1 in namespace ns (see serveTCP).
func tcpBackend(t *testing.T, ns string, serve func(net.Conn)) (port int) {
	t.Helper()
	ln := listen(t, ns, "127.0.0.1:0")
	serveTCP(ln, serve)
	return portOf(ln)
}

// serveVM serves HTTP on ln and answers with name, so a test can tell
// which VM it reached.
func serveVM(t *testing.T, ln net.Listener, name string, extra http.Handler) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "vm=%s path=%s", name, r.URL.Path)
	})
	if extra != nil {
		mux.Handle("/x/", extra)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// vmBackend serves a VM's HTTP on 127.0.0.1 in namespace ns (see serveVM).
func vmBackend(t *testing.T, ns, name string, extra http.Handler) (port int) {
	t.Helper()
	ln := listen(t, ns, "127.0.0.1:0")
	serveVM(t, ln, name, extra)
	return portOf(ln)
}

// closedPort is a loopback port of the test's namespace nobody listens on.
func closedPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return portOf(ln)
}

type fixture struct {
	addr     string
	root     string
	certPath string
	keyPath  string
	pool     *x509.CertPool
	srv      *Server
	cancel   context.CancelFunc
	done     chan error
}

func testCert(t *testing.T, dir string, overwrite bool) (certPath, keyPath string, pair certs.Pair) {
	t.Helper()
	pair, err := certs.Wildcard(certs.Options{Domain: "vm.test"})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err = certs.WriteFiles(dir, "vm.test", pair, overwrite)
	if err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, pair
}

func startForwarder(t *testing.T, root string, tweak func(*config.Forwarder)) *fixture {
	t.Helper()
	return startForwarderLog(t, root, discard(), tweak)
}

// startForwarderLog is startForwarder with the forwarder logging to log.
func startForwarderLog(t *testing.T, root string, log *slog.Logger, tweak func(*config.Forwarder)) *fixture {
	t.Helper()
	certDir := t.TempDir()
	certPath, keyPath, pair := testCert(t, certDir, false)
	cfg := config.Forwarder{
		ConfigRoot: root, NetnsRoot: netnsRoot, CertFile: certPath, KeyFile: keyPath, DomainPrefix: "vm", DomainSuffix: "test",
		DialTimeout: 2 * time.Second, ResolverTTL: time.Hour, ShutdownTimeout: 10 * time.Second,
		HandshakeTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second, LabelTags: labelTags,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pair.CertPEM)
	ctx, cancel := context.WithCancel(context.Background())
	f := &fixture{addr: ln.Addr().String(), root: root, certPath: certPath, keyPath: keyPath, pool: pool, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { f.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-f.done
	})
	return f
}

// client always connects to the forwarder, whatever the URL's host, and
// verifies the forwarder's certificate for that host.
func (f *fixture) client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: f.pool},
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", f.addr)
			},
		},
	}
}

// rawRequest does one GET over a TLS connection with the given SNI
// (empty: none) without verifying the certificate, for names the
// certificate does not cover.
func (f *fixture) rawRequest(t *testing.T, sni string) (int, string) {
	t.Helper()
	resp, body := f.rawResponse(t, sni, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	return resp.StatusCode, body
}

// rawResponse does one GET over a TLS connection made with conf and
// returns the response, headers included, and its body.
func (f *fixture) rawResponse(t *testing.T, sni string, conf *tls.Config) (*http.Response, string) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", f.addr, conf)
	if err != nil {
		t.Fatalf("tls dial with SNI %q: %v", sni, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", sni)
	resp, err := http.ReadResponse(bufioReader(conn), nil)
	if err != nil {
		t.Fatalf("read response for SNI %q: %v", sni, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// metric is the value of one sample in the forwarder's metrics, e.g.
// `mergen_forwarder_cert_reloads_total{result="ok"}`; 0 when absent.
func (f *fixture) metric(t *testing.T, sample string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	f.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return n
		}
	}
	return 0
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// Labels route to the VM they name; what cannot be served is answered
// with the status that says why. The VMs have no netns (bridge mode): the
// dial into a VM's namespace is TestForwarderDialsInTheVMNamespace's.
func TestForwarderRoutes(t *testing.T) {
	root := t.TempDir()
	portA := vmBackend(t, hostNS, "A", nil)
	portB := vmBackend(t, hostNS, "B", nil)
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: portA, Tags: map[string]string{"app": "shop"}})
	writeMeta(t, root, store.Meta{ID: idC, GuestIP: "127.0.0.1", HTTPPort: portB, Tags: map[string]string{"app": "api", "name": "Api-Main"}})
	writeMeta(t, root, store.Meta{ID: idD, GuestIP: "127.0.0.1", HTTPPort: portB, Tags: map[string]string{"app": "api"}})
	writeMeta(t, root, store.Meta{ID: idE, GuestIP: "127.0.0.1", Tags: map[string]string{"app": "noport"}})
	writeMeta(t, root, store.Meta{ID: "f0f0f0f0-0000-4000-8000-000000000004", GuestIP: "127.0.0.1", HTTPPort: closedPort(t), Tags: map[string]string{"app": "down"}})
	writeMeta(t, root, store.Meta{ID: "f1f1f1f1-0000-4000-8000-000000000005", GuestIP: "127.0.0.1", HTTPPort: portA, Netns: "../x", Tags: map[string]string{"app": "escape"}})

	f := startForwarder(t, root, nil)
	c := f.client()
	cases := []struct {
		name   string
		host   string
		status int
		body   string
	}{
		{"full id", idA + ".vm.test", 200, "vm=A path=/p"},
		{"short id", "c0ffee00.vm.test", 200, "vm=B path=/p"},
		{"tag app", "shop.vm.test", 200, "vm=A path=/p"},
		{"tag name, upper case", "API-MAIN.vm.test", 200, "vm=B path=/p"},
		{"ambiguous tag", "api.vm.test", 409, "matches 2 VMs by tag value: " + idC + ", " + idD},
		{"unknown label", "nope.vm.test", 404, `no VM answers to "nope"`},
		{"no httpPort", "noport.vm.test", 502, "no usable httpPort"},
		{"backend down", "down.vm.test", 502, "does not answer"},
		{"netns outside the root", "escape.vm.test", 502, "not a plain name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := get(t, c, "https://"+tc.host+"/p")
			if status != tc.status || !strings.Contains(body, tc.body) {
				t.Errorf("GET %s = %d %q; want %d containing %q", tc.host, status, body, tc.status, tc.body)
			}
		})
	}

	misdirected := []struct{ name, sni, body string }{
		{"no SNI", "", "no server name"},
		{"other domain", "shop.example.org", "not under"},
		{"nested label", "a.shop.vm.test", "single DNS label"},
		{"odd characters", "sh_op.vm.test", "invalid label"},
		{"huge label", strings.Repeat("a", 200) + ".vm.test", "invalid label"},
	}
	for _, tc := range misdirected {
		t.Run(tc.name, func(t *testing.T) {
			status, body := f.rawRequest(t, tc.sni)
			if status != http.StatusMisdirectedRequest || !strings.Contains(body, tc.body) {
				t.Errorf("SNI %q = %d %q; want 421 containing %q", tc.sni, status, body, tc.body)
			}
		})
	}

	t.Run("metrics", func(t *testing.T) {
		rec := httptest.NewRecorder()
		f.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for _, want := range []string{
			`mergen_forwarder_errors_total{kind="not_found"} 1`,
			`mergen_forwarder_errors_total{kind="ambiguous"} 1`,
			`mergen_forwarder_errors_total{kind="no_sni"} 1`,
			`mergen_forwarder_connections_total{result="proxied"} 4`,
			`mergen_forwarder_dial_seconds_count`,
		} {
			if !strings.Contains(rec.Body.String(), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}

// A VM with a netns is dialled inside that namespace: two VMs listen on the
// same address, 127.0.0.1 and one port, each in its own namespace, and
// each label reaches its own VM; a VM whose namespace has nothing on its
// port, or whose namespace does not exist, is unreachable (502).
func TestForwarderDialsInTheVMNamespace(t *testing.T) {
	nsA, nsB := newNetns(t), newNetns(t)
	lnA := listen(t, nsA, "127.0.0.1:0")
	port := portOf(lnA)
	lnB := listen(t, nsB, fmt.Sprintf("127.0.0.1:%d", port))
	serveVM(t, lnA, "A", nil)
	serveVM(t, lnB, "B", nil)
	portOnlyB := portOf(listen(t, nsB, "127.0.0.1:0"))

	root := t.TempDir()
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Netns: nsA, Tags: map[string]string{"app": "a"}})
	writeMeta(t, root, store.Meta{ID: idC, GuestIP: "127.0.0.1", HTTPPort: port, Netns: nsB, Tags: map[string]string{"app": "b"}})
	writeMeta(t, root, store.Meta{ID: idD, GuestIP: "127.0.0.1", HTTPPort: portOnlyB, Netns: nsA, Tags: map[string]string{"app": "down"}})
	writeMeta(t, root, store.Meta{ID: idE, GuestIP: "127.0.0.1", HTTPPort: port, Netns: "fwdtest-absent", Tags: map[string]string{"app": "nons"}})

	f := startForwarder(t, root, nil)
	c := f.client()
	for _, tc := range []struct {
		host   string
		status int
		body   string
	}{
		{"a.vm.test", 200, "vm=A path=/p"},
		{"b.vm.test", 200, "vm=B path=/p"},
		{"down.vm.test", 502, "does not answer"},
		{"nons.vm.test", 502, "does not answer"},
		{"a.vm.test", 200, "vm=A path=/p"}, // after the failures, dials still start from the right namespace
	} {
		status, body := get(t, c, "https://"+tc.host+"/p")
		if status != tc.status || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s = %d %q; want %d containing %q", tc.host, status, body, tc.status, tc.body)
		}
	}
}

// The client half-closes after its request; the backend reads to EOF and
// only then answers: the answer must still arrive.
func TestForwarderHalfClose(t *testing.T) {
	root := t.TempDir()
	port := tcpBackend(t, hostNS, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		in, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(in))
	})
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "echo"}})
	f := startForwarder(t, root, nil)

	conn, err := tls.Dial("tcp", f.addr, &tls.Config{ServerName: "echo.vm.test", RootCAs: f.pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	payload := strings.Repeat("half-close ", 10000)
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != strings.ToUpper(payload) {
		t.Fatalf("echo after half-close: got %d bytes, want %d", len(got), len(payload))
	}
}

// Stalled peers cost a bounded time and do not disturb other connections:
// a client that never speaks is dropped after the handshake timeout, a
// backend that accepts and never answers after the idle timeout.
func TestForwarderStalledPeers(t *testing.T) {
	root := t.TempDir()
	silent := listen(t, hostNS, "127.0.0.1:0")
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	portOK := vmBackend(t, hostNS, "ok", nil)
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: portOf(silent), Tags: map[string]string{"app": "silent"}})
	writeMeta(t, root, store.Meta{ID: idC, GuestIP: "127.0.0.1", HTTPPort: portOK, Tags: map[string]string{"app": "ok"}})
	f := startForwarder(t, root, func(c *config.Forwarder) {
		c.HandshakeTimeout = time.Second
		c.IdleTimeout = time.Second
	})

	mute, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()

	c := f.client()
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Get("https://silent.vm.test/")
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("got a response %s from a backend that never answers", resp.Status)
		}
		errc <- err
	}()

	if status, body := get(t, c, "https://ok.vm.test/"); status != 200 || body != "vm=ok path=/" {
		t.Errorf("healthy VM while others stall: %d %q", status, body)
	}

	mute.SetDeadline(time.Now().Add(10 * time.Second))
	if n, err := mute.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("silent client: read = %d, %v; want EOF (closed by the forwarder)", n, err)
	}
	if err := <-errc; err == nil || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Client.Timeout") {
		t.Errorf("request to a never-answering backend: %v; want the forwarder to close it", err)
	}
}

// Replaced files are served without a restart; a broken pair keeps the
// good certificate in service. The files are checked at most once a second
// during handshakes, so the test handshakes until the forwarder shows it
// checked: the new certificate served, then a failed reload counted.
func TestForwarderCertReload(t *testing.T) {
	root := t.TempDir()
	port := vmBackend(t, hostNS, "A", nil)
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "shop"}})
	f := startForwarder(t, root, nil)

	serial := func() string {
		conn, err := tls.Dial("tcp", f.addr, &tls.Config{ServerName: "shop.vm.test", InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	const failed = `mergen_forwarder_cert_reloads_total{result="failed"}`
	before := serial()
	_, _, pair := testCert(t, filepath.Dir(f.certPath), true)
	newCert, err := pemCert(pair.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	want := newCert.SerialNumber.String()
	if want == before {
		t.Fatal("the replacement certificate has the old serial")
	}
	testenv.Eventually(t, 10*time.Second, "the forwarder to serve the replaced certificate", func() bool { return serial() == want })
	if n := f.metric(t, `mergen_forwarder_cert_reloads_total{result="ok"}`); n < 1 {
		t.Errorf("new certificate served, but %v successful reloads counted", n)
	}

	// A broken pair keeps the good certificate in service. (The key may
	// have been seen without its certificate during the replacement: count
	// from here.)
	failedBefore := f.metric(t, failed)
	if err := os.WriteFile(f.keyPath, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the forwarder to try the broken pair", func() bool {
		if got := serial(); got != want {
			t.Fatalf("with a broken key the forwarder serves %s, want the last good %s", got, want)
		}
		return f.metric(t, failed) > failedBefore
	})
	if got := serial(); got != want {
		t.Fatalf("after a broken key the forwarder serves %s, want the last good %s", got, want)
	}
}

func pemCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pemDecode(b)
	return x509.ParseCertificate(blk)
}

// Shutdown stops accepting at once, lets a request in flight finish, and
// closes what is still open when the shutdown timeout expires.
func TestForwarderShutdown(t *testing.T) {
	for _, tc := range []struct {
		name       string
		release    bool // let the slow request finish during shutdown
		wantFinish bool
	}{
		{"drains in-flight request", true, true},
		{"closes after timeout", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			entered := make(chan struct{}, 1)
			release := make(chan struct{})
			slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				entered <- struct{}{}
				select {
				case <-release:
				case <-r.Context().Done():
				case <-time.After(20 * time.Second):
				}
				io.WriteString(w, "finished")
			})
			port := vmBackend(t, hostNS, "A", slow)
			writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "slow"}})
			f := startForwarder(t, root, func(c *config.Forwarder) {
				// Generous when the request is released, so a slow machine
				// cannot turn the drain into a forced close.
				c.ShutdownTimeout = 10 * time.Second
				if !tc.release {
					c.ShutdownTimeout = 200 * time.Millisecond
				}
			})

			type result struct {
				body string
				err  error
			}
			resc := make(chan result, 1)
			go func() {
				resp, err := f.client().Get("https://slow.vm.test/x/slow")
				if err != nil {
					resc <- result{err: err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				resc <- result{string(b), err}
			}()
			<-entered
			f.cancel()
			// The listener closes promptly: new connections are refused.
			var refused bool
			for range 100 {
				c, err := net.Dial("tcp", f.addr)
				if err != nil {
					refused = true
					break
				}
				c.Close()
				time.Sleep(20 * time.Millisecond)
			}
			if !refused {
				t.Error("forwarder still accepts connections after shutdown began")
			}
			if tc.release {
				close(release)
			}
			if err := <-f.done; err != nil {
				t.Errorf("Serve returned %v", err)
			}
			f.done <- nil // for the cleanup
			r := <-resc
			if tc.wantFinish && (r.err != nil || r.body != "finished") {
				t.Errorf("in-flight request during graceful shutdown: %q, %v; want it finished", r.body, r.err)
			}
			if !tc.wantFinish && r.err == nil {
				t.Errorf("request still open at shutdown timeout got %q; want the connection closed", r.body)
			}
			if !tc.release {
				close(release)
			}
		})
	}
}
