package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// Health checks against real guests under QEMU: a VM whose HTTP check
// passes goes starting → ready; once its check starts failing it turns
// unhealthy and its on-failure policy restarts it, back to ready with its
// restarts counted; a TCP check against a port nothing listens on leaves a
// VM with restart policy no unhealthy, saying why, and the daemon keeps
// answering.
func TestHealthRealVM(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots QEMU guests")
	}
	vh := newVMHost(t, "detached", "172.31.238.0/24")
	h := vh.host
	// The payload serves /ok while the file exists: every boot makes it.
	payload := payloadDisk(t, h.path("data", "images", "health"), "hello\n", nil,
		[]string{"/bin/sh", "-c", "/bin/busybox touch /www/ok && exec /bin/busybox httpd -f -p 8080 -h /www"}, "root", "/www")
	b := &bareHost{h: h, bin: vh.mergen, port: freePort(t)}
	b.d = h.startBinary(t, vh.mergen, b.port)
	t.Cleanup(func() { dumpConsoles(t, h) })
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(vh.mergen, args...)
		cmd.Env = append(os.Environ(), "MERGEN_API="+b.d.base, "MERGEN_API_TOKEN="+h.token(t), "MGR_API_SOCKET="+h.path("no.sock"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mergen %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	get := func(id string) wire.VM {
		t.Helper()
		var vm wire.VM
		code, body := b.api(t, "GET", "/v1/vms/"+id, nil, &vm)
		mustStatus(t, code, body, 200)
		return vm
	}

	watch := startEventsCLI(t, vh, b.d.base, "--all") // the host's whole journal: this test's
	var web, deaf wire.VM
	code, body := b.api(t, "POST", "/v1/vms", map[string]any{
		"payloadDisk": payload, "memMiB": 256, "httpPort": 8080, "autoStart": true, "restart": "on-failure",
		"tags": map[string]string{"name": "web"},
		"healthCheck": map[string]any{
			"http": map[string]any{"path": "/ok"}, "intervalSeconds": 1, "timeoutSeconds": 2, "retries": 2, "startPeriodSeconds": 120,
		},
	}, &web)
	mustStatus(t, code, body, 201)
	if web.Health == nil || web.Health.Status != wire.HealthStarting {
		t.Fatalf("a VM just started has health %+v, want starting", web.Health)
	}
	code, body = b.api(t, "POST", "/v1/vms", map[string]any{
		"payloadDisk": payload, "memMiB": 256, "httpPort": 8080, "autoStart": true,
		"tags":        map[string]string{"name": "deaf"},
		"healthCheck": map[string]any{"tcp": map[string]any{"port": 9999}, "intervalSeconds": 1, "timeoutSeconds": 1, "retries": 3},
	}, &deaf)
	mustStatus(t, code, body, 201)

	testenv.Eventually(t, 150*time.Second, "the web VM's check to pass", func() bool {
		web = get(web.ID)
		return web.Health != nil && web.Health.Status == wire.HealthReady
	})
	if web.State != wire.StateRunning || web.Restarts != 0 || web.Health.LastCheck == nil || !web.Health.LastCheck.OK {
		t.Fatalf("ready VM: state %s, restarts %d, health %+v", web.State, web.Restarts, web.Health)
	}
	t.Logf("web ready: %+v", *web.Health)
	if ls := cli("vm", "ls"); !regexp.MustCompile(`(?m)^\S+\s+web\s+ready\s`).MatchString(ls) {
		t.Fatalf("vm ls does not show web as ready:\n%s", ls)
	}
	code, body = b.api(t, "GET", "/metrics", nil, nil)
	mustStatus(t, code, body, 200)
	if m := regexp.MustCompile(`(?m)^mergen_boot_to_ready_seconds_count (\d+)$`).FindSubmatch(body); m == nil || string(m[1]) == "0" {
		t.Fatalf("no boot-to-ready observation in the metrics:\n%s", grepLines(body, "boot_to_ready"))
	} else {
		t.Logf("metrics:\n%s", grepLines(body, "mergen_boot_to_ready_seconds_sum"))
	}

	// A port nothing listens on: unhealthy, with the reason, and left
	// running under policy no.
	// While the guest boots nothing answers at all (the check times out);
	// once its kernel is up, the port refuses.
	testenv.Eventually(t, 150*time.Second, "the deaf VM to turn unhealthy, its port refusing", func() bool {
		deaf = get(deaf.ID)
		return deaf.Health != nil && deaf.Health.Status == wire.HealthUnhealthy &&
			deaf.Health.LastCheck != nil && strings.Contains(deaf.Health.LastCheck.Output, "refused")
	})
	hd := deaf.Health
	if deaf.State != wire.StateRunning || hd.Failures < 3 || hd.LastCheck == nil || hd.LastCheck.OK ||
		!strings.Contains(hd.LastCheck.Output, "refused") || !strings.Contains(hd.Message, "restart policy no") ||
		!strings.Contains(hd.Message, "never ready: no check passed in") || deaf.Restarts != 0 {
		t.Fatalf("deaf VM: state %s, restarts %d, health %+v %+v", deaf.State, deaf.Restarts, hd, hd.LastCheck)
	}
	inspect := cli("vm", "inspect", "-o", "text", "deaf")
	if !strings.Contains(inspect, "Health:   unhealthy") || !strings.Contains(inspect, "refused") {
		t.Fatalf("inspect -o text:\n%s", inspect)
	}
	t.Logf("mergen vm inspect -o text deaf:\n%s", inspect)
	code, body = b.api(t, "DELETE", "/v1/vms/"+deaf.ID, nil, nil)
	mustStatus(t, code, body, 200)

	// The check starts failing: unhealthy, restarted under on-failure, and
	// ready again (each boot makes /www/ok anew).
	cli("exec", "web", "--", "/bin/busybox", "rm", "/www/ok")
	sawUnhealthy := false
	testenv.Eventually(t, 180*time.Second, "the web VM to be restarted and ready again", func() bool {
		web = get(web.ID)
		if web.Health != nil && web.Health.Status == wire.HealthUnhealthy {
			sawUnhealthy = true
		}
		return web.Restarts >= 1 && web.Health != nil && web.Health.Status == wire.HealthReady
	})
	log, _ := os.ReadFile(daemonLog(t, h))
	if !sawUnhealthy && !bytes.Contains(log, []byte("to=unhealthy")) {
		t.Fatalf("the VM was restarted, but never reported unhealthy; daemon log:\n%s", grepLines(log, "health"))
	}
	t.Logf("daemon log, health lines:\n%s", grepLines(log, "health"))
	if web.Restarts != 1 {
		t.Fatalf("restarts = %d, want 1", web.Restarts)
	}
	// The event stream tells the same story, in order.
	evs := watch.expect(t, web.ID, events.Created, events.Starting, events.Ready, events.Unhealthy,
		events.Stopping, events.Stopped, events.Restarted, events.Starting, events.Ready)
	if evs[3].Message == "" || evs[6].Reason != "unhealthy" {
		t.Fatalf("unhealthy %+v, restarted %+v", evs[3], evs[6])
	}

	// Stopped, it has no health; its health file goes.
	code, body = b.api(t, "POST", "/v1/vms/"+web.ID+"/stop", nil, nil)
	mustStatus(t, code, body, 200)
	if web = get(web.ID); web.Health != nil || web.HealthCheck == nil {
		t.Fatalf("a stopped VM: health %+v, check %+v", web.Health, web.HealthCheck)
	}
	if _, err := os.Stat(filepath.Join(h.env["MGR_CONFIG_ROOT"], web.ID, "health.json")); !os.IsNotExist(err) {
		t.Fatalf("health file of a stopped VM: %v", err)
	}
}

// grepLines is the lines of b that contain s.
func grepLines(b []byte, s string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// daemonLog is the newest daemon log startBinary wrote.
func daemonLog(t *testing.T, h *host) string {
	m, _ := filepath.Glob(h.path("daemon-*.log"))
	newest, best := "", int64(0)
	for _, p := range m {
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "daemon-"), ".log"), 10, 64)
		if n > best {
			newest, best = p, n
		}
	}
	return newest
}
