package daemon_test

import (
	"context"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mergenhq/mergen/internal/daemon"
	"github.com/mergenhq/mergen/internal/testenv"
)

// The daemon serves the same API on TCP, where it needs the token, and on
// its unix socket, where it does not: the socket is mode 0660 (in group
// mergen when the group exists) and is removed at shutdown.
func TestServeAnswersOnTheSocketWithoutAToken(t *testing.T) {
	cfg := hostConfig(t, nil)
	d := serve(t, cfg)
	fi, err := os.Lstat(cfg.APISocket)
	if err != nil {
		t.Fatalf("no socket at MGR_API_SOCKET: %v", err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket %s: mode %v, want a socket with mode 0660", cfg.APISocket, fi.Mode())
	}
	if g, err := user.LookupGroup(daemon.SocketGroup); err == nil {
		if gid, _ := strconv.Atoi(g.Gid); int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
			t.Errorf("socket group %d, want %s (%s)", fi.Sys().(*syscall.Stat_t).Gid, daemon.SocketGroup, g.Gid)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(cfg.APISocket))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("the socket's directory holds %s, a leftover of making the socket", e.Name())
		}
	}

	sock := overSocket(cfg.APISocket)
	if code, body := d.do(t, sock, "GET", "http://mergen/v1/vms", "", ""); code != http.StatusOK {
		t.Errorf("GET /v1/vms over the socket without a token: %d %s; want 200", code, body)
	}
	if code, body := d.do(t, sock, "POST", "http://mergen/machines", `{"id":"sock"}`, ""); code != http.StatusServiceUnavailable {
		t.Errorf("POST /machines over the socket: %d %s; want the manager's answer (503, no service manager)", code, body)
	}
	if code, _ := d.do(t, loopback, "GET", "http://"+d.addr+"/v1/vms", "", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/vms over TCP without a token: %d, want 401", code)
	}
	if code, _ := d.do(t, sock, "POST", "http://mergen/v1/vms", "", ""); code != http.StatusBadRequest {
		t.Errorf("POST /v1/vms over the socket, no body: %d, want 400", code)
	}
	req, _ := http.NewRequest("POST", "http://mergen/v1/vms", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Origin", "http://evil.example")
	if resp, err := sock.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign origin over the socket: %v %v; want 403", resp, err)
	}

	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(cfg.APISocket); !os.IsNotExist(err) {
		t.Errorf("the socket is left after shutdown (%v)", err)
	}
}

// A missing token file is created (with its directory) holding one token,
// mode 0600, and that token opens the TCP API.
func TestServeCreatesAMissingTokenFile(t *testing.T) {
	cfg := hostConfig(t, nil)
	log := &testenv.Log{}
	d := serveLogged(t, cfg, slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	fi, err := os.Stat(cfg.APITokenFile)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(cfg.APITokenFile)
	if fi.Mode().Perm() != 0o600 || strings.Count(string(b), "\n") != 1 || len(d.token) != 43 {
		t.Errorf("token file mode %04o with %d lines, token of %d characters; want 0600, one line, 43", fi.Mode().Perm(), strings.Count(string(b), "\n"), len(d.token))
	}
	if code := d.get(t, "/v1/vms", nil); code != http.StatusOK {
		t.Errorf("GET /v1/vms with the created token: %d", code)
	}
	d.do(t, loopback, "GET", "http://"+d.addr+"/v1/vms", "", "Bearer "+strings.Repeat("x", 43))
	d.do(t, loopback, "GET", "http://"+d.addr+"/v1/vms", "", "Basic "+d.token)
	d.stop()
	logs := log.String()
	if !strings.Contains(logs, "created the API token file") || !strings.Contains(logs, "status=401") {
		t.Errorf("log does not tell of the new file and the refusals:\n%s", logs)
	}
	if strings.Contains(logs, d.token) {
		t.Errorf("the daemon logged its token:\n%s", logs)
	}
}

// A token file unfit to use stops the daemon before it touches the host: the
// error names the variable, the file and why; Ready is never called and no
// root is created.
func TestServeRefusesAnUnfitTokenFile(t *testing.T) {
	cases := []struct {
		name  string
		setup func(path string) error
		want  string
	}{
		{"world-readable", func(p string) error { return writeToken(p, strings.Repeat("t", 43)+"\n", 0o644) }, "group or others (mode 0644)"},
		{"empty", func(p string) error { return writeToken(p, "", 0o600) }, "holds no token"},
		{"short token", func(p string) error { return writeToken(p, "short\n", 0o600) }, "shorter than 32"},
		{"unreadable (a directory)", func(p string) error { return os.MkdirAll(p, 0o700) }, "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := hostConfig(t, nil)
			if err := c.setup(cfg.APITokenFile); err != nil {
				t.Fatal(err)
			}
			readied := false
			err := daemon.Serve(context.Background(), cfg, slog.New(slog.DiscardHandler), daemon.Options{Ready: func(string) { readied = true }})
			if err == nil || readied {
				t.Fatalf("Serve = %v, ready %v; want refused", err, readied)
			}
			for _, w := range []string{"MGR_API_TOKEN_FILE", cfg.APITokenFile, c.want} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, root := range []string{cfg.ConfigRoot, cfg.RunRoot} {
				if _, err := os.Stat(root); !os.IsNotExist(err) {
					t.Errorf("%s exists after a refused start (%v)", root, err)
				}
			}
		})
	}
}

func writeToken(path, content string, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		return err
	}
	return os.Chmod(path, perm)
}

// A socket left by a daemon that died is replaced; a socket another daemon
// answers on, or a file that is not a socket, stops the start with the
// reason, and the other daemon keeps its socket.
func TestServeReplacesOnlyAStaleSocket(t *testing.T) {
	cfg := hostConfig(t, nil)
	if err := os.MkdirAll(filepath.Dir(cfg.APISocket), 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.APISocket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	first := serve(t, cfg)
	if code, _ := first.do(t, overSocket(cfg.APISocket), "GET", "http://mergen/v1/vms", "", ""); code != http.StatusOK {
		t.Fatalf("daemon over a stale socket: %d", code)
	}

	second := cfg
	second.HTTPAddr = "127.0.0.1:0"
	err = daemon.Serve(context.Background(), second, slog.New(slog.DiscardHandler), daemon.Options{})
	if err == nil || !strings.Contains(err.Error(), "MGR_API_SOCKET") || !strings.Contains(err.Error(), "another daemon answers") {
		t.Fatalf("second daemon on a live socket: %v; want refused naming MGR_API_SOCKET", err)
	}
	if code, _ := first.do(t, overSocket(cfg.APISocket), "GET", "http://mergen/v1/vms", "", ""); code != http.StatusOK {
		t.Fatalf("the first daemon lost its socket to the refused one: %d", code)
	}

	other := hostConfig(t, nil)
	if err := os.MkdirAll(filepath.Dir(other.APISocket), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other.APISocket, []byte("not a socket"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = daemon.Serve(context.Background(), other, slog.New(slog.DiscardHandler), daemon.Options{})
	if err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("a regular file at MGR_API_SOCKET: %v; want refused", err)
	}
	if b, _ := os.ReadFile(other.APISocket); string(b) != "not a socket" {
		t.Error("the file at MGR_API_SOCKET was touched")
	}
}

// With MGR_API_AUTH=none (loopback only) TCP needs no token, no token file is
// made, and the daemon warns at start.
func TestServeWithoutAuthWarns(t *testing.T) {
	cfg := hostConfig(t, map[string]string{"MGR_API_AUTH": "none"})
	log := &testenv.Log{}
	d := serveLogged(t, cfg, slog.New(slog.NewTextHandler(log, nil)))
	if code, body := d.do(t, loopback, "GET", "http://"+d.addr+"/v1/vms", "", ""); code != http.StatusOK {
		t.Errorf("GET /v1/vms without a token, auth none: %d %s", code, body)
	}
	if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "MGR_API_AUTH=none") {
		t.Errorf("no warning at start:\n%s", log)
	}
	if _, err := os.Stat(cfg.APITokenFile); !os.IsNotExist(err) {
		t.Errorf("a token file was made with auth none (%v)", err)
	}
}
