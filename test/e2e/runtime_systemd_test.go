package e2e

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/testenv/nspawn"
)

// containerHost runs the daemon as a service of a real systemd (PID 1 of a
// container) that supervises every VM as mergen@<id>.service.
type containerHost struct {
	c    *nspawn.Container
	h    *host
	bin  string
	port int
}

const daemonUnit = "mergen-e2e-daemon"

func (c *containerHost) exec(t *testing.T, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := c.c.Exec(ctx, args...)
	return string(out), err
}

func (c *containerHost) api(t *testing.T, method, path string, body any, out any) (int, []byte) {
	t.Helper()
	return callToken(t, c.c.HTTPClient(), c.h.token(t), method, fmt.Sprintf("http://127.0.0.1:%d%s", c.port, path), body, out)
}

func (c *containerHost) get(port int, path string) (string, error) {
	cl := c.c.HTTPClient()
	cl.Timeout = 2 * time.Second
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}

func (c *containerHost) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.exec(t, args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return out
}

func (c *containerHost) startDaemon(t *testing.T) {
	t.Helper()
	args := []string{"systemd-run", "--unit=" + daemonUnit, "--property=KillMode=process"}
	for k, v := range c.h.env {
		args = append(args, "--setenv="+k+"="+v)
	}
	args = append(args, fmt.Sprintf("--setenv=MGR_HTTP_ADDR=127.0.0.1:%d", c.port), c.bin, "server", "--install-units")
	c.run(t, args...)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if conn, err := c.c.Dial(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", c.port)); err == nil {
			conn.Close()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("daemon did not listen inside the container:\n%s", c.c.Journal(daemonUnit))
}

func (c *containerHost) killDaemon(t *testing.T) {
	c.run(t, "systemctl", "kill", "--signal=SIGKILL", "--kill-whom=main", daemonUnit)
	for i := 0; i < 100; i++ {
		out, _ := c.exec(t, "systemctl", "is-active", daemonUnit)
		if s := strings.TrimSpace(out); s != "active" && s != "deactivating" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.exec(t, "systemctl", "reset-failed", daemonUnit)
}

func (c *containerHost) restartDaemon(t *testing.T) { c.startDaemon(t) }

func (c *containerHost) files(t *testing.T) []string {
	out := rootFiles(c.h)
	// Units the daemon installed and any per-VM unit state.
	units, _ := c.exec(t, "systemctl", "list-units", "--all", "--no-legend", "mergen@*", "mergen-failure@*")
	for _, l := range strings.Split(units, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, "unit: "+l)
		}
	}
	return out
}

// TestVMRuntimeUnderSystemd boots a real guest under QEMU as the main
// process of mergen@<id>.service in a real systemd.
func TestVMRuntimeUnderSystemd(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a container and a QEMU guest")
	}
	ch := bootContainerHost(t, "172.31.251.0/24")
	payload := webPayload(t, ch.h.path("data", "images", "web"), "hello from a mergen guest\n", "8080")
	runtimeScenario(t, ch, payload)
}

// bootContainerHost boots a systemd container for a host with guests on
// cidr and starts the daemon in it as a service; the journals and the
// guests' consoles are logged when the test fails.
func bootContainerHost(t *testing.T, cidr string) *containerHost {
	t.Helper()
	vh := newVMHost(t, "", cidr)
	h := vh.host
	c := nspawn.Boot(t, nspawn.Config{Binds: []string{filepath.Dir(vh.mergen), filepath.Dir(vh.lifecycle), vh.assets, h.root, "/dev/net/tun"}})
	ch := &containerHost{c: c, h: h, bin: vh.mergen, port: 8080}
	ch.startDaemon(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon journal:\n%s", c.Journal(daemonUnit))
			t.Logf("vm units:\n%s", c.Journal(""))
		}
		dumpConsoles(t, h)
	})
	return ch
}
