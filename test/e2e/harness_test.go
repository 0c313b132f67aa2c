// Package e2e holds end-to-end tests: they run the real daemon (in process
// or as the built binary) on a loopback port against a temporary root, and,
// for the VM runtime, real service managers, namespaces and QEMU guests.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/auth"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/daemon"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
)

// host is one temporary mergen host: its roots and base assets.
type host struct {
	root string
	env  map[string]string
}

// portWindow is the next host-port range handed to a test host; it starts
// at a random place so that two test processes rarely share one.
var portWindow = 20000 + rand.IntN(39)*500

// newHost lays out a temporary data root with placeholder base assets. The
// control-plane tests never boot them; the runtime tests replace them with
// real ones.
func newHost(t testing.TB, extra map[string]string) *host {
	t.Helper()
	root := t.TempDir()
	// Unix socket paths hold at most 107 bytes: keep the run root short.
	run, err := os.MkdirTemp("/tmp", "mgr-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	h := &host{root: root, env: map[string]string{
		"MGR_CONFIG_ROOT": filepath.Join(root, "vm.d"),
		"MGR_RUN_ROOT":    run,
		"MGR_DATA_ROOT":   filepath.Join(root, "data"),
		"MGR_HTTP_ADDR":   "127.0.0.1:0",
		"MGR_VMM":         "qemu",
		// A window of its own, so hosts of tests that run at the same time
		// (published ports are DNAT rules, not sockets) never collide.
		"MGR_PORT_START": fmt.Sprint(portWindow),
		"MGR_PORT_END":   fmt.Sprint(portWindow + 499),
		"MGR_LOG_LEVEL":  "warn",
		"MGR_LOG_FORMAT": "text",
		// The daemon creates its token file here at its first start.
		"MGR_API_TOKEN_FILE": filepath.Join(root, "etc", "api-token"),
		"MGR_API_SOCKET":     filepath.Join(run, "mergen.sock"),
	}}
	portWindow += 500
	if portWindow > 39500 {
		portWindow = 20000 + rand.IntN(20)*500
	}
	for k, v := range extra {
		h.env[k] = v
	}
	base := filepath.Join(root, "data", "base", "current")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinux", "vmlinuz", "golden-rootfs.ext4", "agent-rootfs.ext4"} {
		if err := os.WriteFile(filepath.Join(base, f), []byte("placeholder "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func (h *host) path(parts ...string) string {
	return filepath.Join(append([]string{h.root}, parts...)...)
}

func (h *host) config(t testing.TB) config.Config {
	t.Helper()
	c, err := config.FromEnv(func(k string) string { return h.env[k] })
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (h *host) store(t testing.TB) *store.Store {
	t.Helper()
	c := h.config(t)
	s, err := store.Open(c.Layout())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// token is the first token of the host's token file: what the CLI sends.
func (h *host) token(t testing.TB) string {
	t.Helper()
	tok, err := auth.First(h.env["MGR_API_TOKEN_FILE"])
	if err != nil {
		t.Fatalf("the daemon's token: %v", err)
	}
	return tok
}

// daemonTokens maps the TCP address (host:port) of each daemon a test
// started to its token, so that call and callWith authenticate to
// whichever daemon they talk to.
var daemonTokens sync.Map

// trust records the token of the daemon at base (http://host:port) until
// the test ends.
func (h *host) trust(t testing.TB, base string) {
	t.Helper()
	if h.env["MGR_API_AUTH"] == "none" {
		return
	}
	addr := strings.TrimPrefix(base, "http://")
	tok := h.token(t)
	daemonTokens.Store(addr, tok)
	t.Cleanup(func() { daemonTokens.CompareAndDelete(addr, tok) })
}

// serve runs the daemon in this process until the test ends and returns
// its base URL; calls to it carry its token.
func (h *host) serve(t testing.TB) string {
	t.Helper()
	return h.serveLogged(t, io.Discard)
}

// serveLogged is serve with the daemon's log written to w.
func (h *host) serveLogged(t testing.TB, w io.Writer) string {
	t.Helper()
	cfg := h.config(t)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		done <- daemon.Serve(ctx, cfg, log, daemon.Options{Ready: func(a string) { ready <- a }})
	}()
	select {
	case addr := <-ready:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("daemon: %v", err)
			}
		})
		h.trust(t, "http://"+addr)
		return "http://" + addr
	case err := <-done:
		cancel()
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("daemon did not start within 30s")
	}
	return ""
}

// call makes one API request, with the token of the daemon it goes to, and
// decodes a JSON answer into out (when not nil). It returns the status and
// the raw body.
func call(t testing.TB, method, url string, body any, out any) (int, []byte) {
	t.Helper()
	return callWith(t, http.DefaultClient, method, url, body, out)
}

// callWith is call through a given HTTP client.
func callWith(t testing.TB, client *http.Client, method, url string, body any, out any) (int, []byte) {
	t.Helper()
	return callToken(t, client, "", method, url, body, out)
}

// callToken is callWith with a given token; when empty, the token of the
// daemon started by this process at the URL's address, if any.
func callToken(t testing.TB, client *http.Client, token, method, url string, body any, out any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token == "" {
		if tok, ok := daemonTokens.Load(req.URL.Host); ok {
			token = tok.(string)
		}
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, url, data, err)
		}
	}
	return resp.StatusCode, data
}

// vmDirs lists what is in the config root, hidden entries included.
func vmDirs(t testing.TB, h *host) []string {
	t.Helper()
	entries, err := os.ReadDir(h.env["MGR_CONFIG_ROOT"])
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() == ".generation" || e.Name() == ".alloc.lock" {
			continue
		}
		names = append(names, e.Name())
	}
	return names
}

func mustStatus(t testing.TB, got int, body []byte, want int) {
	t.Helper()
	if got != want {
		t.Fatalf("status %d, want %d; body: %s", got, want, body)
	}
}

func errMessage(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return fmt.Sprintf("<not an error document: %q>", body)
	}
	return e.Error
}

// vmHostSetup is a host that boots real guests: the built mergen and
// mergen-lifecycle, the base assets from `make assets`, QEMU under TCG.
type vmHostSetup struct {
	*host
	mergen, lifecycle, assets string
}

// newVMHost prepares such a host on its own guest network; supervisor is
// "detached", or "" to let the daemon choose (systemd inside a container).
func newVMHost(t testing.TB, supervisor, cidr string) *vmHostSetup {
	t.Helper()
	s := &vmHostSetup{
		assets:    testenv.Assets(t),
		mergen:    testenv.Build(t, "./cmd/mergen"),
		lifecycle: testenv.Build(t, "./cmd/mergen-lifecycle"),
	}
	env := map[string]string{
		"MGR_VMM":                  "qemu",
		"MGR_QEMU_ACCEL":           "tcg",
		"MGR_LIFECYCLE_BIN":        s.lifecycle,
		"MGR_BASE_ASSETS_DIR":      s.assets,
		"MGR_GUEST_CIDR":           cidr,
		"MGR_STOP_TIMEOUT_SECONDS": "20",
		// Small, so that the guest's boots rotate the console log.
		"MGR_CONSOLE_LOG_MAX_BYTES": fmt.Sprint(consoleMax),
	}
	if supervisor != "" {
		env["MGR_SUPERVISOR"] = supervisor
	}
	s.host = newHost(t, env)
	return s
}
