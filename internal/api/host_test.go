package api_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/auth"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv/hosttest"
	"github.com/mergenhq/mergen/internal/wire"
)

// host is the daemon's HTTP handler, behind the front door with a token
// file of its own, over a manager whose host lives in temporary
// directories, with a kernel and root file system as defaults and no
// service manager (start and stop answer 503).
type host struct {
	cfg     config.Config
	store   *store.Store
	handler http.Handler
	mgr     *manager.Manager
	tokens  *auth.Tokens
	token   string
}

var errNoSupervisor = errors.New("no service manager in this test")

func newHost(t *testing.T, env map[string]string) *host {
	t.Helper()
	hh := hosttest.New(t, env)
	d, cfg, st := hh.Dir, hh.Cfg, hh.Store
	log := slog.New(slog.DiscardHandler)
	mgr := manager.New(manager.Options{Config: cfg, Store: st, Log: log, SupervisorErr: errNoSupervisor})
	tokens, _, err := auth.Open(filepath.Join(d, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	token, err := auth.First(tokens.Path())
	if err != nil {
		t.Fatal(err)
	}
	door := api.FrontDoor{Tokens: tokens, Listener: "tcp", Log: log}
	return &host{cfg: cfg, store: st, handler: door.Wrap(api.New(mgr, log, nil, nil)), mgr: mgr, tokens: tokens, token: token}
}

// do sends one request through the handler and returns the recorded answer.
func (h *host) do(t *testing.T, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewBufferString(body)
	}
	req := httptest.NewRequest(method, path, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+h.token)
	rec := httptest.NewRecorder()
	h.handler.ServeHTTP(rec, req)
	return rec
}

// decode reads a JSON answer into v, failing the test on anything else.
func decode(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json; body %s", ct, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, rec.Body)
	}
}

// errorOf is the message of a JSON error answer.
func errorOf(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	decode(t, rec, &e)
	if e.Error == "" {
		t.Fatalf("error answer without a message: %s", rec.Body)
	}
	return e.Error
}

// vmWithDataDir creates a VM through the API and makes its data directory,
// where its console log lives; it returns the document and the VM's paths.
func (h *host) vmWithDataDir(t *testing.T) (wire.VM, layout.VM) {
	t.Helper()
	var vm wire.VM
	decode(t, h.do(t, http.MethodPost, "/v1/vms", `{}`), &vm)
	p := h.store.Paths(vm.ID)
	if err := os.MkdirAll(p.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return vm, p
}

// bodies checks that GET path+query answers 200 with exactly the body, for
// each query.
func (h *host) bodies(t *testing.T, path string, want map[string]string) {
	t.Helper()
	for q, body := range want {
		rec := h.do(t, http.MethodGet, path+q, "")
		if rec.Code != http.StatusOK || rec.Body.String() != body {
			t.Errorf("GET %s%s: %d %q, want 200 %q", path, q, rec.Code, rec.Body, body)
		}
	}
}
