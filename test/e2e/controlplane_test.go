package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// Control-plane hosts force the systemd supervisor on a host whose PID 1 is
// not systemd, so start and stop must answer 503 naming what is missing.
var noServiceManager = map[string]string{"MGR_SUPERVISOR": "systemd"}

func TestHealthEndpoints(t *testing.T) {
	base := newHost(t, noServiceManager).serve(t)
	var h map[string]any
	code, body := call(t, "GET", base+"/healthz", nil, &h)
	mustStatus(t, code, body, 200)
	if h["status"] != "ok" {
		t.Fatalf("healthz: %s", body)
	}
	code, body = call(t, "GET", base+"/health", nil, &h)
	mustStatus(t, code, body, 200)
	code, body = call(t, "GET", base+"/openapi.json", nil, nil)
	mustStatus(t, code, body, 200)
	if !json.Valid(body) || !strings.Contains(string(body), `"openapi": "3.`) {
		t.Fatalf("openapi.json is not an OpenAPI 3 document")
	}
}

func TestCreateInspectListAndDelete(t *testing.T) {
	h := newHost(t, noServiceManager)
	base := h.serve(t)
	req := map[string]any{
		"vcpu": 2, "memMiB": 256,
		"ports":    []map[string]any{{"guest": 80, "host": 0}, {"guest": 53, "host": 0, "protocol": "udp"}},
		"httpPort": 80,
		"tags":     map[string]string{"name": "web", "app": "shop"},
		"metadata": map[string]any{"owner": "team-a", "n": 1},
		"extraEnv": map[string]string{"GREETING": "hello world"},
		"hooks":    map[string]any{},
	}
	var vm wire.VM
	code, body := call(t, "POST", base+"/v1/vms", req, &vm)
	mustStatus(t, code, body, 201)
	if store.ValidateID(vm.ID) != nil {
		t.Fatalf("id %q is not a UUID", vm.ID)
	}
	if vm.Name != "web" || vm.VCPU != 2 || vm.MemMiB != 256 || vm.HTTPPort != 80 || vm.VMM != "qemu" {
		t.Fatalf("document does not reflect the request: %s", body)
	}
	if vm.Network.GuestIP != "172.30.0.2" || vm.Network.Gateway != "172.30.0.1" || vm.Network.PrefixLen != 24 {
		t.Fatalf("network %+v, want the first guest address of 172.30.0.0/24", vm.Network)
	}
	short := vm.ID[:8]
	if vm.Network.Netns != "mergen-"+short || vm.Network.TapName != "tap-"+short {
		t.Fatalf("names %q/%q, want mergen-%s/tap-%s", vm.Network.Netns, vm.Network.TapName, short, short)
	}
	if len(vm.Network.Ports) != 2 || vm.Network.Ports[0].Host < 20000 || vm.Network.Ports[0].Protocol != "tcp" || vm.Network.Ports[1].Protocol != "udp" {
		t.Fatalf("ports %+v", vm.Network.Ports)
	}
	wantBase := h.path("data", "base", "current")
	if vm.Kernel != filepath.Join(wantBase, "vmlinux") || vm.Disks.Rootfs != filepath.Join(wantBase, "golden-rootfs.ext4") || vm.Disks.Agent != filepath.Join(wantBase, "agent-rootfs.ext4") {
		t.Fatalf("defaults not applied: kernel %s disks %+v", vm.Kernel, vm.Disks)
	}
	if vm.Service.Available {
		t.Fatalf("service manager reported available on a host without one: %+v", vm.Service)
	}

	// The files on disk are the truth, and the API serves them as stored.
	dir := h.path("vm.d", vm.ID)
	for _, f := range []string{"vm.json", "meta.json", "hooks.json", "env"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	for _, f := range []string{"meta.json", "vm.json", "hooks.json"} {
		code, body := call(t, "GET", base+"/v1/vms/"+vm.ID+"/"+f, nil, nil)
		mustStatus(t, code, body, 200)
		disk, _ := os.ReadFile(filepath.Join(dir, f))
		if string(disk) != string(body) {
			t.Fatalf("GET %s differs from the stored file", f)
		}
	}
	var meta store.Meta
	_, body = call(t, "GET", base+"/v1/vms/"+vm.ID+"/meta.json", nil, &meta)
	if meta.ID != vm.ID || meta.GuestIP != vm.Network.GuestIP || meta.Tags["app"] != "shop" || !strings.Contains(meta.BootArgs, "ip=172.30.0.2::172.30.0.1:255.255.255.0:web:eth0:off") || !strings.Contains(meta.BootArgs, "mergen.env=") {
		t.Fatalf("meta.json: %s", body)
	}
	env, _ := os.ReadFile(filepath.Join(dir, "env"))
	if !strings.Contains(string(env), "MGN_VM_ID="+vm.ID) || !strings.Contains(string(env), "MGR_CONFIG_ROOT="+h.path("vm.d")) {
		t.Fatalf("env file: %s", env)
	}

	var got wire.VM
	code, body = call(t, "GET", base+"/v1/vms/"+vm.ID, nil, &got)
	mustStatus(t, code, body, 200)
	if got.ID != vm.ID || string(got.Metadata) == "" || got.Tags["name"] != "web" {
		t.Fatalf("GET: %s", body)
	}
	var list wire.VMList
	code, body = call(t, "GET", base+"/v1/vms", nil, &list)
	mustStatus(t, code, body, 200)
	if list.Count != 1 || list.VMs[0].ID != vm.ID {
		t.Fatalf("list: %s", body)
	}

	// A second VM gets the next address and different host ports.
	var vm2 wire.VM
	code, body = call(t, "POST", base+"/v1/vms", map[string]any{"ports": []map[string]any{{"guest": 80}}}, &vm2)
	mustStatus(t, code, body, 201)
	if vm2.Network.GuestIP != "172.30.0.3" || vm2.Network.Ports[0].Host == vm.Network.Ports[0].Host {
		t.Fatalf("second VM: %+v", vm2.Network)
	}

	code, body = call(t, "DELETE", base+"/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 200)
	code, body = call(t, "DELETE", base+"/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 404)
	code, body = call(t, "DELETE", base+"/v1/vms/"+vm2.ID, nil, nil)
	mustStatus(t, code, body, 200)
	if left := vmDirs(t, h); len(left) != 0 {
		t.Fatalf("left in the config root after deleting everything: %v", left)
	}
	// Freed addresses are handed out again.
	var vm3 wire.VM
	code, body = call(t, "POST", base+"/v1/vms", map[string]any{}, &vm3)
	mustStatus(t, code, body, 201)
	if vm3.Network.GuestIP != "172.30.0.2" {
		t.Fatalf("freed address not reused: %s", vm3.Network.GuestIP)
	}
}

func TestStartAndStopAnswer503WithoutAServiceManager(t *testing.T) {
	h := newHost(t, noServiceManager)
	base := h.serve(t)
	var vm wire.VM
	code, body := call(t, "POST", base+"/v1/vms", map[string]any{}, &vm)
	mustStatus(t, code, body, 201)
	for _, op := range []string{"start", "stop"} {
		code, body := call(t, "POST", base+"/v1/vms/"+vm.ID+"/"+op, nil, nil)
		mustStatus(t, code, body, 503)
		if msg := errMessage(body); !strings.Contains(msg, "service manager") || !strings.Contains(msg, vm.ID) {
			t.Fatalf("%s: error %q does not name the missing service manager and the VM", op, msg)
		}
	}
	// autoStart that cannot start leaves nothing behind.
	code, body = call(t, "POST", base+"/v1/vms", map[string]any{"autoStart": true, "tags": map[string]string{"name": "auto"}}, nil)
	mustStatus(t, code, body, 503)
	// Neither does the earlier generation's create-and-start.
	code, body = call(t, "POST", base+"/machines", map[string]any{"id": "test1", "cpu_count": 1, "mem_size_mb": 256}, nil)
	mustStatus(t, code, body, 503)
	if left := vmDirs(t, h); len(left) != 1 || left[0] != vm.ID {
		t.Fatalf("config root holds %v, want only %s", left, vm.ID)
	}
}

func TestUnknownAndMalformedIDs(t *testing.T) {
	base := newHost(t, noServiceManager).serve(t)
	unknown := store.NewID()
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/vms/" + unknown}, {"DELETE", "/v1/vms/" + unknown},
		{"POST", "/v1/vms/" + unknown + "/start"}, {"POST", "/v1/vms/" + unknown + "/stop"},
		{"GET", "/v1/vms/" + unknown + "/meta.json"}, {"GET", "/machines/nobody"}, {"DELETE", "/machines/nobody"},
	} {
		code, body := call(t, tc.method, base+tc.path, nil, nil)
		mustStatus(t, code, body, 404)
	}
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/vms/not-a-uuid"}, {"DELETE", "/v1/vms/..%2F..%2Fetc"}, {"POST", "/v1/vms/%2E%2E/start"},
		{"GET", "/v1/vms/" + strings.ToUpper(unknown)}, {"GET", "/v1/vms/..%2Fvm.d/meta.json"},
	} {
		code, body := call(t, tc.method, base+tc.path, nil, nil)
		if code != 400 && code != 404 {
			t.Fatalf("%s %s: status %d, want 400 or 404; %s", tc.method, tc.path, code, body)
		}
		if code == 400 && !strings.Contains(errMessage(body), "UUID") {
			t.Fatalf("%s %s: %s", tc.method, tc.path, body)
		}
	}
	code, body := call(t, "GET", base+"/v1/vms/"+unknown+"/env", nil, nil)
	mustStatus(t, code, body, 404)
}

func TestBadCreateRequestsNameTheFieldAndLeaveNothing(t *testing.T) {
	h := newHost(t, map[string]string{"MGR_SUPERVISOR": "systemd", "MGR_GUEST_CIDR": "172.30.0.0/29"})
	base := h.serve(t)
	baseDir := h.path("data", "base", "current")

	// Something outside the allowed roots, reached directly and via a symlink
	// placed inside them; a directory; a relative path.
	outside := filepath.Join(t.TempDir(), "secret.img")
	os.WriteFile(outside, []byte("secret"), 0o600)
	link := filepath.Join(baseDir, "innocent.ext4")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(baseDir, "dir.ext4"), 0o755)

	// One VM that holds host port 20500, and a socket that holds another.
	var holder wire.VM
	code, body := call(t, "POST", base+"/v1/vms", map[string]any{"tags": map[string]string{"name": "taken"}, "ports": []map[string]any{{"guest": 80, "host": 20500}}}, &holder)
	mustStatus(t, code, body, 201)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	boundPort := ln.Addr().(*net.TCPAddr).Port

	cases := []struct {
		name   string
		body   any
		status int
		want   string
	}{
		{"malformed JSON", `{"vcpu": 1,`, 400, "not valid JSON"},
		{"empty body", ``, 400, "empty"},
		{"not an object", `[1,2]`, 400, ""},
		{"trailing data", `{} {}`, 400, "after the JSON object"},
		{"unknown field", `{"vcpus": 2}`, 400, `unknown field "vcpus"`},
		{"wrong type", `{"vcpu": "two"}`, 400, "vcpu"},
		{"oversized body", `{"metadata": "` + strings.Repeat("x", 2<<20) + `"}`, 413, "larger than"},
		{"vcpu too many", map[string]any{"vcpu": 64}, 400, "vcpu: 64 is out of range 1..32"},
		{"vcpu negative", map[string]any{"vcpu": -1}, 400, "vcpu"},
		{"memory too small", map[string]any{"memMiB": 16}, 400, "memMiB: 16 is out of range"},
		{"guest port zero", map[string]any{"ports": []map[string]any{{"guest": 0}}}, 400, "ports[0].guest: 0 is out of range"},
		{"host port too big", map[string]any{"ports": []map[string]any{{"guest": 80, "host": 70000}}}, 400, "ports[0].host: 70000 is out of range"},
		{"bad protocol", map[string]any{"ports": []map[string]any{{"guest": 80, "protocol": "sctp"}}}, 400, "ports[0].protocol"},
		{"duplicate guest port", map[string]any{"ports": []map[string]any{{"guest": 80}, {"guest": 80}}}, 400, "ports[1].guest: 80/tcp is already published by ports[0]"},
		{"duplicate host port", map[string]any{"ports": []map[string]any{{"guest": 80, "host": 21000}, {"guest": 81, "host": 21000}}}, 400, "ports[1].host"},
		{"host port of another VM", map[string]any{"ports": []map[string]any{{"guest": 80, "host": 20500}}}, 409, "already published by vm " + holder.ID},
		{"host port bound on the host", map[string]any{"ports": []map[string]any{{"guest": 80, "host": boundPort}}}, 409, fmt.Sprintf("port %d is already in use on this host", boundPort)},
		{"http port out of range", map[string]any{"httpPort": 65536}, 400, "httpPort"},
		{"name taken", map[string]any{"tags": map[string]string{"name": "taken"}}, 409, "tags.name"},
		{"name not a DNS label", map[string]any{"tags": map[string]string{"name": "Bad Name"}}, 400, "tags.name"},
		{"bad env key", map[string]any{"extraEnv": map[string]string{"1BAD": "x"}}, 400, "extraEnv"},
		{"env too large even for the agent channel", map[string]any{"extraEnv": map[string]string{"BIG": strings.Repeat("x", 33<<10)}}, 400, "extraEnv"},
		{"boot args with newline", map[string]any{"bootArgs": "a\nb"}, 400, "bootArgs"},
		{"unknown vmm", map[string]any{"vmm": "bochs"}, 400, "vmm"},
		{"disk that does not exist", map[string]any{"payloadDisk": filepath.Join(baseDir, "missing.ext4")}, 400, "payloadDisk: " + filepath.Join(baseDir, "missing.ext4") + " does not exist"},
		{"host file as disk", map[string]any{"dataDisk": "/etc/shadow"}, 400, "dataDisk: /etc/shadow is outside the allowed disk roots"},
		{"host file as kernel", map[string]any{"kernel": "/etc/passwd"}, 400, "kernel: /etc/passwd is outside"},
		{"symlink escaping the roots", map[string]any{"rootfs": link}, 400, "rootfs: " + link + " is outside"},
		{"traversal in a disk path", map[string]any{"envDisk": baseDir + "/../../../../etc/hostname"}, 400, "envDisk"},
		{"directory as disk", map[string]any{"payloadDisk": filepath.Join(baseDir, "dir.ext4")}, 400, "is not a regular file"},
		{"relative disk path", map[string]any{"payloadDisk": "payload.ext4"}, 400, "must be an absolute path"},
		{"hook with file URL", map[string]any{"hooks": map[string]any{"onCreate": []map[string]any{{"url": "file:///etc/passwd"}}}}, 400, "scheme"},
		{"bridge without address", map[string]any{"bridge": map[string]any{"name": "docker0"}}, 400, "bridge.guestIP"},
		{"bridge gateway outside the network", map[string]any{"bridge": map[string]any{"name": "docker0", "guestIP": "172.17.0.35", "gatewayIP": "10.0.0.1", "netmask": "255.255.255.0"}}, 400, "bridge.gatewayIP"},
		{"bridge with a broken netmask", map[string]any{"bridge": map[string]any{"name": "docker0", "guestIP": "172.17.0.35", "gatewayIP": "172.17.0.1", "netmask": "255.0.255.0"}}, 400, "bridge.netmask"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(t, "POST", base+"/v1/vms", tc.body, nil)
			mustStatus(t, code, body, tc.status)
			if msg := errMessage(body); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q does not contain %q", msg, tc.want)
			}
			if left := vmDirs(t, h); len(left) != 1 || left[0] != holder.ID {
				t.Fatalf("config root holds %v after a rejected create", left)
			}
		})
	}

	// The /29 holds five guests; the holder has one. Four more fit, the
	// next one is refused with the network named.
	for i := 0; i < 4; i++ {
		code, body := call(t, "POST", base+"/v1/vms", map[string]any{}, nil)
		mustStatus(t, code, body, 201)
	}
	code, body = call(t, "POST", base+"/v1/vms", map[string]any{}, nil)
	mustStatus(t, code, body, 409)
	if msg := errMessage(body); !strings.Contains(msg, "172.30.0.0/29 is exhausted") {
		t.Fatalf("exhausted network: %q", msg)
	}
	if n := len(vmDirs(t, h)); n != 5 {
		t.Fatalf("%d VM directories, want 5", n)
	}
}

// TestConcurrentCreatesAndDeletes creates 200 VMs at once and shows every
// guest IP and host port is unique, then deletes them at once and shows the
// store and the allocations are empty again.
func TestConcurrentCreatesAndDeletes(t *testing.T) {
	h := newHost(t, noServiceManager)
	base := h.serve(t)
	const n = 200
	vms := make([]wire.VM, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req := map[string]any{"ports": []map[string]any{{"guest": 80}, {"guest": 53, "protocol": "udp"}}}
			code, body := call(t, "POST", base+"/v1/vms", req, &vms[i])
			if code != 201 {
				errs <- fmt.Errorf("create %d: %d %s", i, code, body)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ips := map[string]string{}
	ports := map[string]string{}
	for _, vm := range vms {
		if other, dup := ips[vm.Network.GuestIP]; dup {
			t.Fatalf("guest IP %s given to %s and %s", vm.Network.GuestIP, other, vm.ID)
		}
		ips[vm.Network.GuestIP] = vm.ID
		for _, p := range vm.Network.Ports {
			k := fmt.Sprintf("%d/%s", p.Host, p.Protocol)
			if other, dup := ports[k]; dup {
				t.Fatalf("host port %s given to %s and %s", k, other, vm.ID)
			}
			ports[k] = vm.ID
		}
	}
	if len(ips) != n || len(ports) != 2*n {
		t.Fatalf("%d IPs and %d ports for %d VMs", len(ips), len(ports), n)
	}
	// What the store says matches what the API handed out.
	metas, err := h.store(t).List()
	if err != nil || len(metas) != n {
		t.Fatalf("store lists %d VMs (%v), want %d", len(metas), err, n)
	}
	for _, m := range metas {
		if ips[m.GuestIP] != m.ID {
			t.Fatalf("stored IP %s of %s differs from the API's answer", m.GuestIP, m.ID)
		}
	}

	errs = make(chan error, n)
	for _, vm := range vms {
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			code, body := call(t, "DELETE", base+"/v1/vms/"+id, nil, nil)
			if code != 200 {
				errs <- fmt.Errorf("delete %s: %d %s", id, code, body)
			}
		}(vm.ID)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if left := vmDirs(t, h); len(left) != 0 {
		t.Fatalf("config root not empty: %v", left)
	}
	var list wire.VMList
	call(t, "GET", base+"/v1/vms", nil, &list)
	if list.Count != 0 {
		t.Fatalf("list shows %d VMs after deleting all", list.Count)
	}
	// Allocation is derived from the store: with the store empty, the first
	// address and the lowest ports are free again.
	var vm wire.VM
	code, body := call(t, "POST", base+"/v1/vms", map[string]any{"ports": []map[string]any{{"guest": 80}}}, &vm)
	mustStatus(t, code, body, 201)
	if vm.Network.GuestIP != "172.30.0.2" {
		t.Fatalf("after deleting everything the first address is %s, want 172.30.0.2", vm.Network.GuestIP)
	}
}

// TestHooksSeeTheVMAndStrictFailuresRollBack runs global and per-VM hooks
// against real HTTP servers: hooks receive the VM's context, a failing
// best-effort hook does not stop a create, and a failing strict hook fails
// it, naming the hook and the status but not the answer, and leaves
// nothing behind. A command hook in the body is refused (the daemon runs
// without MGR_ALLOW_VM_COMMAND_HOOKS).
func TestHooksSeeTheVMAndStrictFailuresRollBack(t *testing.T) {
	type seen struct {
		Event string            `json:"event"`
		VMID  string            `json:"vmId"`
		IP    string            `json:"guestIP"`
		Tags  map[string]string `json:"tags"`
	}
	events := make(chan seen, 16)
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s seen
		json.NewDecoder(r.Body).Decode(&s)
		events <- s
	}))
	defer ok.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "hook says no", http.StatusInternalServerError)
	}))
	defer failing.Close()

	h := newHost(t, noServiceManager)
	global := h.path("data", "hooks.d")
	os.MkdirAll(global, 0o755)
	os.WriteFile(filepath.Join(global, "10-audit.json"), []byte(`{"onCreate":[{"url":"`+ok.URL+`/global"}],"onDelete":[{"url":"`+ok.URL+`/global"}]}`), 0o644)
	base := h.serve(t)

	var vm wire.VM
	code, body := call(t, "POST", base+"/v1/vms", map[string]any{
		"tags":  map[string]string{"name": "hooked"},
		"hooks": map[string]any{"onCreate": []map[string]any{{"url": failing.URL}, {"url": ok.URL + "/own"}}},
	}, &vm)
	mustStatus(t, code, body, 201)
	for i := 0; i < 2; i++ { // global first, then the VM's own (the failing best-effort one is skipped)
		select {
		case s := <-events:
			if s.Event != "onCreate" || s.VMID != vm.ID || s.IP != vm.Network.GuestIP || s.Tags["name"] != "hooked" {
				t.Fatalf("hook saw %+v", s)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("hook not called")
		}
	}
	code, body = call(t, "DELETE", base+"/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 200)
	if s := <-events; s.Event != "onDelete" || s.VMID != vm.ID {
		t.Fatalf("onDelete hook saw %+v", s)
	}

	code, body = call(t, "POST", base+"/v1/vms", map[string]any{
		"hooks": map[string]any{"onCreate": []map[string]any{{"url": failing.URL, "strict": true}}},
	}, nil)
	mustStatus(t, code, body, 503)
	if msg := errMessage(body); !strings.Contains(msg, "onCreate hook 0") || !strings.Contains(msg, "HTTP 500") || strings.Contains(msg, "hook says no") {
		t.Fatalf("strict failure message: %q; want the hook and the status, not the answer", msg)
	}
	<-events // the global onCreate hook ran before the strict one failed
	if left := vmDirs(t, h); len(left) != 0 {
		t.Fatalf("a create rolled back by a strict hook left %v", left)
	}
	// A strict onDelete hook vetoes the delete.
	code, body = call(t, "POST", base+"/v1/vms", map[string]any{
		"hooks": map[string]any{"onDelete": []map[string]any{{"url": failing.URL, "strict": true}}},
	}, &vm)
	mustStatus(t, code, body, 201)
	<-events
	code, body = call(t, "DELETE", base+"/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 503)
	if left := vmDirs(t, h); len(left) != 1 {
		t.Fatalf("a vetoed delete removed the VM: %v", left)
	}

	code, body = call(t, "POST", base+"/v1/vms", map[string]any{
		"hooks": map[string]any{"onCreate": []map[string]any{{"command": []string{"/bin/sh", "-c", "id"}, "strict": true}}},
	}, nil)
	mustStatus(t, code, body, 400)
	if msg := errMessage(body); !strings.Contains(msg, "hooks.onCreate[0].command: command hooks in API requests are disabled") {
		t.Fatalf("command hook: %q; want the field named", msg)
	}
	if left := vmDirs(t, h); len(left) != 1 {
		t.Fatalf("a refused create left %v", left)
	}
}

// TestOperationsOnABusyVMAnswerConflict holds a VM's lock from another
// process (as a delete or a lifecycle stage would) and shows that start,
// stop and delete answer 409 instead of interleaving, and work once the
// lock is released.
func TestOperationsOnABusyVMAnswerConflict(t *testing.T) {
	flockBin, err := exec.LookPath("flock")
	if err != nil {
		t.Fatalf("flock(1) from util-linux is required: %v", err)
	}
	h := newHost(t, map[string]string{"MGR_SUPERVISOR": "systemd", "MGR_COMMAND_TIMEOUT_SECONDS": "1", "MGR_STOP_TIMEOUT_SECONDS": "1"})
	base := h.serve(t)
	var vm wire.VM
	code, body := call(t, "POST", base+"/v1/vms", map[string]any{}, &vm)
	mustStatus(t, code, body, 201)

	// flock(1) hands the locked descriptor to sleep: kill the whole group.
	holder := exec.Command(flockBin, vm.Paths.Lock, "sleep", "30")
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	release := func() { syscall.Kill(-holder.Process.Pid, syscall.SIGKILL); holder.Wait() }
	defer release()
	for i := 0; ; i++ { // until the holder has it
		if exec.Command(flockBin, "-n", vm.Paths.Lock, "true").Run() != nil {
			break
		}
		if i > 100 {
			t.Fatal("the lock holder never took the lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, op := range []struct{ method, path string }{
		{"POST", "/start"}, {"POST", "/stop"}, {"DELETE", ""},
	} {
		code, body := call(t, op.method, base+"/v1/vms/"+vm.ID+op.path, nil, nil)
		mustStatus(t, code, body, 409)
		if msg := errMessage(body); !strings.Contains(msg, "busy") || !strings.Contains(msg, vm.ID) {
			t.Fatalf("%s%s: %q", op.method, op.path, msg)
		}
	}
	release()
	code, body = call(t, "DELETE", base+"/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 200)
}

// TestLifecycleStagesRefuseUnknownVMs runs mergen-lifecycle as the service
// manager would, for a VM that does not exist and with bad arguments.
func TestLifecycleStagesRefuseUnknownVMs(t *testing.T) {
	bin := testenv.Build(t, "./cmd/mergen-lifecycle")
	h := newHost(t, nil)
	env := os.Environ()
	for k, v := range h.env {
		env = append(env, k+"="+v)
	}
	unknown := store.NewID()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"pre-start", unknown}, "vm " + unknown + " not found"},
		{[]string{"post-stop", unknown}, "vm " + unknown + " not found"},
		{[]string{"status", unknown}, "vm " + unknown + " not found"},
		{[]string{"start", "../../etc"}, "is not a lowercase UUID"},
		{[]string{"reboot", unknown}, `unknown stage "reboot"`},
		{[]string{"pre-start"}, "usage: mergen-lifecycle <stage> <vm-id>"},
	}
	for _, tc := range cases {
		cmd := exec.Command(bin, tc.args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("mergen-lifecycle %v: err %v, output %q; want failure containing %q", tc.args, err, out, tc.want)
		}
	}
}
