package daemon_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mergenhq/mergen/internal/auth"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/daemon"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/wire"
)

// fixtureID is the VM of internal/store/testdata/v1: a record as mergen
// wrote it before records had a version, with its env file.
const fixtureID = "3f0c2b1e-7a4d-4e5f-9b6a-1c2d3e4f5a6b"

// hostConfig is a daemon configuration over temporary roots, listening on
// a free loopback port, with the detached supervisor and no lifecycle
// program (so the service manager is reported unusable). The base assets
// directory holds a kernel and a root file system for creates.
func hostConfig(t *testing.T, env map[string]string) config.Config {
	t.Helper()
	// Short: a VM's socket path must fit in a unix socket address.
	d, err := os.MkdirTemp("", "mergen-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	vars := map[string]string{
		"MGR_HTTP_ADDR":      "127.0.0.1:0",
		"MGR_CONFIG_ROOT":    filepath.Join(d, "vm.d"),
		"MGR_DATA_ROOT":      filepath.Join(d, "data"),
		"MGR_RUN_ROOT":       filepath.Join(d, "run"),
		"MGR_VMM":            "firecracker",
		"MGR_SUPERVISOR":     "detached",
		"MGR_LIFECYCLE_BIN":  filepath.Join(d, "no-lifecycle"),
		"MGR_API_TOKEN_FILE": filepath.Join(d, "etc", "api-token"),
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.FromEnv(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{cfg.DefaultKernel, cfg.DefaultRootfs} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(filepath.Base(p)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// running is a daemon served by Serve in the background.
type running struct {
	addr    string
	token   string // the first of its token file
	cfg     config.Config
	cancel  context.CancelFunc
	done    chan error
	stopped sync.Once
	err     error // what Serve returned, once stopped
}

// serve starts the daemon and waits until it reports its address.
func serve(t *testing.T, cfg config.Config) *running {
	t.Helper()
	return serveLogged(t, cfg, slog.New(slog.DiscardHandler))
}

func serveLogged(t *testing.T, cfg config.Config, log *slog.Logger) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	ready := make(chan string, 1)
	go func() {
		r.done <- daemon.Serve(ctx, cfg, log, daemon.Options{Ready: func(addr string) { ready <- addr }})
	}()
	select {
	case r.addr = <-ready:
	case err := <-r.done:
		cancel()
		t.Fatalf("Serve returned before it was ready: %v", err)
	}
	t.Cleanup(func() { r.stop() })
	if cfg.APIAuth != "none" {
		tok, err := auth.First(cfg.APITokenFile)
		if err != nil {
			t.Fatal(err)
		}
		r.token = tok
	}
	return r
}

// stop cancels the daemon's context and returns what Serve returned.
func (r *running) stop() error {
	r.stopped.Do(func() {
		r.cancel()
		r.err = <-r.done
	})
	return r.err
}

// loopback talks to the daemon without any proxy.
var loopback = &http.Client{Transport: &http.Transport{Proxy: nil}}

// overSocket talks to a daemon through its unix socket.
func overSocket(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
}

// get is GET over TCP with the daemon's token.
func (r *running) get(t *testing.T, path string, v any) int {
	t.Helper()
	code, b := r.do(t, loopback, "GET", "http://"+r.addr+path, "", "Bearer "+r.token)
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, b)
		}
	}
	return code
}

// do sends one request with the given Authorization header (none when
// empty) and a JSON body (none when empty).
func (r *running) do(t *testing.T, c *http.Client, method, url, body, authorization string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// Serve listens on MGR_HTTP_ADDR, reports the bound address once it
// answers, serves the API and, when its context ends, shuts down cleanly:
// Serve returns nil and the port no longer answers.
func TestServeAnswersUntilItsContextEnds(t *testing.T) {
	cfg := hostConfig(t, nil)
	d := serve(t, cfg)
	if host, port, err := net.SplitHostPort(d.addr); err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("Ready gave %q (%v); want 127.0.0.1 and the bound port", d.addr, err)
	}
	var health struct {
		Status     string `json:"status"`
		Supervisor struct {
			Name      string `json:"name"`
			Available bool   `json:"available"`
			Error     string `json:"error"`
		} `json:"supervisor"`
	}
	if code := d.get(t, "/healthz", &health); code != http.StatusOK || health.Status != "ok" {
		t.Fatalf("/healthz: %d %+v; want 200 ok", code, health)
	}
	if s := health.Supervisor; s.Name != "detached" || s.Available || !strings.Contains(s.Error, "no-lifecycle") {
		t.Errorf("/healthz supervisor %+v; want detached, unavailable, naming the missing lifecycle program", s)
	}
	var list wire.VMList
	if code := d.get(t, "/v1/vms", &list); code != http.StatusOK || list.Count != 0 {
		t.Errorf("/v1/vms on an empty host: %d %+v", code, list)
	}
	if err := d.stop(); err != nil {
		t.Fatalf("Serve after cancel = %v; want nil", err)
	}
	if resp, err := loopback.Get("http://" + d.addr + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("the daemon still answers after shutdown: %s", resp.Status)
	}
}

// An address already in use is an error naming MGR_HTTP_ADDR, and Ready is
// never called.
func TestServeReportsAnAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := hostConfig(t, map[string]string{"MGR_HTTP_ADDR": ln.Addr().String()})
	readied := false
	err = daemon.Serve(context.Background(), cfg, slog.New(slog.DiscardHandler), daemon.Options{Ready: func(string) { readied = true }})
	if err == nil || !strings.Contains(err.Error(), "MGR_HTTP_ADDR") {
		t.Fatalf("Serve on a taken address = %v; want an error naming MGR_HTTP_ADDR", err)
	}
	if readied {
		t.Fatal("Ready was called for a daemon that never listened")
	}
}

// Before it serves, the daemon sweeps what interrupted creates and deletes
// left, and rewrites a version 1 record in the current form with the driver
// settings of its env file; the VM is then served with paths from the
// configured layout, and its address and port stay allocated.
func TestServeMigratesOldRecordsAndSweepsBeforeServing(t *testing.T) {
	cfg := hostConfig(t, nil)
	l := cfg.Layout()
	vmDir := l.VM(fixtureID).ConfigDir
	if err := os.MkdirAll(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, perm := range map[string]os.FileMode{"meta.json": 0o644, "env": 0o600} {
		b, err := os.ReadFile(filepath.Join("..", "store", "testdata", "v1", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vmDir, name), b, perm); err != nil {
			t.Fatal(err)
		}
	}
	staging := filepath.Join(cfg.ConfigRoot, layout.StagingPrefix+store.NewID()+"-1")
	trash := l.Trash(store.NewID(), "2")
	// A delete killed after its record went: run and data directories and
	// lock files of a VM that no longer exists. The fixture VM's own stay.
	killed := l.VM(store.NewID())
	kept := l.VM(fixtureID)
	for _, dir := range []string{staging, trash, killed.RunDir, killed.DataDir, kept.RunDir, kept.DataDir, l.LocksDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{killed.ConsoleLog, killed.SupervisorLog, killed.Lock, killed.StageLock, kept.ConsoleLog, kept.Lock} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	d := serve(t, cfg)

	for _, dir := range []string{staging, trash, killed.RunDir, killed.DataDir, killed.Lock, killed.StageLock} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s not swept at start (%v)", dir, err)
		}
	}
	for _, f := range []string{kept.ConsoleLog, kept.Lock} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s of an existing VM swept at start (%v)", f, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(vmDir, "meta.json"))
	if err != nil {
		t.Fatal(err)
	}
	var record struct {
		Version int             `json:"version"`
		Driver  config.Driver   `json:"driver"`
		Paths   json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(b, &record); err != nil {
		t.Fatal(err)
	}
	if record.Version != store.RecordVersion || record.Driver.FirecrackerBin != "/opt/firecracker/firecracker" || !record.Driver.Jailer || record.Driver.JailerUID != "990" {
		t.Errorf("meta.json after start: version %d, driver %+v; want version %d with the env file's driver settings", record.Version, record.Driver, store.RecordVersion)
	}
	if record.Paths != nil {
		t.Errorf("meta.json after start still stores paths: %s", record.Paths)
	}
	env, err := os.ReadFile(filepath.Join(vmDir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(env), "MGN_VM_ID="+fixtureID) || strings.Contains(string(env), "MGR_JAILER") || strings.Contains(string(env), "MGR_RUN_ROOT") {
		t.Errorf("env file after start:\n%s\nwant only the VM's identity and its config root", env)
	}

	var vm wire.VM
	if code := d.get(t, "/v1/vms/"+fixtureID, &vm); code != http.StatusOK {
		t.Fatalf("GET the migrated VM: %d", code)
	}
	if vm.Name != "web" || vm.Network.GuestIP != "172.30.0.7" || vm.Paths.ConfigDir != vmDir || !strings.HasPrefix(vm.Paths.ConsoleLog, cfg.DataRoot+"/") {
		t.Errorf("migrated VM served as name %q, guest %s, configDir %s, console %s; want web, 172.30.0.7 and paths under the configured roots",
			vm.Name, vm.Network.GuestIP, vm.Paths.ConfigDir, vm.Paths.ConsoleLog)
	}

	code, body := d.do(t, loopback, "POST", "http://"+d.addr+"/v1/vms", `{"ports":[{"guest":80,"host":20003}]}`, "Bearer "+d.token)
	if code != http.StatusConflict || !strings.Contains(string(body), fixtureID) {
		t.Errorf("create asking for the migrated VM's host port: %d %s; want 409 naming %s", code, body, fixtureID)
	}
}
