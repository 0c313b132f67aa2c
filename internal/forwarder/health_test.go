package forwarder

import (
	"crypto/tls"
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
	resp, body := f.rawResponse(t, "web.vm.test", &tls.Config{ServerName: "web.vm.test", RootCAs: f.pool})
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
	if resp, body := f.rawResponse(t, "web.vm.test", &tls.Config{ServerName: "web.vm.test", RootCAs: f.pool}); resp.StatusCode != 200 || !strings.Contains(body, "vm=web") {
		t.Fatalf("ready VM: %d %q", resp.StatusCode, body)
	}
	if err := health.Remove(path); err != nil {
		t.Fatal(err)
	}
	if resp, _ := f.rawResponse(t, "web.vm.test", &tls.Config{ServerName: "web.vm.test", RootCAs: f.pool}); resp.StatusCode != 200 {
		t.Fatalf("VM without health: %d", resp.StatusCode)
	}
}
