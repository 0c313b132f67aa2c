package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/vmnet"
	"github.com/mergenhq/mergen/internal/wire"
)

// probeCGI runs in the guest, behind busybox httpd: it fetches
// http://<query>/ from inside the guest for at most 3 s and says whether it
// got an answer. The test calls it through the VM's published port.
const probeCGI = `#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
if out=$(/bin/busybox timeout 3 /bin/busybox wget -q -O - "http://$QUERY_STRING/" 2>&1); then
	echo "reached: $out"
else
	echo "failed: $out"
fi
`

// TestGuestFenceRealVM is the guest fence end to end, with a real guest
// under QEMU and real namespaces:
//
//   - a host service listening on 0.0.0.0 is unreachable from the guest and
//     from the VM's namespace, on the VM link's host address (169.254.1.1)
//     and on the host's other addresses; the attempts fail within seconds;
//   - link-local addresses beyond the VM's link (169.254.169.254) are not
//     forwarded;
//   - a port in MGR_GUEST_HOST_PORTS is reachable from the guest;
//   - egress to a server in another namespace of the test still works, with
//     the host's address as source (NAT), and the published port reaches
//     the guest from the host's loopback and from that namespace;
//   - no packet caused by those attempts leaves by another interface.
//
// A table of the test's own counts packets where they arrive, where they
// would be delivered, answered or forwarded, and drops anything of the VM's
// that would leave by an interface other than the VM's veth or the test's
// outside link: a broken fence fails the test, never sends off the host.
func TestGuestFenceRealVM(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a QEMU guest")
	}
	fenced, fencedHits := hostService(t, "host service")
	allowed, _ := hostService(t, "allowed service")

	vh := newVMHost(t, "detached", "172.31.248.0/24")
	h := vh.host
	h.env["MGR_GUEST_HOST_PORTS"] = fmt.Sprintf("%d/tcp", allowed)
	out := newOutside(t, "198.51.100.4/30")
	page := "hello from a fenced guest\n"
	payload := webPayloadWith(t, h.path("data", "images", "probe"), page, "8080",
		map[string]string{"www/cgi-bin/probe": probeCGI})
	b := &bareHost{h: h, bin: vh.mergen, port: freePort(t)}
	b.d = h.startBinary(t, vh.mergen, b.port)
	t.Cleanup(func() { dumpConsoles(t, h) })

	var vm wire.VM
	code, body := b.api(t, "POST", "/v1/vms", map[string]any{
		"payloadDisk": payload, "memMiB": 256,
		"ports":    []map[string]any{{"guest": 8080, "host": 0}},
		"httpPort": 8080,
	}, &vm)
	mustStatus(t, code, body, 201)
	short := vm.ID[:8]
	veth, netns := "veth-"+short, "mergen-"+short
	guest := vm.Network.GuestIP
	hostPort := vm.Network.Ports[0].Host
	gateway := netip.MustParsePrefix(h.env["MGR_GUEST_CIDR"]).Addr().Next().String()

	// In place before the guest boots.
	guard := "mge" + short
	testenv.NftTable(t, "ip", guard, fmt.Sprintf(`
	counter arrived {}
	counter from_netns {}
	counter delivered {}
	counter stray {}
	counter egress {}
	counter leaked {}
	counter answered {}
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
		iifname %[1]q oifname %[6]q counter name "egress" accept
		iifname %[1]q counter name "stray" drop
	}
	chain guard_post {
		type filter hook postrouting priority 200;
		ip daddr { %[4]s, %[5]s } oifname != %[1]q counter name "leaked" drop
		oifname %[1]q ip daddr %[5]s tcp sport %[3]d counter name "answered"
	}`, veth, fenced, allowed, vmnet.NSLinkAddr, guest, out.link))

	code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/start", nil, &vm)
	mustStatus(t, code, body, 200)
	if got := waitHTTP(t, b, hostPort, "/index.html", 90*time.Second); got != page {
		t.Fatalf("published port 127.0.0.1:%d answered %q, want %q", hostPort, got, page)
	}

	// The host's addresses a guest could aim at: its end of the VM link,
	// those of its default-route interface and the test's outside link.
	defIf := defaultInterface(t)
	hostAddrs := []string{vmnet.HostLinkAddr.String(), out.hostAddr}
	hostAddrs = append(hostAddrs, interfaceAddrs(t, defIf)...)
	txBefore := txPackets(t, defIf)

	type result struct {
		from, target, answer string
		took                 time.Duration
	}
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	fromGuest := func(target string) {
		defer wg.Done()
		t0 := time.Now()
		got, err := guestGet(hostPort, "/cgi-bin/probe?"+target)
		if err != nil {
			got = "probe error: " + err.Error()
		}
		mu.Lock()
		results = append(results, result{"guest", target, strings.TrimSpace(got), time.Since(t0)})
		mu.Unlock()
	}
	fromNetns := func(target string) {
		defer wg.Done()
		t0 := time.Now()
		got := "reached"
		err := vmnet.RunInNetns(netns, func() error {
			c, err := net.DialTimeout("tcp", target, 3*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err != nil {
			got = "failed: " + err.Error()
		}
		mu.Lock()
		results = append(results, result{"namespace " + netns, target, got, time.Since(t0)})
		mu.Unlock()
	}
	var blocked []string
	for _, a := range hostAddrs {
		blocked = append(blocked, net.JoinHostPort(a, strconv.Itoa(fenced)))
	}
	// The guest's own gateway is the VM's namespace, where nothing listens.
	guestBlocked := slices.Concat(blocked, []string{net.JoinHostPort(gateway, strconv.Itoa(fenced)), "169.254.169.254:80"})
	// The allowed port, but from the namespace's own address.
	netnsBlocked := slices.Concat(blocked, []string{net.JoinHostPort(vmnet.HostLinkAddr.String(), strconv.Itoa(allowed))})
	allowedTarget := net.JoinHostPort(vmnet.HostLinkAddr.String(), strconv.Itoa(allowed))
	egressTarget := out.addr + ":9000"
	for _, target := range slices.Concat(guestBlocked, []string{allowedTarget, egressTarget}) {
		wg.Add(1)
		go fromGuest(target)
	}
	for _, target := range netnsBlocked {
		wg.Add(1)
		go fromNetns(target)
	}
	wg.Wait()

	for _, r := range results {
		t.Logf("%s → %s: %s (%s)", r.from, r.target, r.answer, r.took.Round(time.Millisecond))
		switch {
		case r.from == "guest" && r.target == allowedTarget:
			if r.answer != "reached: allowed service" {
				t.Errorf("the guest could not reach the allowed port %s: %s", r.target, r.answer)
			}
		case r.from == "guest" && r.target == egressTarget:
			if r.answer != "reached: "+out.hostAddr {
				t.Errorf("egress to %s: %q, want the server to see the host's address %s", r.target, r.answer, out.hostAddr)
			}
		case !strings.HasPrefix(r.answer, "failed"):
			t.Errorf("%s reached %s: %s", r.from, r.target, r.answer)
		case r.took > 6*time.Second:
			t.Errorf("%s → %s took %s to fail", r.from, r.target, r.took)
		}
	}

	// The published port from outside the host, on the host's address.
	if got, err := out.get(fmt.Sprintf("%s:%d", out.hostAddr, hostPort), "/index.html"); err != nil || got != page {
		t.Errorf("published port from the outside namespace: %q, %v", got, err)
	}

	n := testenv.NftCounters(t, "ip", guard)
	txAfter := txPackets(t, defIf)
	t.Logf("counters: %v; host service accepted %d connections", n, fencedHits.Load())
	t.Logf("%s (default route) sent %d packets during the probes (all traffic of this host, not only the test's)", defIf, txAfter-txBefore)
	if n["arrived"] == 0 || n["from_netns"] == 0 {
		t.Fatalf("the probes never reached the host (arrived %d, from the namespace %d): the test proves nothing", n["arrived"], n["from_netns"])
	}
	if n["delivered"] != 0 || fencedHits.Load() != 0 {
		t.Errorf("%d probe packets got past the fence to the host service (%d connections accepted)", n["delivered"], fencedHits.Load())
	}
	if n["stray"] != 0 {
		t.Errorf("%d packets from the VM were forwarded somewhere other than the outside link", n["stray"])
	}
	if n["leaked"] != 0 {
		t.Errorf("%d packets to the VM's addresses were sent out of another interface", n["leaked"])
	}
	if n["egress"] == 0 {
		t.Errorf("no egress packet went out through %s", out.link)
	}
	if n["answered"] == 0 {
		t.Errorf("the allowed service's answers did not go back through %s", veth)
	}

	code, body = b.api(t, "DELETE", "/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 200)
	for _, check := range []struct {
		args []string
		not  string
	}{
		{[]string{"ip", "netns", "list"}, netns},
		{[]string{"ip", "-o", "link", "show"}, short},
		{[]string{"nft", "list", "ruleset"}, "mergen vm " + vm.ID},
	} {
		if got := b.run(t, check.args...); strings.Contains(got, check.not) {
			t.Errorf("%v still shows %q after delete:\n%s", check.args, check.not, got)
		}
	}
}

// hostService serves text over HTTP on 0.0.0.0 (every address of the host
// namespace) on a free port, counting the connections it accepts.
func hostService(t *testing.T, text string) (int, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, text) }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				hits.Add(1)
			}
		},
		ReadTimeout: 5 * time.Second,
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port, &hits
}

// outside is a namespace of the test standing for the world beyond the
// host: reached over a veth of its own (not "veth-*": an uplink, not a VM)
// with a documentation-range /30 routed only over that link. Its server on
// port 9000 answers with the source address it saw.
type outside struct {
	ns, link       string
	hostAddr, addr string
}

func newOutside(t *testing.T, cidr string) *outside {
	t.Helper()
	p := netip.MustParsePrefix(cidr)
	var rnd [3]byte
	rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	o := &outside{ns: "mgo-" + id, link: "mgo" + id, hostAddr: p.Addr().Next().String(), addr: p.Addr().Next().Next().String()}
	run := func(args ...string) {
		t.Helper()
		if b, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, b)
		}
	}
	run("ip", "netns", "add", o.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", o.ns).Run() })
	run("ip", "link", "add", o.link, "type", "veth", "peer", "name", "eth0", "netns", o.ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", o.link).Run() })
	run("ip", "addr", "add", fmt.Sprintf("%s/%d", o.hostAddr, p.Bits()), "dev", o.link)
	run("ip", "link", "set", o.link, "up")
	run("ip", "netns", "exec", o.ns, "ip", "addr", "add", fmt.Sprintf("%s/%d", o.addr, p.Bits()), "dev", "eth0")
	run("ip", "netns", "exec", o.ns, "ip", "link", "set", "eth0", "up")
	run("ip", "netns", "exec", o.ns, "ip", "link", "set", "lo", "up")
	if b, _ := exec.Command("ip", "route", "get", o.addr).Output(); !strings.Contains(string(b), "dev "+o.link) {
		t.Fatalf("the outside namespace is not routed over %s:\n%s", o.link, b)
	}
	var l net.Listener
	if err := vmnet.RunInNetns(o.ns, func() (err error) { l, err = net.Listen("tcp", o.addr+":9000"); return }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, host)
	}), ReadTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return o
}

// get fetches http://addr/path from inside the outside namespace.
func (o *outside) get(addr, path string) (string, error) {
	var c net.Conn
	if err := vmnet.RunInNetns(o.ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, 3*time.Second); return }); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// guestGet fetches a path of the guest through its published port on the
// host's loopback, leaving time for a CGI probe to time out.
func guestGet(port int, path string) (string, error) {
	c := &http.Client{Timeout: 15 * time.Second}
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

// defaultInterface is the interface of the host's default route.
func defaultInterface(t *testing.T) string {
	t.Helper()
	b, err := exec.Command("ip", "-o", "route", "show", "default").Output()
	f := strings.Fields(string(b))
	for i := range f {
		if f[i] == "dev" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no default route (%v): %s", err, b)
	return ""
}

// interfaceAddrs are the IPv4 addresses of an interface of the host.
func interfaceAddrs(t *testing.T, name string) []string {
	t.Helper()
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			out = append(out, p.Addr().String())
		}
	}
	return out
}

func txPackets(t *testing.T, ifname string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/sys/class/net/" + ifname + "/statistics/tx_packets")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}
