package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
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

// counterStart is a payload with state only in memory: a shell loop counts
// five times a second into /tmp (the guest's memory), and busybox httpd
// serves the count and the VM's identity (stateCGI).
const counterStart = `#!/bin/sh
( i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done ) &
exec /bin/busybox httpd -f -v -p 8080 -h /www
`

// stateCGI reports the count, the hostname, the GREETING variable as the
// VM's environment file gives it (a process started before a snapshot keeps
// its own environment; see docs/snapshots.md) and eth0's address.
const stateCGI = `#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
[ -r /run/mergen/env ] && . /run/mergen/env
echo "count=$(cat /tmp/count)"
echo "host=$(hostname)"
echo "greeting=$GREETING"
echo "addr=$(ip -4 -o addr show dev eth0 | awk '{print $4}')"
`

// guestState is what stateCGI answered.
type guestState struct {
	count                int
	host, greeting, addr string
}

func parseState(t *testing.T, s string) guestState {
	t.Helper()
	var g guestState
	for _, line := range strings.Split(s, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "count":
			g.count, _ = strconv.Atoi(v)
		case "host":
			g.host = v
		case "greeting":
			g.greeting = v
		case "addr":
			g.addr = v
		}
	}
	if g.count == 0 {
		t.Fatalf("state page without a count: %q", s)
	}
	return g
}

// TestSnapshotRestoreRealVM is the snapshot feature end to end under QEMU:
// a guest's in-memory counter goes on across pause/resume and across a
// snapshot; the daemon restarts between snapshot and restore; two VMs
// restored from the snapshot at once go on counting from the snapshot's
// memory, each with its own hostname, environment and address (the one
// the API reports), and the forwarder reaches each by its own label; bad
// requests and damaged snapshots are refused without leaving anything;
// deleting VMs and snapshots leaves no files.
func TestSnapshotRestoreRealVM(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots QEMU guests")
	}
	s := newDemoStack(t, "172.31.244.0/24")
	h := s.h
	u, _ := url.Parse(s.d.base)
	port, _ := strconv.Atoi(u.Port())
	b := &bareHost{h: h, bin: s.mergen, port: port, d: s.d}
	t.Cleanup(func() { dumpConsoles(t, h) })
	payload := payloadDisk(t, h.path("data", "images", "counter"), "counter\n",
		map[string]string{"www/start.sh": counterStart, "www/cgi-bin/state": stateCGI},
		[]string{"/bin/sh", "/www/start.sh"}, "web", "/www")

	create := func(body map[string]any, want int) (wire.VM, []byte) {
		t.Helper()
		var vm wire.VM
		code, raw := b.api(t, "POST", "/v1/vms", body, &vm)
		mustStatus(t, code, raw, want)
		return vm, raw
	}
	hostPort := func(vm wire.VM) int { return vm.Network.Ports[0].Host }
	ok := func(code int, raw []byte) { t.Helper(); mustStatus(t, code, raw, 200) }
	state := func(vm wire.VM) guestState {
		t.Helper()
		return parseState(t, waitHTTP(t, b, hostPort(vm), "/cgi-bin/state", 90*time.Second))
	}

	origin, _ := create(map[string]any{
		"payloadDisk": payload, "memMiB": 256, "httpPort": 8080, "autoStart": true,
		"ports": []map[string]any{{"guest": 8080, "host": 0}}, "tags": map[string]string{"name": "origin"},
		"extraEnv": map[string]string{"GREETING": "origin"},
	}, 201)
	first := state(origin)
	if first.host != "origin" || first.greeting != "origin" || first.addr != origin.Network.GuestIP+"/"+strconv.Itoa(origin.Network.PrefixLen) {
		t.Fatalf("cold-booted origin reports %+v; want host origin, greeting origin, addr %s", first, origin.Network.GuestIP)
	}

	// Pause and resume: the guest answers nothing while paused, its count
	// does not run on meanwhile (QEMU stops the guest's clock), and it goes
	// on afterwards.
	before := state(origin).count
	ok(b.api(t, "POST", "/v1/vms/"+origin.ID+"/pause", nil, nil))
	if got, err := httpGet(hostPort(origin), "/cgi-bin/state"); err == nil {
		t.Fatalf("the paused guest answered %q", got)
	}
	time.Sleep(3 * time.Second) // 15 counts, had it gone on
	ok(b.api(t, "POST", "/v1/vms/"+origin.ID+"/resume", nil, nil))
	if resumed := state(origin).count; resumed < before || resumed >= before+10 {
		t.Fatalf("count %d before a 3 s pause, %d after it: want it to go on from where it stopped", before, resumed)
	}
	testenv.Eventually(t, 30*time.Second, "the resumed counter to go on", func() bool { return state(origin).count > before+1 })

	// A full disk while writing a snapshot: a clear error, no half
	// snapshot, and the guest goes on.
	snapDir := h.path("data", "snapshots")
	if err := os.MkdirAll(snapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", snapDir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a tiny tmpfs on the snapshots directory: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(snapDir, syscall.MNT_DETACH) })
	code, raw := b.api(t, "POST", "/v1/vms/"+origin.ID+"/snapshots", nil, nil)
	if code != 507 || !strings.Contains(errMessage(raw), "no space left") {
		t.Fatalf("snapshot onto a full disk answered %d %s; want an error saying no space left", code, raw)
	}
	if left, _ := os.ReadDir(snapDir); len(left) != 0 {
		t.Fatalf("a failed snapshot left %v", left)
	}
	if err := syscall.Unmount(snapDir, 0); err != nil {
		t.Fatal(err)
	}
	resumed := state(origin).count
	testenv.Eventually(t, 30*time.Second, "the guest to go on after the failed snapshot", func() bool { return state(origin).count > resumed })

	// The snapshot.
	atSnapshot := state(origin).count
	var snap wire.Snapshot
	code, raw = b.api(t, "POST", "/v1/vms/"+origin.ID+"/snapshots", nil, &snap)
	mustStatus(t, code, raw, 201)
	if snap.Source.VM != origin.ID || snap.SizeBytes <= 0 || len(snap.Files) == 0 || snap.Files[0].SHA256 == "" || snap.VMM != "qemu" || snap.VMMVersion == "" {
		t.Fatalf("snapshot document %s", raw)
	}
	t.Logf("snapshot %s: %d bytes, guest paused %d ms", snap.ID, snap.SizeBytes, snap.DurationMs)
	after := state(origin).count
	testenv.Eventually(t, 30*time.Second, "the origin to go on after its snapshot", func() bool { return state(origin).count > after })

	// A daemon restart between snapshot and restore changes nothing.
	b.killDaemon(t)
	b.restartDaemon(t)
	var list wire.SnapshotList
	code, raw = b.api(t, "GET", "/v1/snapshots", nil, &list)
	mustStatus(t, code, raw, 200)
	if list.Count != 1 || list.Snapshots[0].ID != snap.ID {
		t.Fatalf("after a daemon restart the snapshots are %s", raw)
	}

	// Two restores at once: one resumes with autoStart, the other is
	// created, then started.
	copies := make([]wire.VM, 2)
	var wg sync.WaitGroup
	for i, name := range []string{"copy-a", "copy-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var vm wire.VM
			code, raw := b.api(t, "POST", "/v1/vms", map[string]any{
				"snapshot": snap.ID, "autoStart": i == 0, "httpPort": 8080,
				"ports": []map[string]any{{"guest": 8080, "host": 0}}, "tags": map[string]string{"name": name},
				"extraEnv": map[string]string{"GREETING": "hello " + name},
			}, &vm)
			if code != 201 {
				t.Errorf("restore %s: %d %s", name, code, raw)
				return
			}
			if i == 1 {
				if code, raw = b.api(t, "POST", "/v1/vms/"+vm.ID+"/start", nil, &vm); code != 200 {
					lg, _ := os.ReadFile(filepath.Join(h.env["MGR_RUN_ROOT"], vm.ID, "supervisor.log"))
					t.Errorf("start %s: %d %s\nsupervisor log:\n%s", name, code, raw, lg)
				}
			}
			copies[i] = vm
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := map[string]string{origin.Network.GuestIP: "origin"}
	for i, vm := range copies {
		name := []string{"copy-a", "copy-b"}[i]
		g := state(vm)
		if g.count < atSnapshot {
			t.Fatalf("%s counts %d, below the %d counted before the snapshot: it did not resume the snapshot's memory", name, g.count, atSnapshot)
		}
		wantAddr := vm.Network.GuestIP + "/" + strconv.Itoa(vm.Network.PrefixLen)
		if g.host != name || g.greeting != "hello "+name || g.addr != wantAddr {
			t.Fatalf("%s reports %+v; want host %s, greeting %q, addr %s (as the API reports)", name, g, name, "hello "+name, wantAddr)
		}
		if other, dup := seen[vm.Network.GuestIP]; dup {
			t.Fatalf("%s has the address of %s", name, other)
		}
		seen[vm.Network.GuestIP] = name
		if vm.State != wire.StateRunning {
			t.Fatalf("%s: state %q after create with autoStart", name, vm.State)
		}
		// The forwarder reaches it by its own label.
		resp, err := s.client.Get(fmt.Sprintf("https://%s.%s:%d/cgi-bin/state", name, s.domain, s.httpsPort))
		if err != nil {
			t.Fatalf("GET %s via the forwarder: %v", name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := parseState(t, string(body)); got.host != name {
			t.Fatalf("https://%s.%s/ reached %q", name, s.domain, got.host)
		}
		next := g.count
		testenv.Eventually(t, 30*time.Second, name+" to go on counting", func() bool { return state(vm).count > next })
		// Its exec agent answers with the restored VM's own secret, not
		// the snapshot's: a file read through it is this VM's hostname.
		req, _ := http.NewRequest("GET", b.d.base+"/v1/vms/"+vm.ID+"/files?path=/etc/hostname", nil)
		req.Header.Set("Accept", "application/octet-stream")
		req.Header.Set("Authorization", "Bearer "+h.token(t))
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		hostname, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(hostname) != name+"\n" {
			t.Fatalf("/etc/hostname of %s through its exec agent: %d %q", name, resp.StatusCode, hostname)
		}
	}

	// Bad requests: each named, nothing made.
	dirsBefore := vmDirs(t, h)
	for _, c := range []struct {
		body map[string]any
		want int
		says string
	}{
		{map[string]any{"snapshot": snap.ID, "vcpu": 2}, 400, "vcpu"},
		{map[string]any{"snapshot": snap.ID, "memMiB": 512}, 400, "memMiB"},
		{map[string]any{"snapshot": snap.ID, "vmm": "firecracker"}, 400, "vmm"},
		{map[string]any{"snapshot": snap.ID, "payloadDisk": payload}, 400, "payloadDisk"},
		{map[string]any{"snapshot": "00000000-0000-0000-0000-000000000000"}, 400, "not found"},
	} {
		_, raw := create(c.body, c.want)
		if !strings.Contains(errMessage(raw), c.says) {
			t.Fatalf("%v answered %s; want it to name %s", c.body, raw, c.says)
		}
	}
	// A stopped VM cannot be snapshotted.
	ok(b.api(t, "POST", "/v1/vms/"+copies[1].ID+"/stop", nil, nil))
	code, raw = b.api(t, "POST", "/v1/vms/"+copies[1].ID+"/snapshots", nil, nil)
	if code != 409 || !strings.Contains(errMessage(raw), "not running") {
		t.Fatalf("snapshot of a stopped VM answered %d %s", code, raw)
	}
	// A damaged snapshot is refused: a flipped byte, then a cut file.
	var second wire.Snapshot
	code, raw = b.api(t, "POST", "/v1/vms/"+copies[0].ID+"/snapshots", map[string]any{"stop": true}, &second)
	mustStatus(t, code, raw, 201)
	memory := filepath.Join(snapDir, second.ID, "memory")
	f, err := os.OpenFile(memory, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	f.ReadAt(one, second.SizeBytes/3)
	one[0] ^= 0xff
	f.WriteAt(one, second.SizeBytes/3)
	f.Close()
	for _, damage := range []string{"corrupted", "truncated"} {
		if damage == "truncated" {
			os.Truncate(memory, second.Files[0].Size/2)
		}
		_, raw := create(map[string]any{"snapshot": second.ID, "autoStart": true}, 409)
		if !strings.Contains(errMessage(raw), damage) {
			t.Fatalf("restore of a %s snapshot answered %s", damage, raw)
		}
	}
	// A snapshot whose shared disks changed since is refused.
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(payload, later, later); err != nil {
		t.Fatal(err)
	}
	_, raw = create(map[string]any{"snapshot": snap.ID}, 409)
	if !strings.Contains(errMessage(raw), "changed since") {
		t.Fatalf("restore after the payload disk changed answered %s", raw)
	}
	if got := vmDirs(t, h); strings.Join(got, ",") != strings.Join(dirsBefore, ",") {
		t.Fatalf("refused restores left VM directories: %v, before %v", got, dirsBefore)
	}

	// Deleting everything leaves nothing.
	for _, vm := range append(copies, origin) {
		ok(b.api(t, "DELETE", "/v1/vms/"+vm.ID, nil, nil))
	}
	for _, id := range []string{snap.ID, second.ID} {
		ok(b.api(t, "DELETE", "/v1/snapshots/"+id, nil, nil))
	}
	code, raw = b.api(t, "GET", "/v1/snapshots/"+snap.ID, nil, nil)
	mustStatus(t, code, raw, 404)
	if left, _ := os.ReadDir(snapDir); len(left) != 0 {
		t.Fatalf("deleted snapshots left %v", left)
	}
	if left, _ := os.ReadDir(h.path("data", "vms")); len(left) != 0 {
		t.Fatalf("deleted VMs left %v", left)
	}
	locks, _ := filepath.Glob(filepath.Join(h.env["MGR_RUN_ROOT"], "locks", "snapshot-*"))
	if len(locks) != 0 {
		t.Fatalf("deleted snapshots left their locks: %v", locks)
	}
}
