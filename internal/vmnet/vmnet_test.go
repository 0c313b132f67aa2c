package vmnet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
)

// testConfig is a VM on a test-only guest network. Link names stay unique
// per test run.
func testConfig(t *testing.T, n int, ports ...store.Port) Config {
	id := store.NewID()
	return Config{
		ID: id, Netns: store.NetnsName(id), Tap: store.TapName(id), Veth: store.VethName(id),
		GuestIP:   netip.MustParseAddr(fmt.Sprintf("172.31.240.%d", n+1)),
		Gateway:   netip.MustParseAddr("172.31.240.1"),
		PrefixLen: 24, MAC: MACFor(id), Ports: ports,
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func inNS(t *testing.T, ns string, args ...string) string {
	return run(t, append([]string{"ip", "netns", "exec", ns}, args...)...)
}

func mustSetup(t *testing.T, c Config) {
	t.Helper()
	if err := Setup(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Teardown(context.Background(), c) })
}

func assertGone(t *testing.T, c Config) {
	t.Helper()
	if out := run(t, "ip", "netns", "list"); c.Netns != "" && strings.Contains(out, c.Netns) {
		t.Errorf("namespace %s left:\n%s", c.Netns, out)
	}
	short := store.ShortID(c.ID)
	if out := run(t, "ip", "-o", "link", "show"); strings.Contains(out, short) {
		t.Errorf("link of %s left:\n%s", short, out)
	}
	if out := run(t, "ip", "route", "show"); strings.Contains(out, c.GuestIP.String()+" ") {
		t.Errorf("route to %s left:\n%s", c.GuestIP, out)
	}
	if out := run(t, "nft", "list", "ruleset"); strings.Contains(out, c.ID) {
		t.Errorf("rules of %s left:\n%s", c.ID, out)
	}
}

func TestSetupBuildsTheDocumentedTopology(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 1, store.Port{Guest: 80, Host: 28080, Protocol: "tcp"}, store.Port{Guest: 53, Host: 28053, Protocol: "udp"})
	mustSetup(t, c)

	if out := run(t, "ip", "netns", "list"); !strings.Contains(out, c.Netns) {
		t.Fatalf("namespace %s missing:\n%s", c.Netns, out)
	}
	tap := inNS(t, c.Netns, "ip", "-d", "-o", "addr", "show", "dev", c.Tap)
	if !strings.Contains(tap, "172.31.240.1/24") {
		t.Fatalf("tap %s has no gateway address:\n%s", c.Tap, tap)
	}
	if out := inNS(t, c.Netns, "ip", "-d", "link", "show", c.Tap); !strings.Contains(out, "tap") {
		t.Fatalf("%s is not a tap:\n%s", c.Tap, out)
	}
	if out := run(t, "ip", "-o", "addr", "show", "dev", c.Veth); !strings.Contains(out, "169.254.1.1/32") {
		t.Fatalf("host veth address:\n%s", out)
	}
	if out := run(t, "ip", "route", "show", c.GuestIP.String()); !strings.Contains(out, "via 169.254.1.2 dev "+c.Veth) {
		t.Fatalf("host route to the guest:\n%s", out)
	}
	if out := inNS(t, c.Netns, "ip", "route", "show", "default"); !strings.Contains(out, "via 169.254.1.1 dev veth0") {
		t.Fatalf("namespace default route:\n%s", out)
	}
	if out := inNS(t, c.Netns, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
		t.Fatal("forwarding off inside the namespace")
	}
	rules := run(t, "nft", "list", "table", "ip", TableName)
	for _, want := range []string{
		"tcp dport 28080 dnat to 172.31.240.2:80",
		"udp dport 28053 dnat to 172.31.240.2:53",
		`oifname "` + c.Veth + `" ip saddr 127.0.0.0/8 masquerade`,
		"ip saddr 172.31.240.2 oifname != \"veth-*\" masquerade",
		`iifname "veth-*" oifname "veth-*" drop`,
		`comment "mergen vm ` + c.ID + `"`,
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rules)
		}
	}
}

func TestSetupIsIdempotentAndTeardownLeavesNothing(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 2, store.Port{Guest: 80, Host: 28081, Protocol: "tcp"})
	for i := 0; i < 2; i++ {
		if err := Setup(context.Background(), c); err != nil {
			t.Fatalf("setup %d: %v", i+1, err)
		}
	}
	rules := run(t, "nft", "list", "table", "ip", TableName)
	if n := strings.Count(rules, "dport 28081"); n != 2 { // prerouting + output
		t.Fatalf("%d DNAT rules after two setups, want 2:\n%s", n, rules)
	}
	if n := strings.Count(rules, isolationComment); n != 1 {
		t.Fatalf("isolation rule present %d times", n)
	}
	for i := 0; i < 2; i++ {
		if err := Teardown(context.Background(), c); err != nil {
			t.Fatalf("teardown %d: %v", i+1, err)
		}
	}
	assertGone(t, c)
}

func TestConcurrentSetupsOfManyVMs(t *testing.T) {
	testenv.RequireRoot(t)
	var cs []Config
	for i := 0; i < 6; i++ {
		cs = append(cs, testConfig(t, 10+i, store.Port{Guest: 80, Host: 28100 + i, Protocol: "tcp"}))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(cs))
	for i, c := range cs {
		wg.Add(1)
		go func(i int, c Config) { defer wg.Done(); errs[i] = Setup(context.Background(), c) }(i, c)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("setup %d: %v", i, err)
		}
	}
	rules := run(t, "nft", "list", "table", "ip", TableName)
	for _, c := range cs {
		if strings.Count(rules, c.ID) != 4 {
			t.Fatalf("vm %s has %d rules, want 4:\n%s", c.ID, strings.Count(rules, c.ID), rules)
		}
	}
	for i, c := range cs {
		wg.Add(1)
		go func(i int, c Config) { defer wg.Done(); errs[i] = Teardown(context.Background(), c) }(i, c)
	}
	wg.Wait()
	for i, c := range cs {
		if errs[i] != nil {
			t.Fatalf("teardown %d: %v", i, errs[i])
		}
		assertGone(t, c)
	}
}

// helperEnv carries a Config (as JSON) to a copy of the test binary that
// sets it up or tears it down as a separate process, as lifecycle stages of
// different VMs do.
const helperEnv = "MERGEN_VMNET_HELPER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		var req struct {
			Op     string
			Config Config
		}
		if err := json.Unmarshal([]byte(spec), &req); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		op := Setup
		if req.Op == "teardown" {
			op = Teardown
		}
		if err := op(context.Background(), req.Config); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// inProcesses runs op for every config at once, each in its own process.
func inProcesses(t *testing.T, op string, cs []Config) {
	t.Helper()
	cmds := make([]*exec.Cmd, len(cs))
	outs := make([]strings.Builder, len(cs))
	for i, c := range cs {
		spec, err := json.Marshal(map[string]any{"Op": op, "Config": c})
		if err != nil {
			t.Fatal(err)
		}
		cmds[i] = exec.Command(os.Args[0])
		cmds[i].Env = append(os.Environ(), helperEnv+"="+string(spec))
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("%s of vm %s in its own process: %v\n%s", op, cs[i].ID, err, outs[i].String())
		}
	}
}

func TestConcurrentSetupsInSeparateProcesses(t *testing.T) {
	testenv.RequireRoot(t)
	var cs []Config
	for i := 0; i < 4; i++ {
		c := testConfig(t, 50+i, store.Port{Guest: 80, Host: 28300 + i, Protocol: "tcp"})
		cs = append(cs, c)
		t.Cleanup(func() { Teardown(context.Background(), c) })
	}
	inProcesses(t, "setup", cs)
	rules := run(t, "nft", "list", "table", "ip", TableName)
	if n := strings.Count(rules, isolationComment); n != 1 {
		t.Fatalf("isolation rule present %d times:\n%s", n, rules)
	}
	for _, c := range cs {
		if n := strings.Count(rules, c.ID); n != 4 {
			t.Fatalf("vm %s has %d rules, want 4:\n%s", c.ID, n, rules)
		}
		if out := run(t, "ip", "route", "show", c.GuestIP.String()); !strings.Contains(out, "dev "+c.Veth) {
			t.Fatalf("no host route to %s:\n%s", c.GuestIP, out)
		}
	}
	inProcesses(t, "teardown", cs)
	for _, c := range cs {
		assertGone(t, c)
	}
}

func TestBadConfigsAreRefusedAndLeaveNothing(t *testing.T) {
	testenv.RequireRoot(t)
	base := testConfig(t, 3)
	cases := []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"tap name too long", func(c *Config) { c.Tap = "tap-0123456789abcdef" }, "tap name"},
		{"guest outside the gateway's network", func(c *Config) { c.GuestIP = netip.MustParseAddr("10.9.9.9") }, "not in the gateway's network"},
		{"guest is the gateway", func(c *Config) { c.GuestIP = c.Gateway }, "equals the gateway"},
		{"port zero", func(c *Config) { c.Ports = []store.Port{{Guest: 0, Host: 1, Protocol: "tcp"}} }, "ports[0]"},
		{"port too big", func(c *Config) { c.Ports = []store.Port{{Guest: 80, Host: 70000, Protocol: "tcp"}} }, "ports[0]"},
		{"bad protocol", func(c *Config) { c.Ports = []store.Port{{Guest: 80, Host: 8080, Protocol: "sctp"}} }, "protocol"},
		{"missing bridge", func(c *Config) { c.Bridge = &store.Bridge{Name: "nobr0", Netmask: "255.255.255.0"} }, "bridge nobr0 does not exist"},
		{"prefix too long", func(c *Config) { c.PrefixLen = 31 }, "prefix length 31"},
		{"netns name with a slash", func(c *Config) { c.Netns = "../evil" }, "netns"},
		{"bad mac", func(c *Config) { c.MAC = "02:zz:00:00:00:01" }, "mac"},
		{"published ports in bridge mode", func(c *Config) {
			c.Bridge = &store.Bridge{Name: "docker0", Netmask: "255.255.255.0"}
			c.Ports = []store.Port{{Guest: 80, Host: 8080, Protocol: "tcp"}}
		}, "published ports need the namespace mode"},
	}
	for _, tc := range cases {
		c := base
		tc.mut(&c)
		err := Setup(context.Background(), c)
		if !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), c.ID) {
			t.Errorf("%s: %v, want invalid naming vm %s and containing %q", tc.name, err, c.ID, tc.want)
		}
		assertGone(t, base)
	}
}

// A failure half-way removes what Setup made and nothing that was there
// before: here the host veth's name is taken by a link of another kind.
func TestFailedSetupRollsBack(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 4, store.Port{Guest: 80, Host: 28090, Protocol: "tcp"})
	run(t, "ip", "link", "add", c.Veth, "type", "bridge") // no address: carries no traffic
	t.Cleanup(func() { exec.Command("ip", "link", "del", c.Veth).Run() })

	err := Setup(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "not a veth") || !strings.Contains(err.Error(), c.ID) {
		t.Fatalf("setup over a foreign %s: %v, want an error naming the vm and the clash", c.Veth, err)
	}
	if out := run(t, "ip", "netns", "list"); strings.Contains(out, c.Netns) {
		t.Errorf("namespace %s left after the failed setup:\n%s", c.Netns, out)
	}
	if out := run(t, "nft", "list", "ruleset"); strings.Contains(out, c.ID) {
		t.Errorf("rules of %s left:\n%s", c.ID, out)
	}
	if out := run(t, "ip", "-d", "link", "show", c.Veth); !strings.Contains(out, "bridge") {
		t.Errorf("the foreign link %s was removed by the roll-back:\n%s", c.Veth, out)
	}
}

// A namespace file left without a namespace mounted on it (a creation
// interrupted half-way) neither blocks the next set-up nor survives tear-down.
func TestStaleNamespaceFileIsReplaced(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 5)
	stale := filepath.Join("/run/netns", c.Netns)
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(stale) })
	mustSetup(t, c)
	if out := inNS(t, c.Netns, "ip", "-o", "addr", "show", "dev", c.Tap); !strings.Contains(out, c.Gateway.String()) {
		t.Fatalf("tap in the re-created namespace:\n%s", out)
	}
	if err := Teardown(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	assertGone(t, c)

	// Tear-down alone also clears a stale file.
	if err := os.WriteFile(stale, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := Teardown(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale namespace file survived tear-down: %v", err)
	}
}

// A namespace removed while something still holds it (say, a VMM that has
// not exited) keeps its end of the veth; the next set-up replaces the pair
// instead of keeping a host end that leads into the old namespace.
func TestSetupRepairsAVethIntoAnOldNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 6)
	mustSetup(t, c)
	old, err := netns.GetFromName(c.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close() // keeps the old namespace, and its veth end, alive
	run(t, "ip", "netns", "del", c.Netns)
	if out := run(t, "ip", "-o", "link", "show", c.Veth); !strings.Contains(out, c.Veth) {
		t.Fatalf("host veth should survive while the old namespace is held:\n%s", out)
	}

	if err := Setup(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	// The host end now leads into the new namespace: its peer is veth0 there.
	hostIndex := strings.SplitN(run(t, "ip", "-o", "link", "show", c.Veth), ":", 2)[0]
	if out := inNS(t, c.Netns, "ip", "-o", "link", "show", NSVeth); !strings.Contains(out, NSVeth+"@if"+hostIndex+":") {
		t.Fatalf("%s in the new namespace is not the peer of host link %s (index %s):\n%s", NSVeth, c.Veth, hostIndex, out)
	}
}

// TestPublishedPortsAndIsolation proves the data path without booting a VM:
// a stand-in guest — a namespace whose veth sits on a bridge with the tap,
// carrying the guest IP — answers on 127.0.0.1:<host port> through the DNAT,
// its outbound traffic is masqueraded, and it cannot reach another VM.
func TestPublishedPortsAndIsolation(t *testing.T) {
	testenv.RequireRoot(t)
	a := testConfig(t, 20, store.Port{Guest: 8080, Host: 28200, Protocol: "tcp"})
	b := testConfig(t, 21, store.Port{Guest: 8080, Host: 28201, Protocol: "tcp"})
	mustSetup(t, a)
	mustSetup(t, b)
	ga := standInGuest(t, a)
	gb := standInGuest(t, b)
	serve(t, ga, a.GuestIP.String()+":8080", "guest a")
	serve(t, gb, b.GuestIP.String()+":8080", "guest b")

	for _, tc := range []struct {
		port int
		want string
	}{{28200, "guest a"}, {28201, "guest b"}} {
		got, err := fetch(fmt.Sprintf("127.0.0.1:%d", tc.port))
		if err != nil || got != tc.want {
			t.Fatalf("127.0.0.1:%d answered %q, %v; want %q", tc.port, got, err, tc.want)
		}
	}
	// Guest a cannot reach guest b's address. The host's route to b must be
	// in place first: without it the attempt would be routed off this host.
	if out := run(t, "ip", "route", "show", b.GuestIP.String()); !strings.Contains(out, "dev "+b.Veth) {
		t.Fatalf("no host route to guest b:\n%s", out)
	}
	if _, err := dialFrom(ga, b.GuestIP.String()+":8080"); err == nil {
		t.Fatal("guest a reached guest b")
	}
	if _, err := dialFrom(gb, a.GuestIP.String()+":8080"); err == nil {
		t.Fatal("guest b reached guest a")
	}
}

// TestGuestEgressAndExternalIngress proves a guest's outbound connection
// leaves the host with the host's address as its source, and that a client
// outside the host reaches a published port on the host's address. The
// "outside" is a namespace of its own, reached over a test veth from the
// host (documentation range 198.51.100.0/30, routed only over that link).
func TestGuestEgressAndExternalIngress(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 30, store.Port{Guest: 8080, Host: 28400, Protocol: "tcp"})
	mustSetup(t, c)
	g := standInGuest(t, c)

	srv := "s" + store.ShortID(c.ID)
	hostEnd := "mgs" + store.ShortID(c.ID)[:8] // not "veth-*": an uplink, not a VM
	run(t, "ip", "netns", "add", srv)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", srv).Run() })
	run(t, "ip", "link", "add", hostEnd, "type", "veth", "peer", "name", "eth0", "netns", srv)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostEnd).Run() })
	run(t, "ip", "addr", "add", "198.51.100.1/30", "dev", hostEnd)
	run(t, "ip", "link", "set", hostEnd, "up")
	inNS(t, srv, "ip", "addr", "add", "198.51.100.2/30", "dev", "eth0")
	inNS(t, srv, "ip", "link", "set", "eth0", "up")
	if out := run(t, "ip", "route", "get", "198.51.100.2"); !strings.Contains(out, "dev "+hostEnd) {
		t.Fatalf("the test server is not routed over %s:\n%s", hostEnd, out)
	}

	// The server answers with the source address it saw.
	var l net.Listener
	if err := RunInNetns(srv, func() (err error) { l, err = net.Listen("tcp", "198.51.100.2:9000"); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			io.WriteString(conn, host)
			conn.Close()
		}
	}()

	got, err := dialFrom(g, "198.51.100.2:9000")
	if err != nil {
		t.Fatalf("guest could not reach the outside server: %v", err)
	}
	if got != "198.51.100.1" {
		t.Fatalf("server saw source %q, want the host's address 198.51.100.1 (masqueraded, not the guest's %s)", got, c.GuestIP)
	}

	// The other way: a client outside the host reaches the published port
	// on the host's address (the prerouting DNAT).
	serve(t, g, c.GuestIP.String()+":8080", "guest")
	if got, err := dialFrom(srv, "198.51.100.1:28400"); err != nil || got != "guest" {
		t.Fatalf("outside client on 198.51.100.1:28400 got %q, %v; want the guest's answer", got, err)
	}
}

func TestBridgeModeAttachesTheTapAndTeardownRemovesIt(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 40)
	br := "mgb" + c.ID[len(c.ID)-8:]                  // unlike the VM's links, not named by the short id
	run(t, "ip", "link", "add", br, "type", "bridge") // no address: carries no traffic
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	c.Bridge = &store.Bridge{Name: br, Netmask: "255.255.255.0"}
	c.Netns, c.Veth = "", ""
	for i := 0; i < 2; i++ {
		if err := Setup(context.Background(), c); err != nil {
			t.Fatalf("setup %d: %v", i+1, err)
		}
	}
	if out := run(t, "ip", "-o", "link", "show", c.Tap); !strings.Contains(out, "master "+br) {
		t.Fatalf("tap %s is not on bridge %s:\n%s", c.Tap, br, out)
	}
	if out := run(t, "ip", "netns", "list"); strings.Contains(out, store.ShortID(c.ID)) {
		t.Fatalf("bridge mode made a namespace:\n%s", out)
	}
	for i := 0; i < 2; i++ {
		if err := Teardown(context.Background(), c); err != nil {
			t.Fatalf("teardown %d: %v", i+1, err)
		}
	}
	assertGone(t, c)
}

// standInGuest makes a namespace holding the guest IP behind the VM's tap.
func standInGuest(t *testing.T, c Config) string {
	t.Helper()
	g := "g" + store.ShortID(c.ID)
	run(t, "ip", "netns", "add", g)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", g).Run() })
	br := "br" + store.ShortID(c.ID)[:6]
	inNS(t, c.Netns, "ip", "link", "add", br, "type", "bridge")
	inNS(t, c.Netns, "ip", "link", "set", c.Tap, "master", br)
	inNS(t, c.Netns, "ip", "addr", "del", fmt.Sprintf("%s/%d", c.Gateway, c.PrefixLen), "dev", c.Tap)
	inNS(t, c.Netns, "ip", "addr", "add", fmt.Sprintf("%s/%d", c.Gateway, c.PrefixLen), "dev", br)
	inNS(t, c.Netns, "ip", "link", "add", "gv0", "type", "veth", "peer", "name", "eth0", "netns", g)
	inNS(t, c.Netns, "ip", "link", "set", "gv0", "master", br)
	for _, l := range []string{br, "gv0"} {
		inNS(t, c.Netns, "ip", "link", "set", l, "up")
	}
	inNS(t, g, "ip", "link", "set", "lo", "up")
	inNS(t, g, "ip", "addr", "add", fmt.Sprintf("%s/%d", c.GuestIP, c.PrefixLen), "dev", "eth0")
	inNS(t, g, "ip", "link", "set", "eth0", "up")
	inNS(t, g, "ip", "route", "add", "default", "via", c.Gateway.String())
	return g
}

// serve answers every connection with text, from inside namespace ns.
func serve(t *testing.T, ns, addr, text string) {
	t.Helper()
	var l net.Listener
	err := inNetnsNamed(ns, func() (err error) { l, err = net.Listen("tcp", addr); return })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, text)
			c.Close()
		}
	}()
}

func fetch(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func dialFrom(ns, addr string) (string, error) {
	var out string
	err := inNetnsNamed(ns, func() (err error) { out, err = fetch(addr); return })
	return out, err
}

func inNetnsNamed(name string, fn func() error) error { return RunInNetns(name, fn) }

// BenchmarkSetupTeardown measures one VM's network from nothing to complete
// (namespace, tap, veth, routes, one published port) and back.
func BenchmarkSetupTeardown(b *testing.B) {
	testenv.RequireRoot(b)
	for b.Loop() {
		id := store.NewID()
		c := Config{
			ID: id, Netns: store.NetnsName(id), Tap: store.TapName(id), Veth: store.VethName(id),
			GuestIP: netip.MustParseAddr("172.31.241.2"), Gateway: netip.MustParseAddr("172.31.241.1"),
			PrefixLen: 24, MAC: MACFor(id), Ports: []store.Port{{Guest: 80, Host: 28500, Protocol: "tcp"}},
		}
		if err := Setup(context.Background(), c); err != nil {
			b.Fatal(err)
		}
		if err := Teardown(context.Background(), c); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFenceInTheRuleset checks the fence as nft prints it: the shared
// rules once, the VM's allow-list ahead of the shared drop in the input
// chain, and no IPv6 on the host's end of the link.
func TestFenceInTheRuleset(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 7)
	c.HostPorts = []HostPort{{Port: 28443, Protocol: "tcp"}, {Port: 28053, Protocol: "udp"}}
	mustSetup(t, c)
	mustSetup(t, c) // idempotent: nothing doubles
	rules := run(t, "nft", "list", "table", "ip", TableName)
	allow := []string{
		`iifname "` + c.Veth + `" ip saddr 172.31.240.8 tcp dport 28443 accept comment "mergen vm ` + c.ID + `"`,
		`iifname "` + c.Veth + `" ip saddr 172.31.240.8 udp dport 28053 accept comment "mergen vm ` + c.ID + `"`,
	}
	shared := []string{
		`type filter hook prerouting priority raw; policy accept;`,
		`iifname "veth-*" fib saddr . iif oif missing counter packets`,
		`type filter hook input priority filter; policy accept;`,
		`iifname "veth-*" ct state ! established,related counter packets`,
		`iifname "veth-*" ip daddr 169.254.0.0/16 counter packets`,
	}
	for _, want := range append(allow, shared...) {
		if n := strings.Count(rules, want); n != 1 {
			t.Errorf("ruleset has %q %d times, want once:\n%s", want, n, rules)
		}
	}
	drop := strings.Index(rules, `ct state ! established,related`)
	for _, a := range allow {
		if i := strings.Index(rules, a); i < 0 || i > drop {
			t.Errorf("allow rule %q does not come before the shared drop:\n%s", a, rules)
		}
	}
	if out := run(t, "cat", "/proc/sys/net/ipv6/conf/"+c.Veth+"/disable_ipv6"); strings.TrimSpace(out) != "1" {
		t.Errorf("IPv6 is on on %s", c.Veth)
	}
	if err := Teardown(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	assertGone(t, c)
	// The shared rules stay for the other VMs.
	if rules := run(t, "nft", "list", "table", "ip", TableName); !strings.Contains(rules, fenceHostComment) {
		t.Fatalf("the shared fence went with the VM:\n%s", rules)
	}
}

// TestGuestFence proves the fence with a stand-in guest. A host service
// listening on 0.0.0.0 cannot be reached from the guest nor from the VM's
// namespace, whichever host address is used; a port in the allow-list can,
// from the guest only; link-local addresses are not forwarded; and no
// packet those attempts cause leaves by another link. The test's own table
// counts packets and drops whatever would leave, so that a broken fence
// fails the test instead of sending anything off this machine.
func TestGuestFence(t *testing.T) {
	testenv.RequireRoot(t)
	fenced, fencedHits := listenHost(t, "host service")
	allowed, _ := listenHost(t, "allowed service")
	c := testConfig(t, 60)
	c.HostPorts = []HostPort{{Port: allowed, Protocol: "tcp"}}
	guardTable := "mgt" + store.ShortID(c.ID)
	testenv.NftTable(t, "ip", guardTable, fmt.Sprintf(`
	counter arrived {}
	counter from_netns {}
	counter delivered {}
	counter forwarded {}
	counter answered {}
	counter leaked {}
	chain guard_pre {
		type filter hook prerouting priority -400;
		iifname %[1]q tcp dport %[2]d counter name "arrived"
		iifname %[1]q ip saddr %[4]s counter name "from_netns"
	}
	chain guard_in {
		type filter hook input priority 10;
		iifname %[1]q tcp dport %[2]d counter name "delivered" drop
	}
	chain guard_fwd {
		type filter hook forward priority 10;
		iifname %[1]q counter name "forwarded" drop
	}
	chain guard_post {
		type filter hook postrouting priority 200;
		ip daddr { %[4]s, %[5]s } oifname != %[1]q counter name "leaked" drop
		oifname %[1]q ip daddr %[5]s tcp sport %[3]d counter name "answered"
	}`, c.Veth, fenced, allowed, NSLinkAddr, c.GuestIP))
	mustSetup(t, c)
	g := standInGuest(t, c)

	hostAddrs := []string{HostLinkAddr.String()}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() && p.Addr() != HostLinkAddr {
			hostAddrs = append(hostAddrs, p.Addr().String())
		}
	}
	var blocked []probe
	for _, a := range hostAddrs {
		blocked = append(blocked, probe{g, a, fenced}, probe{c.Netns, a, fenced})
	}
	blocked = append(blocked,
		probe{c.Netns, HostLinkAddr.String(), allowed}, // allowed, but not from the namespace's own address
		probe{g, "169.254.169.254", 80})                // link-local, beyond the VM's link
	for p, err := range probeAll(blocked) {
		if err == nil {
			t.Errorf("%s reached %s:%d", p.ns, p.addr, p.port)
		}
	}
	for p, err := range probeAll([]probe{{g, HostLinkAddr.String(), allowed}, {g, hostAddrs[len(hostAddrs)-1], allowed}}) {
		if err != nil {
			t.Errorf("allowed port: %s could not reach %s:%d: %v", p.ns, p.addr, p.port, err)
		}
	}

	n := testenv.NftCounters(t, "ip", guardTable)
	t.Logf("packets: %v; host service accepted %d connections", n, fencedHits.Load())
	if n["arrived"] == 0 || n["from_netns"] == 0 {
		t.Fatalf("the probes did not reach the host (arrived %d, from the namespace %d): the test proves nothing", n["arrived"], n["from_netns"])
	}
	if n["delivered"] != 0 || fencedHits.Load() != 0 {
		t.Errorf("%d probe packets got past the fence (%d connections accepted)", n["delivered"], fencedHits.Load())
	}
	if n["forwarded"] != 0 {
		t.Errorf("%d packets from the VM were forwarded", n["forwarded"])
	}
	if n["leaked"] != 0 {
		t.Errorf("%d packets to the VM's addresses were sent out of another link", n["leaked"])
	}
	if n["answered"] == 0 {
		t.Errorf("the allowed service's answers did not go out through %s", c.Veth)
	}
}

type probe struct {
	ns, addr string
	port     int
}

// probeAll fetches every probe at once, each from inside its namespace.
func probeAll(ps []probe) map[probe]error {
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := map[probe]error{}
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := dialFrom(p.ns, net.JoinHostPort(p.addr, fmt.Sprint(p.port)))
			mu.Lock()
			errs[p] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return errs
}

// listenHost serves text on 0.0.0.0 (every address of the host namespace)
// on a free port, counting connections.
func listenHost(t *testing.T, text string) (int, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var hits atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			hits.Add(1)
			io.WriteString(c, text)
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port, &hits
}

// Bridge mode: the tap may only send the guest's address (IPv4 and ARP),
// and the host itself is fenced off from that address on the bridge.
func TestBridgeModeFenceRules(t *testing.T) {
	testenv.RequireRoot(t)
	c := testConfig(t, 41)
	br := "mgb" + c.ID[len(c.ID)-8:]
	run(t, "ip", "link", "add", br, "type", "bridge") // no address: carries no traffic
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	c.Bridge = &store.Bridge{Name: br, Netmask: "255.255.255.0"}
	c.Netns, c.Veth = "", ""
	c.HostPorts = []HostPort{{Port: 28444, Protocol: "tcp"}}
	mustSetup(t, c)
	tag := ` comment "mergen vm ` + c.ID + `"`
	ip := run(t, "nft", "list", "table", "ip", TableName)
	for _, want := range []string{
		`iifname "` + br + `" ip saddr 172.31.240.42 tcp dport 28444 accept` + tag,
		`iifname "` + br + `" ip saddr 172.31.240.42 ct state ! established,related counter packets`,
		`iifname "` + br + `" ip saddr 172.31.240.42 ip daddr 169.254.0.0/16 counter packets`,
	} {
		if !strings.Contains(ip, want) {
			t.Errorf("ip table lacks %q:\n%s", want, ip)
		}
	}
	if strings.Index(ip, "tcp dport 28444 accept") > strings.Index(ip, `ip saddr 172.31.240.42 ct state`) {
		t.Errorf("the allow rule comes after the drop:\n%s", ip)
	}
	bridge := run(t, "nft", "list", "table", "bridge", TableName)
	for _, want := range []string{
		`iifname "` + c.Tap + `" ether type != ip ether type != arp drop` + tag,
		`iifname "` + c.Tap + `" ip saddr != 172.31.240.42 drop` + tag,
		`iifname "` + c.Tap + `" arp saddr ip != 172.31.240.42 drop` + tag,
	} {
		if !strings.Contains(bridge, want) {
			t.Errorf("bridge table lacks %q:\n%s", want, bridge)
		}
	}
	if err := Teardown(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	assertGone(t, c)
}
