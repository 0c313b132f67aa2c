package hooks

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/store"
)

var quiet = slog.New(slog.DiscardHandler)

func TestParseRejectsBadHooksNamingTheField(t *testing.T) {
	cases := []struct {
		json, want string
	}{
		{`{"onCreate":[{"url":"file:///etc/passwd"}]}`, `hooks.onCreate[0].url: unsupported scheme "file" (want http or https)`},
		{`{"onStart":[{}]}`, "hooks.onStart[0].url: a hook needs url or command"},
		{`{"onStop":[{"url":"http://x","command":["/bin/true"]}]}`, "hooks.onStop[0].url: a hook is either"},
		{`{"onDelete":[{"command":["true"]}]}`, `hooks.onDelete[0].command: "true" must be an absolute path`},
		{`{"onDelete":[{"command":[]}]}`, "hooks.onDelete[0].command: empty"},
		{`{"onDelete":[{"command":[""]}]}`, "hooks.onDelete[0].command: empty"},
		{`{"onCreate":[{"url":"http://x","timeoutSeconds":301}]}`, "hooks.onCreate[0].timeoutSeconds: 301 is out of range 1..300"},
		{`{"onCreate":[{"url":"http://x","timeoutSeconds":-1}]}`, "hooks.onCreate[0].timeoutSeconds: -1 is out of range"},
		{`{"onCreate":[{"url":"http://x","timeoutSeconds":"5"}]}`, "hooks.onCreate[0]: timeoutSeconds: want a whole number, got string"},
		{`{"onCreate":[{"url":"http://x","method":"TRACE"}]}`, `hooks.onCreate[0].method: "TRACE" is not one of`},
		{`{"onCreate":[{"url":"http:///path"}]}`, "hooks.onCreate[0].url: \"http:///path\" has no host"},
		{`{"onCreate":[{"url":"http://x","headers":{"Bad Header":"v"}}]}`, "hooks.onCreate[0].headers"},
		{`{"onCreate":[{"url":"http://x","env":{"A":"1"}}]}`, "hooks.onCreate[0].env: only command hooks take env"},
		{`{"onCreate":[{"command":["/bin/true"],"headers":{"A":"1"}}]}`, "hooks.onCreate[0].method: only HTTP hooks take method and headers"},
		{`{"onCreate":[{"command":["/bin/true"],"env":{"A=B":"1"}}]}`, `hooks.onCreate[0].env: "A=B" is not a variable name`},
		{`{"onBoot":[]}`, "hooks.onBoot: unknown event (want onCreate, onStart, onStop, onDelete, onReady, onUnhealthy, onFailed or onRestart)"},
		{`{"onFailed":[{"url":"http://x","strict":true}]}`, "hooks.onFailed[0].strict: no operation waits for onFailed hooks, so they cannot be strict"},
		{`{"onCreate":[{"url":"http://x","retries":3}]}`, `hooks.onCreate[0]: unknown field "retries"`},
		{`{"onCreate":"nope"}`, "hooks.onCreate: want a list of hooks"},
		{`{"onCreate":["http://x"]}`, "hooks.onCreate[0]: want an object (a hook), got string"},
		{`[1]`, "hooks: want an object of event lists"},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want error containing %q", tc.json, err, tc.want)
		}
	}
	for _, ok := range []string{``, `null`, `{}`, `{"onCreate":[{"url":"https://hooks.example/x","method":"put","headers":{"Authorization":"Bearer t"},"strict":true}],"onDelete":[{"command":["/bin/true"],"env":{"A":"1"}}]}`} {
		if _, err := Parse([]byte(ok)); err != nil {
			t.Errorf("Parse(%q) = %v, want ok", ok, err)
		}
	}
}

func TestParseKeepsHookOrder(t *testing.T) {
	set, err := Parse([]byte(`{"onStart":[{"url":"http://a"},{"command":["/b"]},{"url":"http://c","timeoutSeconds":9,"strict":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	got := set.For(OnStart)
	if len(got) != 3 || got[0].URL != "http://a" || got[1].Command[0] != "/b" || got[2].TimeoutSeconds != 9 || !got[2].Strict {
		t.Fatalf("onStart = %+v", got)
	}
	if len(set.For(OnCreate)) != 0 {
		t.Fatalf("onCreate = %+v, want none", set.For(OnCreate))
	}
}

func TestHTTPHookGetsTheVMContext(t *testing.T) {
	var got Data
	var auth, method string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method, auth = r.Method, r.Header.Get("Authorization")
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &got)
	}))
	defer srv.Close()
	set, err := Parse([]byte(`{"onStart":[{"url":"` + srv.URL + `/start","method":"PUT","headers":{"Authorization":"Bearer secret"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	d := Data{Event: OnStart, VMID: "vm-1", GuestIP: "172.30.0.2", HTTPPort: 80, Ports: []store.Port{{Guest: 80, Host: 20000, Protocol: "tcp"}}, Tags: map[string]string{"app": "a"}, Metadata: json.RawMessage(`{"k":1}`)}
	if err := Run(context.Background(), quiet, set, d); err != nil {
		t.Fatal(err)
	}
	if method != "PUT" || auth != "Bearer secret" {
		t.Fatalf("method %q auth %q", method, auth)
	}
	if got.VMID != "vm-1" || got.Event != OnStart || got.GuestIP != "172.30.0.2" || got.Ports[0].Host != 20000 || got.Tags["app"] != "a" || string(got.Metadata) != `{"k":1}` {
		t.Fatalf("hook body %+v", got)
	}
}

func TestStrictFailureStopsBestEffortFailureContinues(t *testing.T) {
	var calls atomic.Int32
	fail := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "nope", http.StatusInternalServerError)
	}))
	defer fail.Close()
	okSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	defer okSrv.Close()

	bestEffort := Set{OnCreate: []Hook{{URL: fail.URL}, {URL: okSrv.URL}}}
	if err := Run(context.Background(), quiet, bestEffort, Data{Event: OnCreate, VMID: "v"}); err != nil {
		t.Fatalf("best-effort failure returned %v", err)
	}
	if calls.Load() != 2 {
		t.Fatalf("%d calls, want both hooks to run", calls.Load())
	}
	calls.Store(0)
	strict := Set{OnCreate: []Hook{{URL: fail.URL, Strict: true}, {URL: okSrv.URL}}}
	err := Run(context.Background(), quiet, strict, Data{Event: OnCreate, VMID: "v"})
	if err == nil || !strings.Contains(err.Error(), "HTTP 500") || !strings.Contains(err.Error(), "vm v") || strings.Contains(err.Error(), "nope") {
		t.Fatalf("strict failure: %v; want the status and the VM, not the answer's body", err)
	}
	if calls.Load() != 1 {
		t.Fatalf("hooks after a failed strict hook ran (%d calls)", calls.Load())
	}
}

func TestHookTimeoutIsAFailure(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	set := Set{OnStop: []Hook{{URL: srv.URL, TimeoutSeconds: 1, Strict: true}}}
	err := Run(context.Background(), quiet, set, Data{Event: OnStop, VMID: "v"})
	if err == nil || !strings.Contains(err.Error(), "no answer within 1s") {
		t.Fatalf("timeout: %v", err)
	}
}

func TestCommandHookGetsEnvAndStdin(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := filepath.Join(dir, "hook.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n{ echo \"$MERGEN_EVENT $MERGEN_VM_ID $MERGEN_VM_GUEST_IP $MERGEN_VM_HTTP_PORT $MERGEN_VM_PORTS $MERGEN_VM_TAGS $EXTRA\"; cat; } > "+out+"\n"), 0o755)
	set := Set{OnDelete: []Hook{{Command: []string{script}, Env: map[string]string{"EXTRA": "x"}}}}
	if err := Run(context.Background(), quiet, set, Data{Event: OnDelete, VMID: "vm-9", GuestIP: "172.30.0.9", HTTPPort: 8080, Ports: []store.Port{{Guest: 8080, Host: 20001, Protocol: "tcp"}}, Tags: map[string]string{"app": "web"}}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	lines := strings.SplitN(string(b), "\n", 2)
	if lines[0] != `onDelete vm-9 172.30.0.9 8080 [{"guest":8080,"host":20001,"protocol":"tcp"}] {"app":"web"} x` || !strings.Contains(lines[1], `"vmId":"vm-9"`) {
		t.Fatalf("hook saw %q", b)
	}
	failing := Set{OnDelete: []Hook{{Command: []string{"/bin/sh", "-c", "echo broken >&2; exit 3"}, Strict: true}}}
	err := Run(context.Background(), quiet, failing, Data{Event: OnDelete, VMID: "v"})
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || strings.Contains(err.Error(), "broken") {
		t.Fatalf("failing command: %v; want the exit status, not the output", err)
	}
	slow := Set{OnDelete: []Hook{{Command: []string{"/bin/sleep", "30"}, TimeoutSeconds: 1, Strict: true}}}
	err = Run(context.Background(), quiet, slow, Data{Event: OnDelete, VMID: "v"})
	if err == nil || !strings.Contains(err.Error(), "within 1s") {
		t.Fatalf("slow command: %v", err)
	}
}

func TestGlobalHooksLoadInNameOrder(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "20-b.json"), []byte(`{"onStart":[{"url":"http://b"}]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "10-a.json"), []byte(`{"onStart":[{"url":"http://a"}]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte(`ignored`), 0o644)
	sets, err := LoadDir(dir)
	if err != nil || len(sets) != 2 || sets[0].OnStart[0].URL != "http://a" || sets[1].OnStart[0].URL != "http://b" {
		t.Fatalf("LoadDir = %+v, %v", sets, err)
	}
	os.WriteFile(filepath.Join(dir, "30-bad.json"), []byte(`{"onStart":[{"url":"ftp://x"}]}`), 0o644)
	sets, err = LoadDir(dir)
	if len(sets) != 2 || err == nil || !strings.Contains(err.Error(), "30-bad.json") {
		t.Fatalf("a bad file must be reported and skipped: %d sets, %v", len(sets), err)
	}
	if sets, err := LoadDir(filepath.Join(dir, "missing")); err != nil || len(sets) != 0 {
		t.Fatalf("missing dir: %v %v", sets, err)
	}
}

func TestLogsNeverCarrySecrets(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(403) }))
	defer srv.Close()
	u := strings.Replace(srv.URL, "http://", "http://user:pw@", 1) + "/x?token=abc"
	set := Set{OnStart: []Hook{{URL: u, Headers: map[string]string{"Authorization": "Bearer s3cret"}}}}
	Run(context.Background(), log, set, Data{Event: OnStart, VMID: "v"})
	for _, secret := range []string{"s3cret", "pw@", "token=abc"} {
		if strings.Contains(buf.String(), secret) {
			t.Fatalf("log contains %q:\n%s", secret, buf.String())
		}
	}
	if !strings.Contains(buf.String(), "HTTP 403") {
		t.Fatalf("log does not say what failed:\n%s", buf.String())
	}
}

// A hook endpoint that answers 2xx and then streams without end must not
// keep the hook (and the VM operation) waiting: only the start of a
// response is read.
func TestEndlessResponseBodyIsReadOnlyInPart(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// More than a hook reads, then nothing more until the client hangs
		// up: a client reading to the end would wait for its timeout.
		w.Write([]byte(strings.Repeat("x", 256<<10)))
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(time.Minute):
		}
	}))
	defer srv.Close()
	set := Set{OnCreate: []Hook{{URL: srv.URL, TimeoutSeconds: 5, Strict: true}}}
	if err := Run(context.Background(), quiet, set, Data{Event: OnCreate, VMID: "v"}); err != nil {
		t.Fatalf("endless 200 response: %v", err)
	}
}

// A command hook that starts children and times out takes its whole
// process group down, and its output is cut to a bounded excerpt.
func TestCommandHookTimeoutKillsChildrenAndOutputIsBounded(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	set := Set{OnStop: []Hook{{Command: []string{"/bin/sh", "-c", "sleep 60 & echo $! > " + pidFile + "; wait"}, TimeoutSeconds: 1, Strict: true}}}
	err := Run(context.Background(), quiet, set, Data{Event: OnStop, VMID: "v"})
	if err == nil || !strings.Contains(err.Error(), "did not finish within 1s") {
		t.Fatalf("err = %v", err)
	}
	b, rerr := os.ReadFile(pidFile)
	if rerr != nil {
		t.Fatal(rerr)
	}
	requireGone(t, strings.TrimSpace(string(b)))

	var buf strings.Builder
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	loud := Set{OnStop: []Hook{{Command: []string{"/bin/sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' y; exit 1"}, Strict: true}}}
	err = Run(context.Background(), log, loud, Data{Event: OnStop, VMID: "v"})
	if err == nil || !strings.Contains(err.Error(), "exit status 1") || strings.Contains(err.Error(), "yyy") {
		t.Fatalf("loud failing command: error of %d bytes: %.120s", len(errString(err)), errString(err))
	}
	var line struct{ Detail string }
	if jerr := json.Unmarshal([]byte(buf.String()), &line); jerr != nil || line.Detail != strings.Repeat("y", maxLogged) {
		t.Fatalf("logged output of %d bytes (%v), want the first %d", len(line.Detail), jerr, maxLogged)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// requireGone fails unless process pid has exited (it may linger briefly as
// a zombie of init, which counts as gone).
func requireGone(t *testing.T, pid string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("child process %s of a timed-out hook is still running", pid)
}
