package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// The front door, end to end: a real daemon on loopback and its unix
// socket, attacked the ways an attacker against a default install would, and
// the token file's bad cases against the real binary.

// secDaemon is a daemon served in this process with its log captured.
type secDaemon struct {
	h     *host
	base  string
	token string
	log   *testenv.Log
}

func newSecDaemon(t *testing.T, extra map[string]string) *secDaemon {
	t.Helper()
	env := map[string]string{"MGR_SUPERVISOR": "systemd"} // no service manager here: start answers 503
	for k, v := range extra {
		env[k] = v
	}
	h := newHost(t, env)
	d := &secDaemon{h: h, log: &testenv.Log{}}
	d.base = h.serveLogged(t, d.log)
	if h.env["MGR_API_AUTH"] != "none" {
		d.token = h.token(t)
	}
	t.Cleanup(func() {
		// Whatever happened, the daemon never logs a token or an
		// Authorization header.
		logs := d.log.String()
		if d.token != "" && strings.Contains(logs, d.token) {
			t.Errorf("the daemon's log holds its token")
		}
		if strings.Contains(strings.ToLower(logs), "authorization") || strings.Contains(logs, "Bearer ") {
			t.Errorf("the daemon's log holds an Authorization header:\n%s", logs)
		}
	})
	return d
}

// direct is a client that never goes through a proxy.
var direct = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}

// unixClient talks HTTP over the unix socket at path.
func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}}
}

// send makes one request with exactly the given headers.
func send(t testing.TB, c *http.Client, method, url, body string, header http.Header) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if header != nil {
		req.Header = header
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}, "Content-Type": {"application/json"}}
}

// hookBody is the first attack: a strict onCreate command hook,
// here leaving a mark when it runs.
func hookBody(mark string) string {
	b, _ := json.Marshal(map[string]any{"hooks": map[string]any{"onCreate": []map[string]any{
		{"command": []string{"/bin/sh", "-c", "touch " + mark + "; id; exit 1"}, "strict": true},
	}}})
	return string(b)
}

func mustNotExist(t *testing.T, path, what string) {
	t.Helper()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s: %s exists (%v)", what, path, err)
	}
}

func mustHaveNoVMs(t *testing.T, h *host, after string) {
	t.Helper()
	if left := vmDirs(t, h); len(left) != 0 {
		t.Fatalf("after %s the config root holds %v", after, left)
	}
}

// Over TCP, without a token, with a wrong token, with a token of the right
// length one byte off, or with another scheme, every operation — the /v1
// API, the OpenAPI document, and the /machines surface — is 401 with a JSON
// error and a Bearer challenge, and does nothing: the command hook
// does not run. Health answers without a token.
func TestSecurityTCPRequestsNeedTheToken(t *testing.T) {
	d := newSecDaemon(t, nil)
	mark := d.h.path("hook-ran")
	var vm wire.VM
	code, body := call(t, "POST", d.base+"/v1/vms", map[string]any{"tags": map[string]string{"name": "victim"},
		"hooks": map[string]any{"onCreate": []map[string]any{{"url": "http://127.0.0.1:1/", "headers": map[string]string{"X-Hook-Secret": "hook-secret-value"}}}}}, &vm)
	mustStatus(t, code, body, 201)

	b := []byte(d.token)
	b[len(b)-1] ^= 1 // same length, last byte off
	oneOff := string(b)
	wrong := strings.Repeat("A", len(d.token))
	cases := []struct{ name, authorization, says string }{
		{"no token", "", "no bearer token"},
		{"wrong token", "Bearer " + wrong, "not valid"},
		{"one byte off", "Bearer " + oneOff, "not valid"},
		{"a prefix of the token", "Bearer " + d.token[:len(d.token)-1], "not valid"},
		{"basic scheme", "Basic " + d.token, "Bearer scheme"},
		{"token without a scheme", d.token, "Bearer scheme"},
	}
	routes := []struct{ method, path, body string }{
		{"POST", "/v1/vms", hookBody(mark)},
		{"GET", "/v1/vms", ""},
		{"GET", "/v1/vms/" + vm.ID, ""},
		{"GET", "/v1/vms/" + vm.ID + "/hooks.json", ""},
		{"GET", "/v1/vms/" + vm.ID + "/meta.json", ""},
		{"GET", "/v1/vms/" + vm.ID + "/console", ""},
		{"POST", "/v1/vms/" + vm.ID + "/stop", ""},
		{"DELETE", "/v1/vms/" + vm.ID, ""},
		{"GET", "/v1/images", ""},
		{"GET", "/openapi.json", ""},
		{"POST", "/machines", `{"id":"legacy"}`},
		{"GET", "/machines/victim", ""},
		{"DELETE", "/machines/victim", ""},
	}
	for _, c := range cases {
		for _, r := range routes {
			hdr := http.Header{"Content-Type": {"application/json"}}
			if c.authorization != "" {
				hdr.Set("Authorization", c.authorization)
			}
			code, h, body := send(t, direct, r.method, d.base+r.path, r.body, hdr)
			if code != 401 || !strings.Contains(errMessage(body), c.says) || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: %s %s → %d %s, WWW-Authenticate %q; want 401 saying %q", c.name, r.method, r.path, code, body, h.Get("WWW-Authenticate"), c.says)
			}
			if bytes.Contains(body, []byte("hook-secret-value")) || bytes.Contains(body, []byte(d.token[:12])) {
				t.Errorf("%s: %s %s answered with a secret: %s", c.name, r.method, r.path, body)
			}
		}
	}
	mustNotExist(t, mark, "a command hook sent without a token ran")
	if left := vmDirs(t, d.h); len(left) != 1 || left[0] != vm.ID {
		t.Fatalf("refused requests changed the VMs: %v", left)
	}
	for _, path := range []string{"/healthz", "/health"} {
		if code, _, body := send(t, direct, "GET", d.base+path, "", nil); code != 200 {
			t.Errorf("GET %s without a token: %d %s", path, code, body)
		}
	}
	code, body = call(t, "GET", d.base+"/machines/victim", nil, nil)
	mustStatus(t, code, body, 200)
	code, body = call(t, "DELETE", d.base+"/machines/victim", nil, nil)
	mustStatus(t, code, body, 200)
	for _, want := range []string{`reason="no bearer token"`, `reason="invalid bearer token"`, `reason="not a bearer token"`} {
		if !strings.Contains(d.log.String(), want) {
			t.Errorf("no log line with %s", want)
		}
	}
}

// The second attack: a browser page posts text/plain (a "simple"
// request, no preflight) with its own Origin. Refused with 403 whether or
// not tokens are on — also on a loopback daemon with MGR_API_AUTH=none and
// on the unix socket — and nothing is created, no hook runs. Origin: null
// is refused too; a listed origin is let through.
func TestSecuritySimpleCrossSiteRequestsAreRefused(t *testing.T) {
	const console = "https://console.example.com"
	for _, mode := range []string{"token", "none"} {
		t.Run("auth "+mode, func(t *testing.T) {
			d := newSecDaemon(t, map[string]string{"MGR_API_AUTH": mode, "MGR_API_ALLOWED_ORIGINS": console})
			mark := d.h.path("hook-ran")
			sock := unixClient(d.h.env["MGR_API_SOCKET"])
			for _, via := range []struct {
				name   string
				c      *http.Client
				target string
			}{{"tcp", direct, d.base}, {"unix socket", sock, "http://mergen"}} {
				for _, origin := range []string{"http://evil.example", "null", "https://console.example.com.evil.example", "HTTPS://CONSOLE.EXAMPLE.COM"} {
					for _, hdr := range []http.Header{
						{"Origin": {origin}, "Content-Type": {"text/plain"}},
						{"Origin": {origin}, "Content-Type": {"application/json"}, "Authorization": {"Bearer " + d.token}},
					} {
						code, _, body := send(t, via.c, "POST", via.target+"/v1/vms", hookBody(mark), hdr)
						if code != 403 || !strings.Contains(errMessage(body), "MGR_API_ALLOWED_ORIGINS") {
							t.Errorf("%s, Origin %s, %s: %d %s; want 403", via.name, origin, hdr.Get("Content-Type"), code, body)
						}
					}
				}
				code, _, _ := send(t, via.c, "POST", via.target+"/machines", `{"id":"csrf"}`, http.Header{"Origin": {"null"}, "Content-Type": {"text/plain"}})
				if code != 403 {
					t.Errorf("%s: /machines with Origin null: %d, want 403", via.name, code)
				}
			}
			mustNotExist(t, mark, "a cross-site request ran a hook")
			mustHaveNoVMs(t, d.h, "cross-site requests")
			if !strings.Contains(d.log.String(), "status=403") {
				t.Error("no log line for the 403s")
			}

			// The listed origin passes (with the token when tokens are on).
			hdr := http.Header{"Origin": {console}, "Content-Type": {"application/json"}}
			if mode == "token" {
				hdr.Set("Authorization", "Bearer "+d.token)
			}
			code, h, body := send(t, direct, "POST", d.base+"/v1/vms", `{}`, hdr)
			if code != 201 || h.Get("Access-Control-Allow-Origin") != console {
				t.Errorf("listed origin: %d %s (Access-Control-Allow-Origin %q); want 201", code, body, h.Get("Access-Control-Allow-Origin"))
			}
		})
	}
}

// A body that is not declared JSON is 415 (with the token, from a client
// that sends no Origin), and creates nothing; requests without a body need
// no content type.
func TestSecurityBodiesMustBeJSON(t *testing.T) {
	d := newSecDaemon(t, nil)
	mark := d.h.path("hook-ran")
	for _, ct := range []string{"text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""} {
		hdr := http.Header{"Authorization": {"Bearer " + d.token}}
		if ct != "" {
			hdr.Set("Content-Type", ct)
		}
		code, _, body := send(t, direct, "POST", d.base+"/v1/vms", hookBody(mark), hdr)
		if code != 415 || !strings.Contains(errMessage(body), "application/json") {
			t.Errorf("Content-Type %q: %d %s; want 415", ct, code, body)
		}
		code, _, _ = send(t, direct, "POST", d.base+"/machines", `{"id":"plain"}`, hdr)
		if code != 415 {
			t.Errorf("/machines with Content-Type %q: %d, want 415", ct, code)
		}
	}
	mustNotExist(t, mark, "a text/plain create ran a hook")
	mustHaveNoVMs(t, d.h, "text/plain creates")
	var vm wire.VM
	code, body := call(t, "POST", d.base+"/v1/vms", map[string]any{}, &vm)
	mustStatus(t, code, body, 201)
	code, _, body = send(t, direct, "POST", d.base+"/v1/vms/"+vm.ID+"/start", "", http.Header{"Authorization": {"Bearer " + d.token}})
	if code != 503 { // no service manager: the request reached the manager
		t.Errorf("start without a body or a content type: %d %s; want the manager's 503", code, body)
	}
	code, _, body = send(t, direct, "DELETE", d.base+"/v1/vms/"+vm.ID, "", http.Header{"Authorization": {"Bearer " + d.token}})
	if code != 200 {
		t.Errorf("DELETE without a content type: %d %s", code, body)
	}
}

// The unix socket answers without a token (its permissions are the
// boundary: mode 0660) and serves the same API, /machines included.
func TestSecurityTheSocketAnswersWithoutAToken(t *testing.T) {
	d := newSecDaemon(t, nil)
	path := d.h.env["MGR_API_SOCKET"]
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("%s: mode %v, want a socket with mode 0660", path, fi.Mode())
	}
	sock := unixClient(path)
	var vm wire.VM
	code, body := callWith(t, sock, "POST", "http://mergen/v1/vms", map[string]any{"tags": map[string]string{"name": "viasocket"}}, &vm)
	mustStatus(t, code, body, 201)
	var list wire.VMList
	code, body = callWith(t, sock, "GET", "http://mergen/v1/vms", nil, &list)
	mustStatus(t, code, body, 200)
	if list.Count != 1 || list.VMs[0].ID != vm.ID {
		t.Fatalf("list over the socket: %s", body)
	}
	code, body = callWith(t, sock, "GET", "http://mergen/machines/viasocket", nil, nil)
	mustStatus(t, code, body, 200)
	code, body = callWith(t, sock, "DELETE", "http://mergen/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 200)
	// The same request over TCP without the token is refused.
	if code, _, _ := send(t, direct, "GET", d.base+"/v1/vms", "", nil); code != 401 {
		t.Errorf("the same list over TCP without a token: %d, want 401", code)
	}
}

// A 1 MiB header is 431, logged, and disturbs no other client; likewise
// every other refused request: a client with the token, working through the
// API meanwhile, sees every one of its requests served, and refused
// requests leave nothing behind.
func TestSecurityRefusedRequestsDoNotDisturbOthers(t *testing.T) {
	d := newSecDaemon(t, nil)
	mark := d.h.path("hook-ran")
	huge := strings.Repeat("h", 1<<20)
	attacks := []struct {
		name   string
		header http.Header
		want   int
	}{
		{"1 MiB header", http.Header{"Authorization": {"Bearer " + d.token}, "X-Padding": {huge}}, 431},
		{"1 MiB Authorization", http.Header{"Authorization": {"Bearer " + huge}}, 431},
		{"no token", http.Header{"Content-Type": {"application/json"}}, 401},
		{"wrong token", bearer(strings.Repeat("x", 43)), 401},
		{"basic", http.Header{"Authorization": {"Basic " + d.token}, "Content-Type": {"application/json"}}, 401},
		{"foreign origin", http.Header{"Origin": {"http://evil.example"}, "Content-Type": {"text/plain"}}, 403},
		{"origin null", http.Header{"Origin": {"null"}, "Authorization": {"Bearer " + d.token}, "Content-Type": {"application/json"}}, 403},
		{"text/plain", http.Header{"Authorization": {"Bearer " + d.token}, "Content-Type": {"text/plain"}}, 415},
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	refused := map[string]int{}
	wrong := map[string]string{}
	for _, a := range attacks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}
			for i := 0; i < 40; i++ {
				if i >= 3 { // a few at least, then until the client is done
					select {
					case <-stop:
						return
					default:
					}
				}
				req, _ := http.NewRequest("POST", d.base+"/v1/vms", strings.NewReader(hookBody(mark)))
				req.Header = a.header.Clone()
				resp, err := c.Do(req)
				mu.Lock()
				switch {
				case err != nil:
					wrong[a.name] = err.Error()
				case resp.StatusCode != a.want:
					wrong[a.name] = resp.Status
				default:
					refused[a.name]++
				}
				mu.Unlock()
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}

	// The legitimate client: create, get, delete, 25 times over.
	for i := 0; i < 25; i++ {
		var vm wire.VM
		code, body := call(t, "POST", d.base+"/v1/vms", map[string]any{"tags": map[string]string{"name": fmt.Sprintf("ok%d", i)}}, &vm)
		mustStatus(t, code, body, 201)
		code, body = call(t, "GET", d.base+"/v1/vms/"+vm.ID, nil, nil)
		mustStatus(t, code, body, 200)
		code, body = call(t, "DELETE", d.base+"/v1/vms/"+vm.ID, nil, nil)
		mustStatus(t, code, body, 200)
	}
	close(stop)
	wg.Wait()
	for name, got := range wrong {
		t.Errorf("%s: answered %s", name, got)
	}
	for _, a := range attacks {
		if refused[a.name] == 0 {
			t.Errorf("%s: never refused while the client worked", a.name)
		}
	}
	mustNotExist(t, mark, "a refused request ran a hook")
	mustHaveNoVMs(t, d.h, "refused requests and the client's deletes")
	logs := d.log.String()
	for _, status := range []string{"431", "401", "403", "415"} {
		if !strings.Contains(logs, "status="+status) {
			t.Errorf("no log line for the %s refusals", status)
		}
	}
	if strings.Contains(logs, huge[:1000]) {
		t.Error("the log holds the huge header")
	}
}

// The token file the daemon creates when it is missing: mode 0600, one
// token of 256 bits, the one that opens the API.
func TestSecurityAMissingTokenFileIsCreated(t *testing.T) {
	d := newSecDaemon(t, nil)
	path := d.h.env["MGR_API_TOKEN_FILE"]
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if fi.Mode().Perm() != 0o600 || len(lines) != 1 || len(lines[0]) != 43 {
		t.Fatalf("token file: mode %04o, %d lines, first of %d characters; want 0600, one token of 43", fi.Mode().Perm(), len(lines), len(lines[0]))
	}
	code, body := call(t, "GET", d.base+"/v1/vms", nil, nil)
	mustStatus(t, code, body, 200)
	if !strings.Contains(d.log.String(), "created the API token file") {
		t.Errorf("the daemon did not tell it created the file:\n%s", d.log)
	}
}

// binaryEnv is the environment of the mergen binary for h: the host's
// variables, and none of this process's MGR_* or MERGEN_* ones.
func binaryEnv(h *host, drop ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MGR_") && !strings.HasPrefix(kv, "MERGEN_") && !strings.HasPrefix(kv, "MGN_") {
			env = append(env, kv)
		}
	}
next:
	for k, v := range h.env {
		for _, d := range drop {
			if k == d {
				continue next
			}
		}
		env = append(env, k+"="+v)
	}
	return env
}

// A token file unfit to use stops `mergen server` at once, with a message
// naming the file and the fix, before it listens or touches its roots: one
// others can read, an empty one, and one the daemon's user cannot read.
func TestSecurityUnfitTokenFilesStopTheDaemon(t *testing.T) {
	testenv.RequireRoot(t) // to run the daemon as another user
	bin := testenv.Build(t, "./cmd/mergen")
	// A directory everyone may enter, for the binary and the files that the
	// unprivileged daemon must reach.
	shared, err := os.MkdirTemp("", "mergen-sec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o755)
	sharedBin := filepath.Join(shared, "mergen")
	copyFile(t, bin, sharedBin, 0o755)

	cases := []struct {
		name    string
		content string
		perm    os.FileMode
		asUser  bool
		want    []string
	}{
		{"world-readable", strings.Repeat("w", 43) + "\n", 0o644, false, []string{"can be read or written by group or others (mode 0644)", "chmod 600"}},
		{"group-readable", strings.Repeat("g", 43) + "\n", 0o640, false, []string{"group or others (mode 0640)", "chmod 600"}},
		{"empty", "", 0o600, false, []string{"holds no token"}},
		{"only comments", "# tokens go here\n\n", 0o600, false, []string{"holds no token"}},
		{"short token", "short-token\n", 0o600, false, []string{"shorter than 32 characters"}},
		{"unreadable by the daemon's user", strings.Repeat("u", 43) + "\n", 0o600, true, []string{"cannot be read by the daemon's user (uid 65534)", "permission denied"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHost(t, nil)
			dir, err := os.MkdirTemp(shared, "etc-")
			if err != nil {
				t.Fatal(err)
			}
			os.Chmod(dir, 0o755)
			tokenFile := filepath.Join(dir, "api-token")
			if err := os.WriteFile(tokenFile, []byte(c.content), c.perm); err != nil {
				t.Fatal(err)
			}
			os.Chmod(tokenFile, c.perm)
			h.env["MGR_API_TOKEN_FILE"] = tokenFile
			port := freePort(t)
			h.env["MGR_HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", port)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, sharedBin, "server")
			cmd.Env = binaryEnv(h)
			if c.asUser {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			}
			out, err := cmd.CombinedOutput()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("mergen server with a %s token file: %v (timed out: %v); want it to stop at once\n%s", c.name, err, ctx.Err() != nil, out)
			}
			for _, w := range append(c.want, tokenFile, "MGR_API_TOKEN_FILE") {
				if !strings.Contains(string(out), w) {
					t.Errorf("output does not say %q:\n%s", w, out)
				}
			}
			if tok := strings.TrimSpace(c.content); tok != "" && !strings.HasPrefix(tok, "#") && strings.Contains(string(out), tok) {
				t.Errorf("output repeats the token file's content:\n%s", out)
			}
			if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
				conn.Close()
				t.Errorf("something listens on the refused daemon's port %d", port)
			}
			for _, root := range []string{h.env["MGR_CONFIG_ROOT"], h.env["MGR_API_SOCKET"]} {
				if _, err := os.Stat(root); !os.IsNotExist(err) {
					t.Errorf("%s exists after a refused start (%v)", root, err)
				}
			}
			if b, _ := os.ReadFile(tokenFile); string(b) != c.content {
				t.Error("the refused token file was changed")
			}
		})
	}
}

func copyFile(t *testing.T, from, to string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, perm); err != nil {
		t.Fatal(err)
	}
}

// `mergen server` with MGR_HTTP_ADDR unset listens on loopback only. It runs
// in a network namespace of its own (so the default port is free and the
// test reaches nothing but the namespace's loopback), and its listening
// sockets are read from /proc: every one is bound to 127.0.0.1 or ::1. The
// socket, at its default place under the run root, answers; the daemon's
// output never holds its token.
func TestSecurityDefaultStartListensOnLoopbackOnly(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.Build(t, "./cmd/mergen")
	h := newHost(t, map[string]string{"MGR_SUPERVISOR": "systemd", "MGR_LOG_LEVEL": "debug"})
	socket := h.env["MGR_API_SOCKET"]
	logPath := h.path("daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(testenv.Tool(t, "unshare"), "--net", "/bin/sh", "-c", `ip link set lo up && exec "$0" server`, bin)
	cmd.Env = binaryEnv(h, "MGR_HTTP_ADDR", "MGR_API_SOCKET")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })

	sock := unixClient(socket)
	sock.Timeout = time.Second
	testenv.Eventually(t, 30*time.Second, "the daemon to answer on its socket "+socket+" (log: "+logPath+")", func() bool {
		resp, err := sock.Get("http://mergen/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	code, body := callWith(t, sock, "GET", "http://mergen/v1/vms", nil, nil)
	mustStatus(t, code, body, 200)

	pid := cmd.Process.Pid // unshare and sh exec the daemon: one process
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != bin {
		t.Fatalf("pid %d runs %s, not the daemon", pid, exe)
	}
	listening := listeningSockets(t, pid)
	if len(listening) == 0 {
		t.Fatal("the daemon holds no listening TCP socket")
	}
	for _, addr := range listening {
		if !strings.HasPrefix(addr, "127.0.0.1:") && !strings.HasPrefix(addr, "[::1]:") {
			t.Errorf("the daemon listens on %s, not loopback", addr)
		}
	}
	if len(listening) != 1 || listening[0] != "127.0.0.1:8080" {
		t.Errorf("the daemon listens on %v; want 127.0.0.1:8080 alone", listening)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("the daemon after SIGTERM: %v", err)
	}
	out, _ := os.ReadFile(logPath)
	if !strings.Contains(string(out), "addr=127.0.0.1:8080") {
		t.Errorf("the daemon's log does not give its address:\n%s", out)
	}
	if tok := h.token(t); strings.Contains(string(out), tok) {
		t.Errorf("the daemon's output holds its token:\n%s", out)
	}
	if _, err := os.Lstat(socket); !os.IsNotExist(err) {
		t.Errorf("the socket is left after SIGTERM (%v)", err)
	}
}

// listeningSockets are the local addresses of the TCP sockets in LISTEN
// state that process pid holds, from its network namespace's /proc tables.
func listeningSockets(t *testing.T, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] {
				continue
			}
			out = append(out, procAddr(t, fields[1]))
		}
		f.Close()
	}
	return out
}

// procAddr reads an address of /proc/net/tcp{,6}: hex IP in host byte
// order per 32-bit word, hex port.
func procAddr(t *testing.T, s string) string {
	t.Helper()
	hexIP, hexPort, _ := strings.Cut(s, ":")
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, len(hexIP)/2)
	for i := range raw {
		v, err := strconv.ParseUint(hexIP[2*i:2*i+2], 16, 8)
		if err != nil {
			t.Fatal(err)
		}
		raw[i] = byte(v)
	}
	ip := make(net.IP, len(raw))
	for w := 0; w < len(raw); w += 4 { // each word little-endian
		ip[w], ip[w+1], ip[w+2], ip[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(int(port)))
}
