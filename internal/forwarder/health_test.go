package forwarder

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/health"
	"github.com/mergenhq/mergen/internal/store"
)

// A VM whose health check has not passed since its start is answered with
// 503 and a Retry-After, without a dial; once ready (or without a check)
// its backend answers. Runs without root: the VM has no netns and its
// backend listens on loopback.
func TestForwarderStartingVMIs503WithRetryAfter(t *testing.T) {
	root := t.TempDir()
	port := vmBackend(t, hostNS, "web", nil)
	id := "5a7e0000-0000-4000-8000-000000000001"
	writeMeta(t, root, store.Meta{ID: id, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "web"}})
	f := startForwarder(t, root, nil)
	path := filepath.Join(root, id, "health.json")

	st := health.NewState(time.Now())
	if err := health.Write(path, st); err != nil {
		t.Fatal(err)
	}
	resp, body := rawResponse(t, f, "web.vm.test")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "2" || !strings.Contains(body, "is starting") {
		t.Fatalf("starting VM: %d, Retry-After %q, %q; want 503 with Retry-After 2", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if n := f.metric(t, `mergen_forwarder_errors_total{kind="starting"}`); n != 1 {
		t.Fatalf("starting rejections counted %v, want 1", n)
	}

	st.Record(health.Check{IntervalSeconds: 1, TimeoutSeconds: 1, Retries: 1}, health.Result{At: time.Now(), OK: true})
	if err := health.Write(path, st); err != nil {
		t.Fatal(err)
	}
	if resp, body := rawResponse(t, f, "web.vm.test"); resp.StatusCode != 200 || !strings.Contains(body, "vm=web") {
		t.Fatalf("ready VM: %d %q", resp.StatusCode, body)
	}
	if err := health.Remove(path); err != nil {
		t.Fatal(err)
	}
	if resp, _ := rawResponse(t, f, "web.vm.test"); resp.StatusCode != 200 {
		t.Fatalf("VM without health: %d", resp.StatusCode)
	}
}

// rawResponse does one GET with SNI sni and returns the response with its
// headers and body.
func rawResponse(t *testing.T, f *fixture, sni string) (*http.Response, string) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", f.addr, &tls.Config{ServerName: sni, RootCAs: f.pool})
	if err != nil {
		t.Fatalf("tls dial %s: %v", sni, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni)
	resp, err := http.ReadResponse(bufioReader(conn), nil)
	if err != nil {
		t.Fatalf("read response for %s: %v", sni, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}
