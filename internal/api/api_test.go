package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/lifecycle"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// Request bodies that are not one JSON object of known fields are refused
// with 400 and a message saying what is wrong, before the manager sees them.
func TestCreateRefusesMalformedBodiesWith400(t *testing.T) {
	h := newHost(t, nil)
	cases := []struct{ name, body, want string }{
		{"empty", "", "empty"},
		{"truncated", `{"vcpu":`, "not valid JSON"},
		{"not JSON", `vcpu=2`, "not valid JSON"},
		{"unknown field", `{"cpus":2}`, `unknown field "cpus"`},
		{"wrong type", `{"vcpu":"two"}`, "vcpu"},
		{"trailing data", `{} {}`, "after the JSON object"},
		{"invalid field", `{"vcpu":99}`, "vcpu:"},
		{"invalid name", `{"tags":{"name":"Web Server"}}`, "tags.name:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := h.do(t, http.MethodPost, "/v1/vms", c.body)
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400; body %s", rec.Code, rec.Body)
			}
			if msg := errorOf(t, rec); !strings.Contains(msg, c.want) {
				t.Errorf("error %q does not say %q", msg, c.want)
			}
		})
	}
	if ids, _ := h.store.IDs(); len(ids) != 0 {
		t.Fatalf("refused requests created %v", ids)
	}
}

// A body over the limit is refused with 413, whatever it holds.
func TestCreateRefusesABodyOverOneMiBWith413(t *testing.T) {
	h := newHost(t, nil)
	body := `{"bootArgs":"` + strings.Repeat("a", api.MaxBodyBytes) + `"}`
	rec := h.do(t, http.MethodPost, "/v1/vms", body)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413; body %.200s", rec.Code, rec.Body)
	}
	if msg := errorOf(t, rec); !strings.Contains(msg, "1048576") {
		t.Errorf("error %q does not give the limit", msg)
	}
}

// A good create answers 201 with the VM's document and its location; the
// document's paths all lie under the configured roots and the stored
// meta.json is served as it is on disk.
func TestCreateAnswers201WithTheVMAndItsLocation(t *testing.T) {
	h := newHost(t, nil)
	rec := h.do(t, http.MethodPost, "/v1/vms", `{"vcpu":2,"memMiB":256,"tags":{"name":"web"},"ports":[{"guest":80}]}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("status %d, want 201; body %s", rec.Code, rec.Body)
	}
	var vm wire.VM
	decode(t, rec, &vm)
	if err := store.ValidateID(vm.ID); err != nil {
		t.Fatalf("created VM has id %q: %v", vm.ID, err)
	}
	if loc := rec.Header().Get("Location"); loc != "/v1/vms/"+vm.ID {
		t.Errorf("Location %q, want /v1/vms/%s", loc, vm.ID)
	}
	if vm.VCPU != 2 || vm.MemMiB != 256 || vm.Name != "web" || len(vm.Network.Ports) != 1 || vm.Network.Ports[0].Host == 0 {
		t.Errorf("document %+v does not reflect the request", vm)
	}

	p := vm.Paths
	under := map[string]string{
		"configDir": p.ConfigDir, "vmConfig": p.VMConfig, "meta": p.Meta, "hooks": p.Hooks, "env": p.Env,
		"runDir": p.RunDir, "socket": p.Socket, "pidFile": p.PIDFile, "lock": p.Lock,
		"dataDir": p.DataDir, "consoleLog": p.ConsoleLog, "vmmState.socketPath": vm.VMMState.SocketPath,
	}
	for field, path := range under {
		inside := false
		for _, root := range []string{h.cfg.ConfigRoot, h.cfg.RunRoot, h.cfg.DataRoot} {
			if strings.HasPrefix(path, root+"/") {
				inside = true
			}
		}
		if !inside || !strings.Contains(path, vm.ID) {
			t.Errorf("paths.%s = %q: not a path of this VM under the configured roots", field, path)
		}
	}

	get := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID, "")
	var again wire.VM
	decode(t, get, &again)
	if get.Code != http.StatusOK || again.ID != vm.ID || again.Network.GuestIP != vm.Network.GuestIP {
		t.Errorf("GET the location: %d %+v; want the created VM", get.Code, again)
	}

	meta := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/meta.json", "")
	onDisk, err := os.ReadFile(p.Meta)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Code != http.StatusOK || meta.Body.String() != string(onDisk) {
		t.Errorf("GET meta.json: %d %q; want the stored file %q", meta.Code, meta.Body, onDisk)
	}
	var record struct {
		Version int    `json:"version"`
		ID      string `json:"id"`
	}
	if err := json.Unmarshal(onDisk, &record); err != nil || record.Version != store.RecordVersion || record.ID != vm.ID {
		t.Errorf("meta.json holds version %d, id %q (%v); want version %d of %s", record.Version, record.ID, err, store.RecordVersion, vm.ID)
	}
}

// Of the VM's stored files only meta.json, vm.json and hooks.json are
// served; the env file and anything else is not found.
func TestOnlyTheDocumentedVMFilesAreServed(t *testing.T) {
	h := newHost(t, nil)
	var vm wire.VM
	decode(t, h.do(t, http.MethodPost, "/v1/vms", `{}`), &vm)
	for _, name := range []string{"meta.json", "vm.json", "hooks.json"} {
		rec := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/"+name, "")
		if rec.Code != http.StatusOK || !json.Valid(rec.Body.Bytes()) {
			t.Errorf("GET %s: %d %.100s; want 200 and JSON", name, rec.Code, rec.Body)
		}
	}
	for _, name := range []string{"env", "lifecycle-hooks.json", "console.log", ".generation"} {
		rec := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/"+name, "")
		if rec.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404; body %s", name, rec.Code, rec.Body)
		}
	}
}

// Unknown VMs are 404; ids that are not lowercase UUIDs are 400, on every
// route that takes one.
func TestUnknownAndMalformedIDs(t *testing.T) {
	h := newHost(t, nil)
	unknown := store.NewID()
	routes := []struct{ method, path string }{
		{http.MethodGet, "/v1/vms/%s"},
		{http.MethodDelete, "/v1/vms/%s"},
		{http.MethodPost, "/v1/vms/%s/start"},
		{http.MethodPost, "/v1/vms/%s/stop"},
		{http.MethodPost, "/v1/vms/%s/pause"},
		{http.MethodPost, "/v1/vms/%s/resume"},
		{http.MethodGet, "/v1/vms/%s/meta.json"},
		{http.MethodGet, "/v1/vms/%s/console"},
		{http.MethodGet, "/v1/vms/%s/logs"},
	}
	for _, r := range routes {
		rec := h.do(t, r.method, strings.Replace(r.path, "%s", unknown, 1), "")
		if rec.Code != http.StatusNotFound || !strings.Contains(errorOf(t, rec), unknown) {
			t.Errorf("%s %s with an unknown id: %d %s; want 404 naming the id", r.method, r.path, rec.Code, rec.Body)
		}
		rec = h.do(t, r.method, strings.Replace(r.path, "%s", "web", 1), "")
		if rec.Code != http.StatusBadRequest || !strings.Contains(errorOf(t, rec), "not a lowercase UUID") {
			t.Errorf("%s %s with a malformed id: %d %s; want 400", r.method, r.path, rec.Code, rec.Body)
		}
	}
	rec := h.do(t, http.MethodGet, "/v2/things", "")
	if rec.Code != http.StatusNotFound || !strings.Contains(errorOf(t, rec), "/v2/things") {
		t.Errorf("unknown route: %d %s; want a JSON 404 naming the path", rec.Code, rec.Body)
	}
}

// A second VM with a taken name is 409; starting without a service manager
// is 503; pausing a stopped VM is 409; each says why.
func TestConflictIs409AndUnavailableIs503(t *testing.T) {
	h := newHost(t, nil)
	var vm wire.VM
	decode(t, h.do(t, http.MethodPost, "/v1/vms", `{"tags":{"name":"web"}}`), &vm)

	rec := h.do(t, http.MethodPost, "/v1/vms", `{"tags":{"name":"web"}}`)
	if rec.Code != http.StatusConflict || !strings.Contains(errorOf(t, rec), vm.ID) {
		t.Errorf("second VM named web: %d %s; want 409 naming %s", rec.Code, rec.Body, vm.ID)
	}
	for _, op := range []string{"start", "stop"} {
		rec = h.do(t, http.MethodPost, "/v1/vms/"+vm.ID+"/"+op, "")
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(errorOf(t, rec), errNoSupervisor.Error()) {
			t.Errorf("%s without a service manager: %d %s; want 503 with the reason", op, rec.Code, rec.Body)
		}
	}
	// A VM that is not running cannot be paused or resumed: 409, naming
	// the VM and its state.
	for _, op := range []string{"pause", "resume"} {
		rec = h.do(t, http.MethodPost, "/v1/vms/"+vm.ID+"/"+op, "")
		if msg := errorOf(t, rec); rec.Code != http.StatusConflict || !strings.Contains(msg, vm.ID) || !strings.Contains(msg, "stopped") {
			t.Errorf("%s of a stopped VM: %d %s; want 409 naming the VM and its state", op, rec.Code, rec.Body)
		}
	}
	rec = h.do(t, http.MethodGet, "/v1/images", "")
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("images without a lister: %d %s; want 503", rec.Code, rec.Body)
	}
}

// The list holds every VM, oldest first, with its count.
func TestListHoldsEveryVMOldestFirst(t *testing.T) {
	h := newHost(t, nil)
	var list wire.VMList
	decode(t, h.do(t, http.MethodGet, "/v1/vms", ""), &list)
	if list.Count != 0 || list.VMs == nil {
		t.Fatalf("empty host lists %+v; want count 0 and an empty array", list)
	}
	var ids []string
	for range 3 {
		var vm wire.VM
		decode(t, h.do(t, http.MethodPost, "/v1/vms", `{}`), &vm)
		ids = append(ids, vm.ID)
	}
	decode(t, h.do(t, http.MethodGet, "/v1/vms", ""), &list)
	if list.Count != 3 || len(list.VMs) != 3 {
		t.Fatalf("list count %d with %d VMs, want 3", list.Count, len(list.VMs))
	}
	for i := 1; i < 3; i++ {
		if list.VMs[i].CreatedAt.Before(list.VMs[i-1].CreatedAt) {
			t.Errorf("VM %d created before VM %d: not oldest first", i, i-1)
		}
	}
	listed := map[string]bool{}
	for _, vm := range list.VMs {
		listed[vm.ID] = true
	}
	for _, id := range ids {
		if !listed[id] {
			t.Errorf("created VM %s not listed", id)
		}
	}
}

// The console answers with the end of the console log: ?tail=N bytes.
func TestConsoleServesTheTailOfTheLog(t *testing.T) {
	h := newHost(t, nil)
	var vm wire.VM
	decode(t, h.do(t, http.MethodPost, "/v1/vms", `{}`), &vm)
	rec := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/console", "")
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Fatalf("console of a VM that never started: %d %q; want 200, empty", rec.Code, rec.Body)
	}
	if err := os.MkdirAll(filepath.Dir(vm.Paths.ConsoleLog), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vm.Paths.ConsoleLog, []byte("booting\nlogin: "), 0o600); err != nil {
		t.Fatal(err)
	}
	rec = h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/console?tail=7", "")
	if rec.Code != http.StatusOK || rec.Body.String() != "login: " {
		t.Errorf("console?tail=7: %d %q; want the last 7 bytes %q", rec.Code, rec.Body, "login: ")
	}
	rec = h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/console?tail=-1", "")
	if rec.Code != http.StatusBadRequest {
		t.Errorf("console?tail=-1: %d, want 400", rec.Code)
	}
	// After a rotation the tail reaches into the rotated log.
	p := h.store.Paths(vm.ID)
	os.WriteFile(p.ConsoleLogOld, []byte("booting\nlogin: "), 0o600)
	os.WriteFile(p.ConsoleLog, []byte("root\n"), 0o600)
	h.bodies(t, "/v1/vms/"+vm.ID+"/console", map[string]string{"?tail=3": "ot\n", "?tail=8": "n: root\n", "": "booting\nlogin: root\n"})
}

// A client following the console keeps receiving every byte, in order, while
// the copier rotates the log under it.
func TestConsoleFollowCrossesRotations(t *testing.T) {
	h := newHost(t, nil)
	vm, p := h.vmWithDataDir(t)
	srv := httptest.NewServer(h.handler)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/vms/"+vm.ID+"/console?follow=true", nil)
	req.Header.Set("Authorization", "Bearer "+h.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var mu sync.Mutex
	var got []byte
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			mu.Lock()
			got = append(got, buf[:n]...)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	received := func() []byte {
		mu.Lock()
		defer mu.Unlock()
		return append([]byte(nil), got...)
	}

	// The real copier, with a small bound: each step below crosses at most
	// one rotation, and the next waits until the client has it all.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	copied := make(chan error, 1)
	go func() {
		copied <- (&lifecycle.ConsoleLog{Path: p.ConsoleLog, Old: p.ConsoleLogOld, Max: 1000}).Copy(pr)
	}()
	var sent []byte
	for i, n := range []int{600, 900, 700, 999, 1, 1000, 50} {
		step := bytes.Repeat([]byte{byte('a' + i)}, n)
		if _, err := pw.Write(step); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, step...)
		testenv.Eventually(t, 20*time.Second, "the follower to catch up", func() bool { return len(received()) >= len(sent) })
		if r := received(); !bytes.Equal(r, sent) {
			t.Fatalf("after step %d the follower has %d bytes, want the %d sent, in order", i, len(r), len(sent))
		}
	}
	pw.Close()
	if err := <-copied; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.ConsoleLogOld); err != nil {
		t.Fatalf("the log never rotated: %v", err)
	}
}

// The earlier generation's GET /machines/{id} finds a VM by its name tag.
func TestLegacyGetFindsAVMByName(t *testing.T) {
	h := newHost(t, nil)
	var vm wire.VM
	decode(t, h.do(t, http.MethodPost, "/v1/vms", `{"tags":{"name":"old-style"}}`), &vm)
	var legacy map[string]any
	rec := h.do(t, http.MethodGet, "/machines/old-style", "")
	decode(t, rec, &legacy)
	if rec.Code != http.StatusOK || legacy["id"] != "old-style" || legacy["log_path"] != vm.Paths.ConsoleLog || legacy["status"] != "unknown" {
		t.Errorf("GET /machines/old-style: %d %v; want the VM under its name, status unknown without a service manager", rec.Code, legacy)
	}
	if rec := h.do(t, http.MethodGet, "/machines/nobody", ""); rec.Code != http.StatusNotFound {
		t.Errorf("GET /machines/nobody: %d, want 404", rec.Code)
	}
	if rec := h.do(t, http.MethodPost, "/machines", `{}`); rec.Code != http.StatusBadRequest || !strings.Contains(errorOf(t, rec), "id") {
		t.Errorf("POST /machines without an id: %d %s; want 400 naming id", rec.Code, rec.Body)
	}
}

// /healthz answers ok with the version and what the health callback adds.
func TestHealthz(t *testing.T) {
	h := newHost(t, nil)
	rec := h.do(t, http.MethodGet, "/healthz", "")
	var body map[string]any
	decode(t, rec, &body)
	if rec.Code != http.StatusOK || body["status"] != "ok" || body["version"] == nil {
		t.Fatalf("/healthz: %d %v; want 200, status ok and the version", rec.Code, body)
	}
}

// Every operation the OpenAPI document describes is routed: none falls
// through to the catch-all "no route" answer.
func TestEveryDocumentedOperationIsRouted(t *testing.T) {
	h := newHost(t, nil)
	var vm wire.VM
	decode(t, h.do(t, http.MethodPost, "/v1/vms", `{"tags":{"name":"doc"}}`), &vm)
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if len(doc.Paths) == 0 {
		t.Fatal("openapi.json documents no paths")
	}
	for path, ops := range doc.Paths {
		for method := range ops {
			method = strings.ToUpper(method)
			if method == "PARAMETERS" {
				continue
			}
			target := strings.ReplaceAll(path, "{id}", vm.ID)
			if strings.HasPrefix(path, "/machines/") {
				target = strings.ReplaceAll(path, "{id}", "doc")
			}
			if method == http.MethodDelete {
				// A VM that does not exist: removing one runs the lifecycle
				// program, which this host does not have.
				target = strings.ReplaceAll(path, "{id}", store.NewID())
			}
			if path == "/v1/events" {
				// The stream never ends; a refused filter shows the route.
				target += "?type=none"
			}
			body := ""
			if method == http.MethodPost || method == http.MethodPut {
				body = `{"tags":{"name":"doc"}}`
			}
			rec := h.do(t, method, target, body)
			if strings.Contains(rec.Body.String(), "no route for") {
				t.Errorf("%s %s is documented but not routed", method, path)
			}
		}
	}
}
