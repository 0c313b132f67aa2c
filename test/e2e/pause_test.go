package e2e

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// uptimeCGI answers with the guest's uptime in seconds.
const uptimeCGI = `#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
read up _ < /proc/uptime
echo "$up"
`

// TestPauseResumeRealVM pauses and resumes a real guest under QEMU: paused,
// its HTTP port stops answering and the document and `mergen vm ls` say
// paused; pausing again succeeds; resumed, it answers again with a larger
// uptime (the guest went on where it stopped) and the document says
// running; a paused VM stops gracefully; delete leaves nothing.
func TestPauseResumeRealVM(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a QEMU guest")
	}
	vh := newVMHost(t, "detached", "172.31.247.0/24")
	h := vh.host
	payload := webPayloadWith(t, h.path("data", "images", "web"), "hello from a paused guest\n", "8080",
		map[string]string{"www/cgi-bin/uptime": uptimeCGI})
	b := &bareHost{h: h, bin: vh.mergen, port: freePort(t)}
	b.d = h.startBinary(t, vh.mergen, b.port)
	t.Cleanup(func() { dumpConsoles(t, h) })

	var vm wire.VM
	code, body := b.api(t, "POST", "/v1/vms", map[string]any{
		"payloadDisk": payload, "memMiB": 256,
		"ports":    []map[string]any{{"guest": 8080, "host": 0}},
		"httpPort": 8080, "tags": map[string]string{"name": "sleeper"},
	}, &vm)
	mustStatus(t, code, body, 201)
	hostPort := vm.Network.Ports[0].Host
	code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/start", nil, &vm)
	mustStatus(t, code, body, 200)
	if vm.State != wire.StateRunning {
		t.Fatalf("after start: state %q, want running", vm.State)
	}
	waitHTTP(t, b, hostPort, "/index.html", 90*time.Second)
	uptime := func() float64 {
		t.Helper()
		got := waitHTTP(t, b, hostPort, "/cgi-bin/uptime", 30*time.Second)
		f, err := strconv.ParseFloat(strings.TrimSpace(got), 64)
		if err != nil {
			t.Fatalf("uptime page %q: %v", got, err)
		}
		return f
	}
	before := uptime()

	for i := range 2 { // the second pause finds the VM paused: 200 all the same
		code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/pause", nil, &vm)
		mustStatus(t, code, body, 200)
		if vm.State != wire.StatePaused || vm.VMMState.State != wire.StatePaused {
			t.Fatalf("pause %d: state %q, vmmState.state %q; want paused", i+1, vm.State, vm.VMMState.State)
		}
	}
	// httpGet gives up after 2 s: a paused guest answers nothing.
	if got, err := b.get(hostPort, "/index.html"); err == nil {
		t.Fatalf("the paused guest answered %q", got)
	}
	code, body = b.api(t, "GET", "/v1/vms/"+vm.ID, nil, &vm)
	mustStatus(t, code, body, 200)
	if vm.State != wire.StatePaused {
		t.Fatalf("GET of the paused VM: state %q, want paused", vm.State)
	}
	ls := exec.Command(vh.mergen, "vm", "ls", "--api", b.d.base)
	ls.Env = append(os.Environ(), "MERGEN_API_TOKEN="+h.token(t))
	for k, v := range h.env {
		ls.Env = append(ls.Env, k+"="+v)
	}
	out, err := ls.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "sleeper") || !strings.Contains(string(out), "paused") {
		t.Fatalf("mergen vm ls: %v\n%s\nwant the VM shown paused", err, out)
	}
	t.Logf("mergen vm ls:\n%s", out)

	for i := range 2 { // the second resume finds the VM running: 200
		code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/resume", nil, &vm)
		mustStatus(t, code, body, 200)
		if vm.State != wire.StateRunning || vm.VMMState.State != wire.StateRunning {
			t.Fatalf("resume %d: state %q, vmmState.state %q; want running", i+1, vm.State, vm.VMMState.State)
		}
	}
	after := uptime()
	if after <= before {
		t.Fatalf("guest uptime %.2f after resume, %.2f before pause: the guest did not go on", after, before)
	}
	t.Logf("guest uptime %.2f s before the pause, %.2f s after the resume", before, after)

	// A paused VM stops gracefully: the stop stage resumes it first so
	// that the guest powers off rather than waiting to be killed.
	code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/pause", nil, nil)
	mustStatus(t, code, body, 200)
	t0 := time.Now()
	code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/stop", nil, &vm)
	mustStatus(t, code, body, 200)
	if vm.Service.Active || vm.State != wire.StateStopped {
		t.Fatalf("after stop: state %q, service %+v; want stopped", vm.State, vm.Service)
	}
	t.Logf("stop of the paused VM took %s", time.Since(t0).Round(time.Millisecond))
	// The guest powered off by itself: its init's last line is in the console.
	waitConsole(t, b, vm.ID, "mergen-init: exit status", 1)
	code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/resume", nil, nil)
	if code != 409 || !strings.Contains(errMessage(body), "stopped") {
		t.Fatalf("resume of a stopped VM: %d %s; want 409 naming its state", code, body)
	}

	code, body = b.api(t, "DELETE", "/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 200)
	if out := b.run(t, "ps", "-eo", "args"); strings.Contains(out, vm.ID) {
		t.Fatalf("a process of the VM is left after delete:\n%s", out)
	}
	for _, f := range b.files(t) {
		if strings.Contains(f, vm.ID) {
			t.Fatalf("file left after delete: %s", f)
		}
	}
}
