package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/testenv/hosttest"
	"github.com/mergenhq/mergen/internal/wire"
)

var errNoSupervisor = errors.New("no service manager in this test")

// newDaemon serves the real API handler on a loopback port, over a host in
// temporary directories with a default kernel and root file system and no
// service manager, and returns a client for it. lifecycle is the lifecycle
// program's path, or "" for none (deleting then fails).
func newDaemon(t *testing.T, lifecycle string) *client.Client {
	t.Helper()
	env := map[string]string{}
	if lifecycle != "" {
		env["MGR_LIFECYCLE_BIN"] = lifecycle
	}
	h := hosttest.New(t, env)
	cfg, st := h.Cfg, h.Store
	log := slog.New(slog.DiscardHandler)
	mgr := manager.New(manager.Options{Config: cfg, Store: st, Log: log, SupervisorErr: errNoSupervisor})
	srv := httptest.NewServer(api.New(mgr, log, nil, nil)) // 127.0.0.1
	t.Cleanup(srv.Close)
	c, err := client.New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func apiError(t *testing.T, err error, status int) *client.APIError {
	t.Helper()
	var ae *client.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *APIError", err, err)
	}
	if ae.Status != status {
		t.Fatalf("status %d (%q), want %d", ae.Status, ae.Message, status)
	}
	return ae
}

func TestCreateGetListAndFilesRoundTrip(t *testing.T) {
	c := newDaemon(t, "")
	ctx := context.Background()
	vm, err := c.Create(ctx, wire.CreateRequest{VCPU: 2, Tags: map[string]string{"name": "web"}, Metadata: json.RawMessage(`{"k":"v"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if vm.ID == "" || vm.VCPU != 2 || vm.Name != "web" {
		t.Fatalf("Create = %+v; want the new VM as asked", vm)
	}
	got, err := c.Get(ctx, vm.ID)
	if err != nil || got.ID != vm.ID || got.Network.GuestIP != vm.Network.GuestIP {
		t.Fatalf("Get = %+v, %v; want the created VM", got, err)
	}
	list, err := c.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != vm.ID {
		t.Fatalf("List = %v, %v; want the one VM", list, err)
	}
	meta, err := c.File(ctx, vm.ID, "meta.json")
	if err != nil {
		t.Fatal(err)
	}
	var record struct {
		ID       string          `json:"id"`
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(meta, &record); err != nil || record.ID != vm.ID {
		t.Fatalf("File(meta.json) = %s (%v); want the VM's record", meta, err)
	}
	if _, err := c.File(ctx, vm.ID, "env"); err == nil {
		t.Fatal("File(env) succeeded; the env file is not served")
	}
}

// Error answers become *APIError with the status and the server's message
// (not the raw JSON body).
func TestErrorAnswersCarryStatusAndMessage(t *testing.T) {
	c := newDaemon(t, "")
	ctx := context.Background()
	_, err := c.Create(ctx, wire.CreateRequest{VCPU: 99})
	ae := apiError(t, err, http.StatusBadRequest)
	if !strings.HasPrefix(ae.Message, "vcpu:") || strings.Contains(ae.Message, `"error"`) {
		t.Errorf("message %q, want the server's message about vcpu", ae.Message)
	}
	if !strings.Contains(err.Error(), "(HTTP 400)") {
		t.Errorf("error text %q does not give the status", err)
	}

	unknown := store.NewID()
	_, err = c.Get(ctx, unknown)
	if ae := apiError(t, err, http.StatusNotFound); !strings.Contains(ae.Message, unknown) {
		t.Errorf("message %q does not name the VM", ae.Message)
	}
	err = c.Delete(ctx, unknown)
	apiError(t, err, http.StatusNotFound)

	vm, err := c.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Start(ctx, vm.ID)
	if ae := apiError(t, err, http.StatusServiceUnavailable); !strings.Contains(ae.Message, errNoSupervisor.Error()) {
		t.Errorf("start message %q does not give the reason", ae.Message)
	}
	_, err = c.Stop(ctx, vm.ID)
	apiError(t, err, http.StatusServiceUnavailable)
	_, err = c.Pause(ctx, vm.ID)
	if ae := apiError(t, err, http.StatusConflict); !strings.Contains(ae.Message, "stopped") {
		t.Errorf("pause message %q does not give the VM's state", ae.Message)
	}
	_, err = c.Resume(ctx, vm.ID)
	apiError(t, err, http.StatusConflict)
	_, err = c.Images(ctx)
	apiError(t, err, http.StatusServiceUnavailable)
}

// A delete vetoed by a strict onDelete hook is a 503 whose message says
// which hook refused, and the VM remains.
func TestDeleteVetoedByAHookIsAnAPIError(t *testing.T) {
	c := newDaemon(t, "")
	ctx := context.Background()
	vm, err := c.Create(ctx, wire.CreateRequest{
		// Nothing listens on port 1 of loopback: the hook fails.
		Hooks: json.RawMessage(`{"onDelete":[{"url":"http://127.0.0.1:1/","strict":true}]}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Delete(ctx, vm.ID)
	if ae := apiError(t, err, http.StatusServiceUnavailable); !strings.Contains(ae.Message, "onDelete") {
		t.Errorf("message %q does not name the hook's event", ae.Message)
	}
	if _, err := c.Get(ctx, vm.ID); err != nil {
		t.Fatalf("VM gone after a vetoed delete: %v", err)
	}
}

// Delete removes the VM: it is then neither found nor listed.
func TestDeleteRemovesTheVM(t *testing.T) {
	c := newDaemon(t, testenv.Build(t, "./cmd/mergen-lifecycle"))
	ctx := context.Background()
	vm, err := c.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(ctx, vm.ID)
	apiError(t, err, http.StatusNotFound)
	if list, err := c.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("List after delete = %v, %v; want none", list, err)
	}
}

// Resolve finds a VM by what a user types: its full id, its name, or a
// unique prefix of its id.
func TestResolveByIDNameOrPrefix(t *testing.T) {
	c := newDaemon(t, "")
	ctx := context.Background()
	web, err := c.Create(ctx, wire.CreateRequest{Tags: map[string]string{"name": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	db, err := c.Create(ctx, wire.CreateRequest{Tags: map[string]string{"name": "db"}})
	if err != nil {
		t.Fatal(err)
	}
	// At least three characters, so that the prefix cannot read as the name
	// "db" (which would win).
	prefix := web.ID[:max(3, len(uniquePrefix(web.ID, db.ID)))]
	cases := []struct{ ref, want string }{
		{web.ID, web.ID}, {"web", web.ID}, {"db", db.ID}, {prefix, web.ID}, {wire.ShortID(db.ID), db.ID},
	}
	for _, c2 := range cases {
		got, err := c.Resolve(ctx, c2.ref)
		if err != nil || got.ID != c2.want {
			t.Errorf("Resolve(%q) = %s, %v; want %s", c2.ref, got.ID, err, c2.want)
		}
	}
	for _, ref := range []string{"", "nobody", "zz" + web.ID} {
		if got, err := c.Resolve(ctx, ref); err == nil {
			t.Errorf("Resolve(%q) = %s; want an error", ref, got.ID)
		}
	}
}

// uniquePrefix is the shortest prefix of a that b does not share.
func uniquePrefix(a, b string) string {
	for i := 1; i <= len(a); i++ {
		if !strings.HasPrefix(b, a[:i]) {
			return a[:i]
		}
	}
	return a
}

// Match prefers an exact id, then a name, then a unique id prefix; a prefix
// of several ids is an error listing them.
func TestMatchOrderAndAmbiguity(t *testing.T) {
	vms := []wire.VM{
		{ID: "aaaa1111-0000-4000-8000-000000000001", Name: "web"},
		{ID: "aaaa2222-0000-4000-8000-000000000002", Name: "aaaa1"},
		{ID: "bbbb3333-0000-4000-8000-000000000003", Name: "aaaa2222-0000-4000-8000-000000000002"},
	}
	cases := []struct{ ref, want string }{
		{"aaaa2222-0000-4000-8000-000000000002", vms[1].ID}, // an id beats the same text as a name
		{"aaaa1", vms[1].ID}, // a name beats a prefix
		{"aaaa11", vms[0].ID},
		{"web", vms[0].ID},
		{"b", vms[2].ID},
	}
	for _, c := range cases {
		got, err := client.Match(vms, c.ref)
		if err != nil || got.ID != c.want {
			t.Errorf("Match(%q) = %s, %v; want %s", c.ref, got.ID, err, c.want)
		}
	}
	_, err := client.Match(vms, "aaaa")
	if err == nil || !strings.Contains(err.Error(), vms[0].ID) || !strings.Contains(err.Error(), vms[1].ID) || strings.Contains(err.Error(), vms[2].ID) {
		t.Errorf("Match(aaaa) = %v; want an ambiguity error listing exactly the two matching ids", err)
	}
	if _, err := client.Match(vms, "c"); err == nil {
		t.Errorf("Match(c) found a VM; want none")
	}
}

// New accepts host:port or a URL; an address that is not one is refused,
// and a daemon that does not answer is reported as unreachable.
func TestNewAndAnUnreachableDaemon(t *testing.T) {
	if _, err := client.New("http://[::1"); err == nil {
		t.Error(`New("http://[::1") succeeded; want an error`)
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close() // nothing listens there now
	c, err := client.New(addr)
	if err != nil {
		t.Fatalf("New(%q): %v", addr, err)
	}
	_, err = c.List(context.Background())
	var ae *client.APIError
	if err == nil || errors.As(err, &ae) || !strings.Contains(err.Error(), "cannot reach the mergen daemon at http://"+addr) {
		t.Fatalf("List against a closed port = %v; want an unreachable error naming http://%s", err, addr)
	}
}

// Logs asks for lines: the tail, the payload's lines alone; bad options and
// unknown VMs are API errors.
func TestLogsTailAndSource(t *testing.T) {
	c := newDaemon(t, "")
	ctx := context.Background()
	vm, err := c.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(vm.Paths.ConsoleLog), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vm.Paths.ConsoleLog, []byte("boot\n[payload] a\nmergen-init: x\n[payload] b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c2 := range []struct {
		opts client.LogsOptions
		want string
	}{
		{client.LogsOptions{}, "boot\n[payload] a\nmergen-init: x\n[payload] b\n"},
		{client.LogsOptions{Tail: "2"}, "mergen-init: x\n[payload] b\n"},
		{client.LogsOptions{Tail: "all", Source: "payload"}, "a\nb\n"},
		{client.LogsOptions{Tail: "1", Source: "payload"}, "b\n"},
	} {
		var out strings.Builder
		if err := c.Logs(ctx, vm.ID, c2.opts, &out); err != nil || out.String() != c2.want {
			t.Errorf("Logs(%+v) = %q, %v; want %q", c2.opts, out.String(), err, c2.want)
		}
	}
	var out strings.Builder
	ae := apiError(t, c.Logs(ctx, vm.ID, client.LogsOptions{Source: "stderr"}, &out), http.StatusBadRequest)
	if !strings.Contains(ae.Message, "source") {
		t.Errorf("a bad source: %q does not name the parameter", ae.Message)
	}
	apiError(t, c.Logs(ctx, store.NewID(), client.LogsOptions{}, &out), http.StatusNotFound)
}
