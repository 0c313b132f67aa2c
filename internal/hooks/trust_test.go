package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
)

// Command hooks in an API request run as the daemon's user: refused, naming
// the field and the way to allow them, unless the operator allows them.
func TestAPIRequestsCarryCommandHooksOnlyWhenAllowed(t *testing.T) {
	doc := []byte(`{"onCreate":[{"url":"http://127.0.0.1:1/x"}],"onDelete":[{"url":"http://127.0.0.1:1/y"},{"command":["/bin/sh","-c","id"],"strict":true}]}`)
	_, err := ParseRequest(doc, ParseOptions{})
	want := "hooks.onDelete[1].command: command hooks in API requests are disabled; an operator can allow them with MGR_ALLOW_VM_COMMAND_HOOKS=1 or use a global hook file in MGR_GLOBAL_HOOKS_DIR"
	if !errdefs.IsInvalid(err) || err.Error() != want {
		t.Fatalf("ParseRequest without AllowCommands = %v; want invalid %q", err, want)
	}
	// Refused whatever else is wrong with it: a caller learns nothing more
	// about command hooks than that they are off.
	if _, err := ParseRequest([]byte(`{"onStart":[{"command":["sh"]}]}`), ParseOptions{}); !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "hooks.onStart[0].command: command hooks in API requests are disabled") {
		t.Fatalf("a relative command hook without AllowCommands = %v", err)
	}

	set, err := ParseRequest(doc, ParseOptions{AllowCommands: true})
	if err != nil || len(set.OnDelete) != 2 || set.OnDelete[1].Command[0] != "/bin/sh" {
		t.Fatalf("ParseRequest with AllowCommands = %+v, %v; want the command hook", set.OnDelete, err)
	}
	if _, err := ParseRequest([]byte(`{"onStart":[{"command":["sh"]}]}`), ParseOptions{AllowCommands: true}); !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), `hooks.onStart[0].command: "sh" must be an absolute path`) {
		t.Fatalf("a relative command hook with AllowCommands = %v; want invalid, naming the field", err)
	}
	// HTTP hooks need no permission; other mistakes are invalid as well.
	if _, err := ParseRequest([]byte(`{"onCreate":[{"url":"https://hooks.example/x"}]}`), ParseOptions{}); err != nil {
		t.Fatalf("an HTTP hook without AllowCommands = %v", err)
	}
	if _, err := ParseRequest([]byte(`{"onCreate":[{"url":"file:///etc/passwd"}]}`), ParseOptions{}); !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "hooks.onCreate[0].url:") {
		t.Fatalf("a bad URL = %v; want invalid naming the field", err)
	}

	// What was accepted once is stored, and read back with Parse at every
	// later event: it keeps its command hooks.
	if set, err := Parse(doc); err != nil || len(set.OnDelete) != 2 {
		t.Fatalf("Parse of a stored hooks.json with a command hook = %+v, %v", set, err)
	}
}

// Global hook files need root on the host to write: they keep commands.
func TestGlobalFilesKeepCommandHooks(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "10-audit.json"), []byte(`{"onCreate":[{"command":["/bin/true","--quiet"]}]}`), 0o644)
	sets, err := LoadDir(dir)
	if err != nil || len(sets) != 1 || sets[0].OnCreate[0].Command[0] != "/bin/true" {
		t.Fatalf("LoadDir = %+v, %v; want the command hook", sets, err)
	}
	if sets[0].Source != "10-audit.json" {
		t.Fatalf("source %q, want the file's name", sets[0].Source)
	}
	if err := Run(context.Background(), quiet, sets[0], Data{Event: OnCreate, VMID: "v"}); err != nil {
		t.Fatal(err)
	}
}

// A failed command hook tells the caller which hook and how it ended; what
// it printed goes to the daemon log only.
func TestFailedCommandHookErrorHasTheStatusAndTheLogHasTheOutput(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "20-check.json"), []byte(`{"onDelete":[{"command":["/bin/true"]},{"command":["/bin/sh","-c","echo SECRET; echo ALSO-SECRET >&2; exit 3","sh","ARGUMENT"],"strict":true}]}`), 0o644)
	sets, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	err = Run(context.Background(), log, sets[0], Data{Event: OnDelete, VMID: "vm-1"})
	want := "onDelete hook 1 of vm vm-1 (global 20-check.json, command /bin/sh) failed: exit status 3"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	for _, s := range []string{"SECRET", "echo", "ARGUMENT"} {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("error %q carries %q (output or arguments)", err, s)
		}
	}
	if !strings.Contains(buf.String(), "SECRET") || !strings.Contains(buf.String(), "ALSO-SECRET") || !strings.Contains(buf.String(), "exit status 3") {
		t.Fatalf("daemon log lacks the output or the status:\n%s", buf.String())
	}

	// A signal and a timeout are named as such.
	killed := Set{OnStop: []Hook{{Command: []string{"/bin/sh", "-c", "echo SECRET; kill -9 $$"}, Strict: true}}}
	err = Run(context.Background(), quiet, killed, Data{Event: OnStop, VMID: "vm-1"})
	if err == nil || !strings.Contains(err.Error(), "onStop hook 0 of vm vm-1 (per-VM hooks.json, command /bin/sh) failed: signal: killed") || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("killed command: %v", err)
	}
}

// A failed HTTP hook tells the caller the status, never the answer: the
// hook's URL is the caller's choice, and echoing what it answered would let
// the caller read from anywhere the daemon can reach.
func TestFailedHTTPHookErrorHasTheStatusNotTheBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte("SECRET internal answer"))
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	u := "http://user:pw@" + host + "/private/path?token=abc"
	set := Set{OnCreate: []Hook{{URL: u, Method: "put", Headers: map[string]string{"Authorization": "Bearer s3cret"}, Strict: true}}}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	err := Run(context.Background(), log, set, Data{Event: OnCreate, VMID: "vm-2"})
	want := "onCreate hook 0 of vm vm-2 (per-VM hooks.json, http PUT " + host + ") failed: HTTP 500 Internal Server Error"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if !strings.Contains(buf.String(), "SECRET internal answer") {
		t.Fatalf("daemon log lacks the answer:\n%s", buf.String())
	}
	for _, secret := range []string{"s3cret", "pw@", "token=abc", "/private/path"} {
		if strings.Contains(buf.String(), secret) {
			t.Fatalf("log contains %q:\n%s", secret, buf.String())
		}
	}
}

// Something that answers but not in HTTP (here a banner, as a mail or
// database server would send) is "no valid HTTP answer": the transport's
// own error quotes the banner, so it goes to the log only.
func TestNonHTTPAnswerIsNotQuoted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("HTTP/1.1 SECRET-BANNER\r\n\r\n"))
			c.Close()
		}
	}()
	set := Set{OnStart: []Hook{{URL: "http://" + ln.Addr().String() + "/", Strict: true}}}
	var buf bytes.Buffer
	err = Run(context.Background(), slog.New(slog.NewTextHandler(&buf, nil)), set, Data{Event: OnStart, VMID: "v"})
	if err == nil || !strings.HasSuffix(err.Error(), "failed: no valid HTTP answer") || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("err = %v; want no valid HTTP answer, without the banner", err)
	}
	if !strings.Contains(buf.String(), "SECRET-BANNER") {
		t.Fatalf("daemon log lacks the transport's error:\n%s", buf.String())
	}

	// Nothing listening: the caller learns that much, in our words.
	addr := ln.Addr().String()
	ln.Close()
	set = Set{OnStart: []Hook{{URL: "http://" + addr + "/", Strict: true}}}
	err = Run(context.Background(), quiet, set, Data{Event: OnStart, VMID: "v"})
	if err == nil || !strings.HasSuffix(err.Error(), "failed: cannot connect: connection refused") {
		t.Fatalf("err = %v; want cannot connect", err)
	}
}

// Redirects are followed only to the hook's own scheme, host and port. Two
// servers on 127.0.0.1 with different ports are different hosts: a port is
// a different server, as far as the hook's author is concerned.
func TestRedirectsStayOnTheHooksHost(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	var landed atomic.Int32
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, other.URL+"/steal", http.StatusFound)
		case "/moved":
			http.Redirect(w, r, "/here", http.StatusPermanentRedirect)
		case "/here":
			b := new(bytes.Buffer)
			b.ReadFrom(r.Body)
			body = b.String()
			landed.Add(1)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		}
	}))
	defer srv.Close()
	run := func(path string) error {
		set := Set{OnCreate: []Hook{{URL: srv.URL + path, Strict: true}}}
		return Run(context.Background(), quiet, set, Data{Event: OnCreate, VMID: "v"})
	}

	err := run("/away")
	if err == nil || !strings.HasSuffix(err.Error(), "failed: HTTP 302 Found: redirect to another host not followed") || strings.Contains(err.Error(), "/steal") {
		t.Fatalf("cross-host redirect: %v", err)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the other host got %d requests", n)
	}

	if err := run("/moved"); err != nil || landed.Load() != 1 {
		t.Fatalf("same-host redirect: %v (%d requests landed)", err, landed.Load())
	}
	var d Data
	if json.Unmarshal([]byte(body), &d) != nil || d.VMID != "v" {
		t.Fatalf("the redirected request's body is %q; want the hook's document", body)
	}

	if err := run("/loop"); err == nil || !strings.HasSuffix(err.Error(), "failed: HTTP 302 Found: more than 3 redirects") {
		t.Fatalf("redirect loop: %v", err)
	}
}

// hooks.json as the API serves it: header names kept, values hidden,
// everything else as stored.
func TestRedactHidesHeaderValuesOnly(t *testing.T) {
	stored := Set{
		OnCreate: []Hook{{URL: "https://inv.example/vms", Method: "PUT", Headers: map[string]string{"Authorization": "Bearer s3cret", "X-Api-Key": "k3y"}, Strict: true}},
		OnStart:  []Hook{{URL: "http://dns.example/add", TimeoutSeconds: 9}},
		OnDelete: []Hook{{Command: []string{"/usr/local/bin/rm-dns", "--zone", "z"}, Env: map[string]string{"ZONE": "vms"}}},
	}
	b, _ := json.MarshalIndent(stored, "", "  ")
	b = append(b, '\n')
	out, err := Redact(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"s3cret", "k3y"} {
		if bytes.Contains(out, []byte(secret)) {
			t.Fatalf("redacted hooks.json has %q:\n%s", secret, out)
		}
	}
	want := stored
	want.OnCreate = []Hook{stored.OnCreate[0]}
	want.OnCreate[0].Headers = map[string]string{"Authorization": Redacted, "X-Api-Key": Redacted}
	wantJSON, _ := json.MarshalIndent(want, "", "  ")
	wantJSON = bytes.ReplaceAll(wantJSON, []byte(`\u003credacted\u003e`), []byte(Redacted))
	if string(out) != string(wantJSON)+"\n" {
		t.Fatalf("Redact =\n%s\nwant\n%s", out, wantJSON)
	}
	for _, empty := range []string{"", "null", "{}\n"} {
		if out, err := Redact([]byte(empty)); err != nil || strings.TrimSpace(string(out)) != strings.TrimSpace(empty) {
			t.Errorf("Redact(%q) = %q, %v", empty, out, err)
		}
	}
	if _, err := Redact([]byte(`{"onCreate":`)); err == nil {
		t.Error("Redact of a torn file succeeded; it must not be served as it is")
	}
}
