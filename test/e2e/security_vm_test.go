package e2e

import (
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mergenhq/mergen/internal/wire"
)

// The rest of the attacks, made with a valid token: what an API
// caller may put in a request body is not a way to run code on the host,
// to learn what a hook's target answered, to read a VM's secrets from
// disk, or to take another VM's hostname.

// A command hook in a request body would run as root on the host: refused,
// naming the field, and it never runs.
func TestSecurityCommandHooksFromTheAPIAreRefused(t *testing.T) {
	d := newSecDaemon(t, nil)
	mark := d.h.path("hook-ran")
	code, hdr, body := send(t, direct, "POST", d.base+"/v1/vms", hookBody(mark), bearer(d.token))
	if code != http.StatusBadRequest || !strings.Contains(errMessage(body), "hooks.onCreate[0].command") ||
		!strings.Contains(errMessage(body), "MGR_ALLOW_VM_COMMAND_HOOKS") {
		t.Fatalf("create with a command hook: %d %s %v", code, body, hdr)
	}
	if strings.Contains(string(body), "uid=") {
		t.Fatalf("the answer carries the command's output: %s", body)
	}
	mustNotExist(t, mark, "the command hook ran")
	mustHaveNoVMs(t, d.h, "a refused command hook")
}

// A strict HTTP hook whose target answers with an error: the caller learns
// the hook and its status, never the answer's body (which would make the
// daemon a request-forgery oracle), and the create is rolled back.
func TestSecurityAFailedHookDoesNotEchoTheRemoteAnswer(t *testing.T) {
	var hits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte("internal-secret-from-the-target"))
	}))
	defer target.Close()
	d := newSecDaemon(t, nil)
	req := map[string]any{"hooks": map[string]any{"onCreate": []map[string]any{{"url": target.URL + "/admin?key=query-secret", "strict": true}}}}
	b, _ := json.Marshal(req)
	code, _, body := send(t, direct, "POST", d.base+"/v1/vms", string(b), bearer(d.token))
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "500") {
		t.Fatalf("create with a failing strict hook: %d %s", code, body)
	}
	for _, secret := range []string{"internal-secret-from-the-target", "query-secret", "/admin"} {
		if strings.Contains(string(body), secret) {
			t.Errorf("the answer carries %q: %s", secret, body)
		}
	}
	if hits.Load() != 1 {
		t.Errorf("the hook's target saw %d requests, want 1", hits.Load())
	}
	mustHaveNoVMs(t, d.h, "a failed strict onCreate hook")
}

// Hook headers (credentials for the hook's target) are not served back,
// and no file holding a VM's secrets can be read by other users.
func TestSecurityVMSecretsStayPrivate(t *testing.T) {
	d := newSecDaemon(t, nil)
	const header, env = "hook-credential-value", "extra-env-secret-value"
	req := map[string]any{
		"extraEnv": map[string]string{"API_KEY": env},
		"hooks": map[string]any{"onStart": []map[string]any{
			{"url": "http://127.0.0.1:1/", "headers": map[string]string{"Authorization": "Bearer " + header}},
		}},
	}
	var vm wire.VM
	code, body := call(t, "POST", d.base+"/v1/vms", req, &vm)
	mustStatus(t, code, body, 201)

	code, _, served := send(t, direct, "GET", d.base+"/v1/vms/"+vm.ID+"/hooks.json", "", bearer(d.token))
	if code != http.StatusOK || strings.Contains(string(served), header) || !strings.Contains(string(served), "Authorization") {
		t.Fatalf("hooks.json served: %d %s; want the header named and its value redacted", code, served)
	}
	stored, err := os.ReadFile(filepath.Join(vm.Paths.ConfigDir, "hooks.json"))
	if err != nil || !strings.Contains(string(stored), header) {
		t.Fatalf("hooks.json on disk lost the real value: %v", err)
	}

	// Every file under the roots that holds a secret is private to its
	// owner. (extraEnv is in the record and, encoded for the kernel
	// command line, in vm.json.)
	secrets := []string{header, env}
	for _, root := range []string{d.h.env["MGR_CONFIG_ROOT"], d.h.env["MGR_RUN_ROOT"], d.h.env["MGR_DATA_ROOT"]} {
		filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			info, _ := e.Info()
			for _, s := range secrets {
				if strings.Contains(string(b), s) && info.Mode().Perm()&0o077 != 0 {
					t.Errorf("%s holds a secret and has mode %v", p, info.Mode().Perm())
				}
			}
			return nil
		})
	}
	for _, f := range []string{"meta.json", "vm.json", "hooks.json", "env"} {
		if st, err := os.Stat(filepath.Join(vm.Paths.ConfigDir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", f, st.Mode().Perm(), err)
		}
	}
}

// A VM cannot squat or shadow another VM's hostname: the values of the
// routing tags are unique, and other tags are not labels at all.
func TestSecurityAVMCannotTakeAnotherVMsHostname(t *testing.T) {
	d := newSecDaemon(t, nil)
	var shop wire.VM
	code, body := call(t, "POST", d.base+"/v1/vms", map[string]any{"tags": map[string]string{"app": "shop"}}, &shop)
	mustStatus(t, code, body, 201)
	for _, tags := range []map[string]string{{"app": "shop"}, {"name": "shop"}, {"app": "SHOP"}} {
		code, body := call(t, "POST", d.base+"/v1/vms", map[string]any{"tags": tags}, nil)
		if code != http.StatusConflict || !strings.Contains(errMessage(body), shop.ID) {
			t.Errorf("create with tags %v: %d %s; want 409 naming vm %s", tags, code, body, shop.ID)
		}
	}
	// A free-form tag may repeat the value: it routes nowhere (the
	// forwarder's resolver tests show "shop" still reaches only the first).
	code, body = call(t, "POST", d.base+"/v1/vms", map[string]any{"tags": map[string]string{"x": "shop"}}, nil)
	mustStatus(t, code, body, 201)
}
