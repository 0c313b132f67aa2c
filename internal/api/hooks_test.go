package api_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/wire"
)

// What the API does with hooks: a command hook in a body is 400 naming the
// field; a failed strict hook is 503 with its status, not the remote
// answer; hooks.json is served with its header values redacted, while the
// file keeps them for the hooks.
func TestHooksAtTheAPI(t *testing.T) {
	h := newHost(t, nil)
	rec := h.do(t, http.MethodPost, "/v1/vms", `{"hooks":{"onCreate":[{"command":["/bin/sh","-c","id"],"strict":true}]}}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(errorOf(t, rec), "hooks.onCreate[0].command: command hooks in API requests are disabled") {
		t.Fatalf("command hook: %d %s; want 400 naming the field", rec.Code, rec.Body)
	}

	remote := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "SECRET from the remote", http.StatusTeapot)
	}))
	defer remote.Close()
	rec = h.do(t, http.MethodPost, "/v1/vms", `{"hooks":{"onCreate":[{"url":"`+remote.URL+`/x","strict":true}]}}`)
	if msg := errorOf(t, rec); rec.Code != http.StatusServiceUnavailable || !strings.Contains(msg, "HTTP 418") || strings.Contains(msg, "SECRET") {
		t.Fatalf("failed strict hook: %d %q; want 503 with the status, without the answer", rec.Code, msg)
	}

	// onStart hooks do not run at create: nothing is called.
	rec = h.do(t, http.MethodPost, "/v1/vms", `{"hooks":{"onStart":[{"url":"http://127.0.0.1:1/start","headers":{"Authorization":"Bearer s3cret","X-Api-Key":"k3y"}}]}}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	var vm wire.VM
	decode(t, rec, &vm)
	served := h.do(t, http.MethodGet, "/v1/vms/"+vm.ID+"/hooks.json", "")
	body := served.Body.String()
	if served.Code != http.StatusOK || !strings.Contains(body, `"Authorization": "<redacted>"`) || !strings.Contains(body, `"X-Api-Key": "<redacted>"`) || !strings.Contains(body, "http://127.0.0.1:1/start") {
		t.Fatalf("GET hooks.json: %d\n%s\nwant the hook with its header names and redacted values", served.Code, body)
	}
	if strings.Contains(body, "s3cret") || strings.Contains(body, "k3y") {
		t.Fatalf("GET hooks.json serves a header value:\n%s", body)
	}
	onDisk, err := os.ReadFile(vm.Paths.Hooks)
	if err != nil || !strings.Contains(string(onDisk), "Bearer s3cret") {
		t.Fatalf("hooks.json on disk: %s, %v; want the real values", onDisk, err)
	}
}
