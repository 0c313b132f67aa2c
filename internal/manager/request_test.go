package manager_test

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/wire"
)

// Every field of a create request that can be wrong is refused as invalid,
// with a message that names the field as it is spelled in the JSON body, and
// the refusal leaves nothing on disk.
func TestCreateRefusesAnInvalidRequestNamingTheFieldAndKeepsNothing(t *testing.T) {
	h := newHost(t, nil)
	outside := filepath.Join(h.dir, "outside.img") // not under any allowed root
	writeFile(t, outside, "secret")
	notRegular := filepath.Join(h.disks, "a-directory")
	if err := os.MkdirAll(notRegular, 0o755); err != nil {
		t.Fatal(err)
	}
	escaping := filepath.Join(h.disks, "escaping.img") // a link inside the roots to a file outside
	if err := os.Symlink(outside, escaping); err != nil {
		t.Fatal(err)
	}
	manyTags := map[string]string{}
	for i := 0; i <= 64; i++ {
		manyTags["t"+itoa(i)] = "v"
	}
	// Past what even the agent channel takes (bootparam.MaxAgentEnv); what
	// only passes the command line's bound goes over that channel.
	bigEnv := map[string]string{"BIG": strings.Repeat("x", 33<<10)}
	bridge := func(mut func(*wire.BridgeRequest)) *wire.BridgeRequest {
		b := &wire.BridgeRequest{Name: "docker0", GuestIP: "172.17.0.10", GatewayIP: "172.17.0.1", Netmask: "255.255.0.0"}
		mut(b)
		return b
	}

	cases := []struct {
		name  string
		req   wire.CreateRequest
		field string // must appear in the message
	}{
		{"unknown vmm", wire.CreateRequest{VMM: "kvmtool"}, "vmm:"},
		{"vcpu above the limit", wire.CreateRequest{VCPU: manager.MaxVCPU + 1}, "vcpu:"},
		{"negative vcpu", wire.CreateRequest{VCPU: -1}, "vcpu:"},
		{"memory below the minimum", wire.CreateRequest{MemMiB: manager.MinMemMiB - 1}, "memMiB:"},
		{"memory above the maximum", wire.CreateRequest{MemMiB: manager.MaxMemMiB + 1}, "memMiB:"},
		{"guest port zero", wire.CreateRequest{Ports: []wire.Port{{Guest: 0}}}, "ports[0].guest:"},
		{"guest port too high", wire.CreateRequest{Ports: []wire.Port{{Guest: 80}, {Guest: 65536}}}, "ports[1].guest:"},
		{"negative host port", wire.CreateRequest{Ports: []wire.Port{{Guest: 80, Host: -1}}}, "ports[0].host:"},
		{"host port too high", wire.CreateRequest{Ports: []wire.Port{{Guest: 80, Host: 65536}}}, "ports[0].host:"},
		{"unknown protocol", wire.CreateRequest{Ports: []wire.Port{{Guest: 80, Protocol: "sctp"}}}, "ports[0].protocol:"},
		{"guest port published twice", wire.CreateRequest{Ports: []wire.Port{{Guest: 80}, {Guest: 80, Protocol: "TCP"}}}, "ports[1].guest:"},
		{"host port used twice", wire.CreateRequest{Ports: []wire.Port{{Guest: 80, Host: 30080}, {Guest: 81, Host: 30080}}}, "ports[1].host:"},
		{"negative httpPort", wire.CreateRequest{HTTPPort: -1}, "httpPort:"},
		{"httpPort too high", wire.CreateRequest{HTTPPort: 65536}, "httpPort:"},
		{"too many tags", wire.CreateRequest{Tags: manyTags}, "tags:"},
		{"tag key with a blank", wire.CreateRequest{Tags: map[string]string{"bad key": "v"}}, "tags:"},
		{"tag key starting with a dash", wire.CreateRequest{Tags: map[string]string{"-k": "v"}}, "tags:"},
		{"tag key too long", wire.CreateRequest{Tags: map[string]string{strings.Repeat("k", 64): "v"}}, "tags:"},
		{"tag value with a newline", wire.CreateRequest{Tags: map[string]string{"team": "a\nb"}}, "tags.team:"},
		{"tag value too long", wire.CreateRequest{Tags: map[string]string{"team": strings.Repeat("v", 254)}}, "tags.team:"},
		{"name with capitals", wire.CreateRequest{Tags: map[string]string{"name": "Web"}}, "tags.name:"},
		{"name starting with a dash", wire.CreateRequest{Tags: map[string]string{"name": "-web"}}, "tags.name:"},
		{"name with a dot", wire.CreateRequest{Tags: map[string]string{"name": "web.example"}}, "tags.name:"},
		{"name longer than a DNS label", wire.CreateRequest{Tags: map[string]string{"name": strings.Repeat("a", 64)}}, "tags.name:"},
		{"empty name", wire.CreateRequest{Tags: map[string]string{"name": ""}}, "tags.name:"},
		{"metadata not JSON", wire.CreateRequest{Metadata: json.RawMessage(`{"a":`)}, "metadata:"},
		{"metadata too big", wire.CreateRequest{Metadata: json.RawMessage(`"` + strings.Repeat("m", 64<<10) + `"`)}, "metadata:"},
		{"bootArgs on two lines", wire.CreateRequest{BootArgs: "quiet\ninit=/bin/sh"}, "bootArgs:"},
		{"bootArgs too long", wire.CreateRequest{BootArgs: strings.Repeat("a", 1025)}, "bootArgs:"},
		{"extraEnv key starting with a digit", wire.CreateRequest{ExtraEnv: map[string]string{"1A": "v"}}, "extraEnv:"},
		{"extraEnv key with a dash", wire.CreateRequest{ExtraEnv: map[string]string{"A-B": "v"}}, "extraEnv:"},
		{"extraEnv value with a newline", wire.CreateRequest{ExtraEnv: map[string]string{"K": "a\nb"}}, "extraEnv.K:"},
		{"extraEnv too large for the agent channel", wire.CreateRequest{ExtraEnv: bigEnv}, "extraEnv:"},
		{"argv with an empty program", wire.CreateRequest{Argv: []string{"", "x"}}, "argv[0]:"},
		{"argv with NUL", wire.CreateRequest{Argv: []string{"sh", "a\x00b"}}, "argv[1]:"},
		{"argv too large for the command line", wire.CreateRequest{Argv: []string{"sh", "-c", strings.Repeat("x", 600)}}, "argv:"},
		{"unknown restart policy", wire.CreateRequest{Restart: "sometimes"}, "restart:"},
		{"restart count zero", wire.CreateRequest{Restart: "on-failure:0"}, "restart:"},
		{"restart count not a number", wire.CreateRequest{Restart: "on-failure:x"}, "restart:"},
		{"restart count on always", wire.CreateRequest{Restart: "always:3"}, "restart:"},
		{"bridge name invalid", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.Name = "a-bridge-name-too-long" })}, "bridge.name:"},
		{"bridge name of 16 bytes", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.Name = strings.Repeat("b", 16) })}, "bridge.name:"},
		{"name of 63 bytes ending in a hyphen", wire.CreateRequest{Tags: map[string]string{"name": strings.Repeat("a", 62) + "-"}}, "tags.name:"},
		{"bridge guest IP invalid", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP = "172.17.0" })}, "bridge.guestIP:"},
		{"bridge gateway IPv6", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GatewayIP = "fe80::1" })}, "bridge.gatewayIP:"},
		{"bridge netmask not contiguous", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.Netmask = "255.0.255.0" })}, "bridge.netmask:"},
		{"bridge gateway outside the network", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GatewayIP = "10.0.0.1" })}, "bridge.gatewayIP:"},
		{"bridge guest IP equals the gateway", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP = b.GatewayIP })}, "bridge.guestIP:"},
		{"bridge MAC invalid", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.MAC = "02:00:00:00:00" })}, "bridge.mac:"},
		{"bridge guest IP loopback", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP, b.GatewayIP, b.Netmask = "127.0.0.1", "127.0.0.2", "255.0.0.0" })}, "bridge.guestIP: 127.0.0.1 is a loopback address"},
		{"bridge gateway loopback", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GatewayIP = "127.0.0.1" })}, "bridge.gatewayIP: 127.0.0.1 is a loopback address"},
		{"bridge guest IP link-local", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP, b.GatewayIP = "169.254.1.2", "169.254.1.1" })}, "bridge.guestIP: 169.254.1.2 is a link-local address"},
		{"bridge gateway link-local (metadata)", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GatewayIP = "169.254.169.254" })}, "bridge.gatewayIP: 169.254.169.254 is a link-local address"},
		{"bridge guest IP unspecified", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP = "0.0.0.0" })}, "bridge.guestIP: 0.0.0.0 is the unspecified address"},
		{"bridge guest IP multicast", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP, b.GatewayIP = "224.0.0.5", "224.0.0.1" })}, "bridge.guestIP: 224.0.0.5 is a multicast address"},
		{"bridge gateway multicast", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GatewayIP = "239.1.1.1" })}, "bridge.gatewayIP: 239.1.1.1 is a multicast address"},
		{"bridge guest IP limited broadcast", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP = "255.255.255.255" })}, "bridge.guestIP: 255.255.255.255 is the broadcast address"},
		{"bridge guest IP the network address", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP = "172.17.0.0" })}, "bridge.guestIP: 172.17.0.0 is the network or broadcast"},
		{"bridge guest IP the subnet broadcast", wire.CreateRequest{Bridge: bridge(func(b *wire.BridgeRequest) { b.GuestIP = "172.17.255.255" })}, "bridge.guestIP: 172.17.255.255 is the network or broadcast"},
		{"bridge with published ports", wire.CreateRequest{Bridge: bridge(func(*wire.BridgeRequest) {}), Ports: []wire.Port{{Guest: 80}}}, "ports:"},
		{"hooks of an unknown event", wire.CreateRequest{Hooks: json.RawMessage(`{"onBoot":[]}`)}, "hooks.onBoot:"},
		{"command hook without the operator's consent", wire.CreateRequest{Hooks: json.RawMessage(`{"onCreate":[{"command":["true"]}]}`)}, "hooks.onCreate[0].command: command hooks in API requests are disabled"},
		{"kernel path relative", wire.CreateRequest{Kernel: "disks/vmlinux"}, "kernel:"},
		{"rootfs missing", wire.CreateRequest{Rootfs: filepath.Join(h.disks, "missing.ext4")}, "rootfs:"},
		{"initrd missing", wire.CreateRequest{Initrd: filepath.Join(h.disks, "missing.img")}, "initrd:"},
		{"kernel outside the allowed roots", wire.CreateRequest{Kernel: outside}, "kernel:"},
		{"rootfs outside through dot-dot", wire.CreateRequest{Rootfs: h.disks + "/../../outside.img"}, "rootfs:"},
		{"dataDisk a host file outside the roots", wire.CreateRequest{DataDisk: "/etc/passwd"}, "dataDisk:"},
		{"agentDisk not a regular file", wire.CreateRequest{AgentDisk: notRegular}, "agentDisk:"},
		{"payloadDisk a link escaping the roots", wire.CreateRequest{PayloadDisk: escaping}, "payloadDisk:"},
		{"health check of no kind", wire.CreateRequest{HealthCheck: &wire.HealthCheck{}}, "healthCheck: give exactly one of http, tcp and exec"},
		{"health check of two kinds", wire.CreateRequest{HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}, Exec: &wire.ExecHealthCheck{Argv: []string{"true"}}}}, "healthCheck:"},
		{"http check without a port", wire.CreateRequest{HealthCheck: &wire.HealthCheck{HTTP: &wire.HTTPHealthCheck{Path: "/"}}}, "healthCheck.http.port:"},
		{"http check port too high", wire.CreateRequest{HTTPPort: 80, HealthCheck: &wire.HealthCheck{HTTP: &wire.HTTPHealthCheck{Port: 65536, Path: "/"}}}, "healthCheck.http.port:"},
		{"http check path relative", wire.CreateRequest{HTTPPort: 80, HealthCheck: &wire.HealthCheck{HTTP: &wire.HTTPHealthCheck{Path: "healthz"}}}, "healthCheck.http.path:"},
		{"http check path with a blank", wire.CreateRequest{HTTPPort: 80, HealthCheck: &wire.HealthCheck{HTTP: &wire.HTTPHealthCheck{Path: "/a b"}}}, "healthCheck.http.path:"},
		{"http check path with a newline", wire.CreateRequest{HTTPPort: 80, HealthCheck: &wire.HealthCheck{HTTP: &wire.HTTPHealthCheck{Path: "/\r\nX: y"}}}, "healthCheck.http.path:"},
		{"tcp check port zero", wire.CreateRequest{HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{}}}, "healthCheck.tcp.port:"},
		{"exec check without argv", wire.CreateRequest{HealthCheck: &wire.HealthCheck{Exec: &wire.ExecHealthCheck{}}}, "healthCheck.exec.argv:"},
		{"exec check argument with NUL", wire.CreateRequest{HealthCheck: &wire.HealthCheck{Exec: &wire.ExecHealthCheck{Argv: []string{"test", "a\x00b"}}}}, "healthCheck.exec.argv[1]:"},
		{"exec check argv too large", wire.CreateRequest{HealthCheck: &wire.HealthCheck{Exec: &wire.ExecHealthCheck{Argv: []string{strings.Repeat("a", 17<<10)}}}}, "healthCheck.exec.argv:"},
		{"health interval too long", wire.CreateRequest{HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}, IntervalSeconds: 3601}}, "healthCheck.intervalSeconds: must be 1..3600"},
		{"health interval negative", wire.CreateRequest{HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}, IntervalSeconds: -1}}, "healthCheck.intervalSeconds:"},
		{"health timeout too long", wire.CreateRequest{HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}, TimeoutSeconds: 301}}, "healthCheck.timeoutSeconds:"},
		{"health retries too many", wire.CreateRequest{HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}, Retries: 101}}, "healthCheck.retries:"},
		{"health start period negative", wire.CreateRequest{HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}, StartPeriodSeconds: -5}}, "healthCheck.startPeriodSeconds:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vm, err := h.mgr.Create(context.Background(), c.req)
			if !errdefs.IsInvalid(err) {
				t.Fatalf("Create = %s, %v; want an invalid-request error", vm.ID, err)
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Errorf("error %q does not name the field %q", err, c.field)
			}
			if left := h.leftovers(t); len(left) > 0 {
				t.Errorf("a refused create left %v", left)
			}
		})
	}
}

// Bridge mode refuses a guest address that is one of the host's own (the
// forwarder would publish the host's services); the host's address as the
// gateway is the usual set-up and is accepted.
func TestCreateRefusesABridgeGuestAtAHostAddress(t *testing.T) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var own netip.Prefix
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ip, _ := netip.AddrFromSlice(n.IP)
			ip = ip.Unmap()
			bits, _ := n.Mask.Size()
			if ip.Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && bits <= 30 {
				own = netip.PrefixFrom(ip, bits)
				break
			}
		}
	}
	if !own.IsValid() {
		t.Skip("this host has no IPv4 address besides loopback and link-local")
	}
	mask := net.IP(net.CIDRMask(own.Bits(), 32)).String()
	other := own.Masked().Addr().Next()
	if other == own.Addr() {
		other = other.Next()
	}
	h := newHost(t, nil)
	_, err = h.mgr.Create(context.Background(), wire.CreateRequest{Bridge: &wire.BridgeRequest{
		Name: "br-test", GuestIP: own.Addr().String(), GatewayIP: other.String(), Netmask: mask}})
	if !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "bridge.guestIP: "+own.Addr().String()+" is one of this host's own addresses") {
		t.Fatalf("guest at the host's own %s: %v; want invalid naming bridge.guestIP", own.Addr(), err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Errorf("a refused create left %v", left)
	}
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{Bridge: &wire.BridgeRequest{
		Name: "br-test", GuestIP: other.String(), GatewayIP: own.Addr().String(), Netmask: mask}})
	if err != nil {
		t.Fatalf("the host's address as the gateway: %v", err)
	}
	if vm.Network.GuestIP != other.String() {
		t.Errorf("guest IP %s, want %s", vm.Network.GuestIP, other)
	}
}

// A disk outside the roots is refused with the roots named, so the caller
// learns where disks may come from; the host file's content is not echoed.
func TestCreateRefusesADiskOutsideTheRootsNamingThem(t *testing.T) {
	h := newHost(t, nil)
	_, err := h.mgr.Create(context.Background(), wire.CreateRequest{Rootfs: "/etc/passwd"})
	if !errdefs.IsInvalid(err) || !contains(err.Error(), "outside the allowed disk roots", h.cfg.DataRoot) {
		t.Fatalf("Create with /etc/passwd as rootfs = %v; want invalid, naming the allowed roots", err)
	}
	if strings.Contains(err.Error(), "root:") {
		t.Fatalf("the error echoes the file's content: %v", err)
	}
}

// Kernel and root file system may be left out only when the host's defaults
// exist; otherwise the error says which variable to set.
func TestCreateWithoutUsableDefaultsNamesTheVariable(t *testing.T) {
	h := newHost(t, nil)
	if err := os.Remove(h.cfg.DefaultKernel); err != nil {
		t.Fatal(err)
	}
	_, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
	if !errdefs.IsInvalid(err) || !contains(err.Error(), "kernel:", "MGR_DEFAULT_KERNEL") {
		t.Fatalf("Create without a kernel and without the default one = %v; want invalid naming kernel and MGR_DEFAULT_KERNEL", err)
	}
	kernel := h.disk(t, "vmlinux")
	if err := os.Remove(h.cfg.DefaultRootfs); err != nil {
		t.Fatal(err)
	}
	_, err = h.mgr.Create(context.Background(), wire.CreateRequest{Kernel: kernel})
	if !errdefs.IsInvalid(err) || !contains(err.Error(), "rootfs:", "MGR_DEFAULT_ROOTFS") {
		t.Fatalf("Create without a rootfs and without the default one = %v; want invalid naming rootfs and MGR_DEFAULT_ROOTFS", err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Errorf("refused creates left %v", left)
	}
}

// A valid request gets the documented defaults, and the disks it names are
// stored by their resolved paths: a link inside the roots to a file inside
// the roots is accepted, and what is attached is the file itself.
func TestCreateFillsDefaultsAndStoresResolvedDiskPaths(t *testing.T) {
	h := newHost(t, nil)
	rootfs := h.disk(t, "app.ext4")
	link := filepath.Join(h.disks, "current.ext4")
	if err := os.Symlink("app.ext4", link); err != nil {
		t.Fatal(err)
	}
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{
		Rootfs:   link,
		Ports:    []wire.Port{{Guest: 53, Protocol: "UDP"}},
		Tags:     map[string]string{"name": "web-1", "team": "a/b.c"},
		Metadata: json.RawMessage(`{"owner":"x"}`),
		ExtraEnv: map[string]string{"GREETING": "hello world"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if vm.VCPU != manager.DefaultVCPU || vm.MemMiB != manager.DefaultMemMiB {
		t.Errorf("vcpu %d, memMiB %d; want the defaults %d, %d", vm.VCPU, vm.MemMiB, manager.DefaultVCPU, manager.DefaultMemMiB)
	}
	if vm.VMM != "firecracker" {
		t.Errorf("vmm %q, want the host's firecracker", vm.VMM)
	}
	if vm.Kernel != h.cfg.DefaultKernel {
		t.Errorf("kernel %q, want the host's default %q", vm.Kernel, h.cfg.DefaultKernel)
	}
	if vm.Disks.Rootfs != rootfs {
		t.Errorf("rootfs stored as %q, want the link's target %q", vm.Disks.Rootfs, rootfs)
	}
	if p := vm.Network.Ports; len(p) != 1 || p[0].Protocol != "udp" {
		t.Errorf("ports %+v, want one udp port (protocol lowercased)", p)
	}
	if vm.Name != "web-1" {
		t.Errorf("name %q, want web-1", vm.Name)
	}
	got, err := h.mgr.Get(context.Background(), vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	var md map[string]string
	if err := json.Unmarshal(got.Metadata, &md); err != nil || md["owner"] != "x" {
		t.Errorf("metadata read back as %s (%v), want the object given", got.Metadata, err)
	}
	if got.ID != vm.ID || got.Disks != vm.Disks || got.Network.GuestIP != vm.Network.GuestIP {
		t.Errorf("Get = %+v, want what Create answered: %+v", got, vm)
	}
	if byName, err := h.mgr.FindByName(context.Background(), "web-1"); err != nil || byName.ID != vm.ID {
		t.Errorf("FindByName(web-1) = %s, %v; want %s", byName.ID, err, vm.ID)
	}
}

func TestCreateRecordsTheRestartPolicyForTheSupervisor(t *testing.T) {
	h := newHost(t, nil)
	ctx := context.Background()
	plain, err := h.mgr.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if plain.Restart != "no" || plain.Restarts != 0 {
		t.Errorf("default restart %q, restarts %d; want no, 0", plain.Restart, plain.Restarts)
	}
	if env, err := os.ReadFile(plain.Paths.Env); err != nil || strings.Contains(string(env), "MGR_RESTART") {
		t.Errorf("env file of a VM without a policy: %q (%v); want no MGR_RESTART", env, err)
	}
	vm, err := h.mgr.Create(ctx, wire.CreateRequest{Restart: "on-failure:3"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.mgr.Get(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Restart != "on-failure:3" {
		t.Errorf("restart read back as %q, want on-failure:3", got.Restart)
	}
	if env, err := os.ReadFile(got.Paths.Env); err != nil || !strings.Contains(string(env), "MGR_RESTART=on-failure:3") {
		t.Errorf("env file %q (%v); want MGR_RESTART=on-failure:3 for the supervisor", env, err)
	}
}

// A health check is recorded with its defaults filled in and shown in the
// document; a VM that does not run has no health.
func TestCreateRecordsTheHealthCheckWithDefaults(t *testing.T) {
	h := newHost(t, nil)
	ctx := context.Background()
	vm, err := h.mgr.Create(ctx, wire.CreateRequest{HTTPPort: 8080, HealthCheck: &wire.HealthCheck{HTTP: &wire.HTTPHealthCheck{}}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.mgr.Get(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := wire.HealthCheck{HTTP: &wire.HTTPHealthCheck{Path: "/"}, IntervalSeconds: 10, TimeoutSeconds: 2, Retries: 3}
	if c := got.HealthCheck; c == nil || *c.HTTP != *want.HTTP || c.IntervalSeconds != 10 || c.TimeoutSeconds != 2 || c.Retries != 3 || c.StartPeriodSeconds != 0 {
		t.Fatalf("health check read back as %+v, want %+v", got.HealthCheck, want)
	}
	if got.Health != nil {
		t.Fatalf("a VM never started has health %+v", got.Health)
	}
	plain, err := h.mgr.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if plain.HealthCheck != nil || plain.Health != nil {
		t.Fatalf("a VM without a check: %+v %+v", plain.HealthCheck, plain.Health)
	}
}
