package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// vmHost is where a runtime scenario runs: the bare host with the detached
// supervisor, or a systemd container.
type vmHost interface {
	// api calls the daemon's API.
	api(t *testing.T, method, path string, body any, out any) (int, []byte)
	// get fetches http://127.0.0.1:port/path from the host's network view.
	get(port int, path string) (string, error)
	// run executes a command on the host and returns its output.
	run(t *testing.T, args ...string) string
	// killDaemon SIGKILLs the daemon; restartDaemon starts it again.
	killDaemon(t *testing.T)
	restartDaemon(t *testing.T)
	// files lists every file left under the host's mergen roots.
	files(t *testing.T) []string
}

// runtimeScenario is the VM runtime's contract, end to end: create through
// the API, start, the guest's HTTP port answers on its published host port;
// stop and start again; the VM survives a SIGKILL of the daemon and the
// restarted daemon reports it running; delete leaves nothing behind.
func runtimeScenario(t *testing.T, h vmHost, payload string) {
	page := "hello from a mergen guest\n"
	var vm wire.VM
	// An environment too large for the kernel command line: every start
	// below hands it over the agent channel before the payload may start
	// and answer.
	code, body := h.api(t, "POST", "/v1/vms", map[string]any{
		"payloadDisk": payload, "memMiB": 256,
		"ports":    []map[string]any{{"guest": 8080, "host": 0}},
		"httpPort": 8080, "tags": map[string]string{"name": "e2e"},
		"extraEnv": map[string]string{"LARGE": strings.Repeat("e", 2000)},
	}, &vm)
	mustStatus(t, code, body, 201)
	short := vm.ID[:8]
	hostPort := vm.Network.Ports[0].Host
	t.Logf("vm %s: guest %s, published on 127.0.0.1:%d", vm.ID, vm.Network.GuestIP, hostPort)

	start := func() {
		t.Helper()
		t0 := time.Now()
		code, body := h.api(t, "POST", "/v1/vms/"+vm.ID+"/start", nil, &vm)
		mustStatus(t, code, body, 200)
		if !vm.Service.Active {
			t.Fatalf("after start the service is not active: %+v", vm.Service)
		}
		got := waitHTTP(t, h, hostPort, "/index.html", 90*time.Second)
		if got != page {
			t.Fatalf("guest answered %q, want %q", got, page)
		}
		t.Logf("start → guest HTTP answering: %s", time.Since(t0).Round(time.Millisecond))
	}
	start()
	// Start is idempotent.
	code, body = h.api(t, "POST", "/v1/vms/"+vm.ID+"/start", nil, nil)
	mustStatus(t, code, body, 200)

	code, body = h.api(t, "POST", "/v1/vms/"+vm.ID+"/stop", nil, &vm)
	mustStatus(t, code, body, 200)
	if vm.Service.Active {
		t.Fatalf("after stop the service is still active: %+v", vm.Service)
	}
	if _, err := h.get(hostPort, "/index.html"); err == nil {
		t.Fatal("the guest still answers after stop")
	}
	if out := h.run(t, "ip", "netns", "list"); strings.Contains(out, "mergen-"+short) {
		t.Fatalf("namespace mergen-%s survived stop:\n%s", short, out)
	}
	// The console copier drained the guest's last lines before it exited,
	// and the API serves them.
	console := waitConsole(t, h, vm.ID, "mergen-init: exit status", 1)
	if !strings.Contains(console, "mergen-init: payload started") {
		t.Fatalf("console after stop lacks the payload's start:\n%s", console)
	}
	waitGone(t, h, "console-log "+vm.ID)
	firstBoot := len(console)
	// Fill the log to 1000 bytes short of its bound: the next boot's
	// output rotates it.
	if pad := consoleMax - firstBoot - 1000; pad > 0 {
		h.run(t, "sh", "-c", fmt.Sprintf("head -c %d /dev/zero | tr '\\0' '#' >> %s", pad, vm.Paths.ConsoleLog))
	}
	code, body = h.api(t, "POST", "/v1/vms/"+vm.ID+"/stop", nil, nil)
	mustStatus(t, code, body, 200)

	start()
	// The second boot's output went past MGR_CONSOLE_LOG_MAX_BYTES (64 KiB
	// here): the log was rotated once, and the API serves both files in
	// order, within twice the bound.
	console = waitConsole(t, h, vm.ID, "mergen-init: payload started", 2)
	if len(console) > 2*consoleMax {
		t.Fatalf("console holds %d bytes, more than twice the bound of %d", len(console), consoleMax)
	}
	if ls := h.run(t, "ls", filepath.Dir(vm.Paths.ConsoleLog)); !strings.Contains(ls, "console.log.1") {
		t.Fatalf("the console log was not rotated:\n%s", ls)
	}
	if pad := strings.LastIndex(console, "#"); pad < 0 || pad > strings.LastIndex(console, "mergen-init: payload started") {
		t.Fatalf("the console across the rotation is out of order:\n%s", console)
	}
	t.Logf("console: first boot %d bytes; %d bytes served across console.log.1 and console.log after the second", firstBoot, len(console))
	// /logs counts lines: the last five of the guest's console, mergen-init's
	// among them.
	code, body = h.api(t, "GET", "/v1/vms/"+vm.ID+"/logs?tail=5", nil, nil)
	mustStatus(t, code, body, 200)
	if lines := strings.SplitAfter(strings.TrimSuffix(string(body), "\n"), "\n"); len(lines) != 5 || !strings.Contains(string(body), "mergen-init: ") {
		t.Fatalf("logs?tail=5 answered %d lines, want 5 with mergen-init's:\n%s", len(lines), body)
	}
	if now := waitConsole(t, h, vm.ID, "mergen-init: payload started", 2); !strings.Contains(now, string(body)) {
		t.Fatalf("logs?tail=5 is not the end of the console:\n%s", body)
	}
	t.Logf("logs?tail=5:\n%s", body)
	// source=payload: busybox httpd's access line for the start's request,
	// without mergen-init's prefix. The line may reach the console a moment
	// after the answer reached the test (an earlier try may have got a 404
	// while the guest was still coming up).
	testenv.Eventually(t, 30*time.Second, "httpd's access line of the answered request", func() bool {
		code, body = h.api(t, "GET", "/v1/vms/"+vm.ID+"/logs?source=payload&tail=1", nil, nil)
		mustStatus(t, code, body, 200)
		return strings.Contains(string(body), "response:200")
	})
	if strings.Contains(string(body), "[payload]") {
		t.Fatalf("logs?source=payload&tail=1 answered %q, want httpd's access line without the prefix", body)
	}
	h.killDaemon(t)
	if got, err := h.get(hostPort, "/index.html"); err != nil || got != page {
		t.Fatalf("VM stopped answering when the daemon was killed: %q %v", got, err)
	}
	h.restartDaemon(t)
	code, body = h.api(t, "GET", "/v1/vms/"+vm.ID, nil, &vm)
	mustStatus(t, code, body, 200)
	if !vm.Service.Active || vm.Service.MainPID == 0 {
		t.Fatalf("restarted daemon does not report the VM running: %+v", vm.Service)
	}

	code, body = h.api(t, "DELETE", "/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 200)
	if _, err := h.get(hostPort, "/index.html"); err == nil {
		t.Fatal("the guest still answers after delete")
	}
	for _, check := range []struct {
		args []string
		not  string
	}{
		{[]string{"ip", "netns", "list"}, "mergen-" + short},
		{[]string{"ip", "-o", "link", "show"}, short},
		{[]string{"nft", "list", "ruleset"}, short},
		{[]string{"nft", "list", "ruleset"}, "mergen vm " + vm.ID},
		{[]string{"ps", "-eo", "args"}, vm.ID},
	} {
		if out := h.run(t, check.args...); strings.Contains(out, check.not) {
			t.Fatalf("%v still shows %q after delete:\n%s", check.args, check.not, out)
		}
	}
	for _, f := range h.files(t) {
		if strings.Contains(f, vm.ID) {
			t.Fatalf("file left after delete: %s", f)
		}
	}
}

// consoleMax is MGR_CONSOLE_LOG_MAX_BYTES of the runtime hosts.
const consoleMax = 64 << 10

// waitConsole waits until the VM's console, as the API serves it, holds
// want n times, and returns it.
func waitConsole(t *testing.T, h vmHost, id, want string, n int) string {
	t.Helper()
	var body []byte
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("the console to show %q %d times", want, n), func() bool {
		var code int
		code, body = h.api(t, "GET", "/v1/vms/"+id+"/console", nil, nil)
		mustStatus(t, code, body, 200)
		return strings.Count(string(body), want) >= n
	})
	return string(body)
}

// waitGone waits until no process on the host has args in its command line.
func waitGone(t *testing.T, h vmHost, args string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, fmt.Sprintf("no process %q to be left", args), func() bool {
		return !strings.Contains(h.run(t, "ps", "-eo", "args"), args)
	})
}

func waitHTTP(t *testing.T, h vmHost, port int, path string, limit time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		got, err := h.get(port, path)
		if err == nil {
			return got
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("guest HTTP on 127.0.0.1:%d did not answer within %s: %v", port, limit, last)
	return ""
}

func httpGet(port int, path string) (string, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
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

// bareHost runs the daemon binary on this host with the detached supervisor.
type bareHost struct {
	h    *host
	bin  string
	port int
	d    *daemonProc
}

func (b *bareHost) api(t *testing.T, method, path string, body any, out any) (int, []byte) {
	return call(t, method, b.d.base+path, body, out)
}
func (b *bareHost) get(port int, path string) (string, error) { return httpGet(port, path) }
func (b *bareHost) run(t *testing.T, args ...string) string {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}
func (b *bareHost) killDaemon(t *testing.T) {
	if err := b.d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.d.cmd.Wait()
}
func (b *bareHost) restartDaemon(t *testing.T)  { b.d = b.h.startBinary(t, b.bin, b.port) }
func (b *bareHost) files(t *testing.T) []string { return rootFiles(b.h) }

// rootFiles lists every path under the host's mergen roots.
func rootFiles(h *host) []string {
	var out []string
	for _, root := range []string{h.env["MGR_CONFIG_ROOT"], h.env["MGR_RUN_ROOT"], h.env["MGR_DATA_ROOT"]} {
		filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}

// TestVMRuntimeDetached boots a real guest under QEMU with the detached
// supervisor on this host (whose PID 1 is not systemd).
func TestVMRuntimeDetached(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a QEMU guest")
	}
	b := startBareHost(t, "172.31.250.0/24")
	payload := webPayload(t, b.h.path("data", "images", "web"), "hello from a mergen guest\n", "8080")
	runtimeScenario(t, b, payload)
}

// startBareHost starts the daemon binary on this host, with the detached
// supervisor and guests on cidr; the guests' consoles are logged when the
// test fails.
func startBareHost(t *testing.T, cidr string) *bareHost {
	t.Helper()
	vh := newVMHost(t, "detached", cidr)
	b := &bareHost{h: vh.host, bin: vh.mergen, port: freePort(t)}
	b.d = vh.host.startBinary(t, vh.mergen, b.port)
	t.Cleanup(func() { dumpConsoles(t, vh.host) })
	return b
}

// dumpConsoles prints guest consoles when a test failed, for diagnosis.
func dumpConsoles(t *testing.T, h *host) {
	if !t.Failed() {
		return
	}
	matches, _ := filepath.Glob(h.path("data", "vms", "*", "*.log"))
	for _, m := range matches {
		b, _ := os.ReadFile(m)
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("==== %s\n%s", m, b)
	}
	logs, _ := filepath.Glob(h.path("daemon-*.log"))
	for _, m := range logs {
		b, _ := os.ReadFile(m)
		t.Logf("==== %s\n%s", m, b)
	}
}
