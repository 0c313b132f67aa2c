package alloc

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
)

var cidr = netip.MustParsePrefix("172.30.0.0/29") // .1 gateway, .2-.6 guests, .7 broadcast

func freeProbe(int, string) bool { return true }

func TestGuestIPsAreSequentialSkipReservedAndAreReused(t *testing.T) {
	ix := NewIndex(nil)
	var got []string
	for i := 0; i < 5; i++ {
		a, err := ix.GuestIP(cidr)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.String())
		ix.Add(store.Meta{ID: "vm" + a.String(), GuestIP: a.String()})
	}
	if want := "172.30.0.2 172.30.0.3 172.30.0.4 172.30.0.5 172.30.0.6"; strings.Join(got, " ") != want {
		t.Fatalf("allocated %v, want %s", got, want)
	}
	if _, err := ix.GuestIP(cidr); !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("full network: %v, want exhausted conflict", err)
	}
	ix.Remove(store.Meta{ID: "vm172.30.0.4", GuestIP: "172.30.0.4"})
	if a, _ := ix.GuestIP(cidr); a.String() != "172.30.0.4" {
		t.Fatalf("freed address not reused: got %s", a)
	}
}

func TestGatewayIsFirstHostAddress(t *testing.T) {
	if g := Gateway(netip.MustParsePrefix("10.9.0.0/16")); g.String() != "10.9.0.1" {
		t.Fatalf("gateway %s", g)
	}
}

func TestBridgeVMsDoNotHoldGuestAddresses(t *testing.T) {
	ix := NewIndex([]store.Meta{{ID: "b", GuestIP: "172.30.0.2", Bridge: &store.Bridge{Name: "docker0"}}})
	if a, _ := ix.GuestIP(cidr); a.String() != "172.30.0.2" {
		t.Fatalf("bridge VM's static address blocked the pool: got %s", a)
	}
}

func TestHostPorts(t *testing.T) {
	used := NewIndex([]store.Meta{{ID: "other", Ports: []store.Port{{Guest: 80, Host: 20000, Protocol: "tcp"}}}})
	busyOnHost := func(port int, proto string) bool { return !(port == 20001 && proto == "tcp") }
	pool := Range{Start: 20000, End: 20005}

	cases := []struct {
		name    string
		req     []store.Port
		want    []int
		wantErr string
	}{
		{"auto skips ports of other VMs and bound sockets", []store.Port{{Guest: 80, Protocol: "tcp"}}, []int{20002}, ""},
		{"auto ports within one request differ", []store.Port{{Guest: 80, Protocol: "tcp"}, {Guest: 443, Protocol: "tcp"}}, []int{20002, 20003}, ""},
		{"explicit port is kept and auto ports avoid it", []store.Port{{Guest: 80, Protocol: "tcp"}, {Guest: 443, Host: 20002, Protocol: "tcp"}}, []int{20003, 20002}, ""},
		{"protocols are separate spaces", []store.Port{{Guest: 53, Protocol: "udp"}}, []int{20000}, ""},
		{"explicit port of another VM", []store.Port{{Guest: 80, Host: 20000, Protocol: "tcp"}}, nil, "ports[0].host: tcp port 20000 is already published by vm other"},
		{"explicit port bound on the host", []store.Port{{Guest: 80, Host: 20001, Protocol: "tcp"}}, nil, "ports[0].host: tcp port 20001 is already in use on this host"},
		{"pool exhausted", []store.Port{{Guest: 1, Protocol: "tcp"}, {Guest: 2, Protocol: "tcp"}, {Guest: 3, Protocol: "tcp"}, {Guest: 4, Protocol: "tcp"}, {Guest: 5, Protocol: "tcp"}}, nil, "ports[4].host: no free tcp port left in 20000..20005"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := used.HostPorts(tc.req, pool, busyOnHost)
			if tc.wantErr != "" {
				if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want conflict containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range got {
				if p.Host != tc.want[i] || p.Guest != tc.req[i].Guest {
					t.Fatalf("got %+v, want host ports %v", got, tc.want)
				}
			}
		})
	}
}

func TestBindProbeSeesABoundSocket(t *testing.T) {
	// Find a port that is free, bind it, and expect the probe to refuse it.
	port := 0
	for p := 39000; p < 39100; p++ {
		if BindProbe(p, "tcp") {
			port = p
			break
		}
	}
	if port == 0 {
		t.Fatal("no free port found in 39000..39099")
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if BindProbe(port, "tcp") {
		t.Fatalf("probe says port %d is free while a listener holds it", port)
	}
}

func TestVMMUIDsAreUniqueAndReused(t *testing.T) {
	ix := NewIndex([]store.Meta{{ID: "old"}, {ID: "a", VMMUID: 2000000, VMMGID: 2000000}})
	uid, err := ix.VMMUID(2000000, 2000002)
	if err != nil || uid != 2000001 {
		t.Fatalf("VMMUID = %d, %v; want 2000001 (2000000 is held; a record without a uid holds none)", uid, err)
	}
	ix.Add(store.Meta{ID: "b", VMMUID: uid})
	ix.Add(store.Meta{ID: "c", VMMUID: 2000002})
	if _, err := ix.VMMUID(2000000, 2000002); !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "MGR_VMM_UID_RANGE") {
		t.Fatalf("full range: %v, want a conflict naming MGR_VMM_UID_RANGE", err)
	}
	ix.Remove(store.Meta{ID: "b", VMMUID: 2000001})
	if uid, _ := ix.VMMUID(2000000, 2000002); uid != 2000001 {
		t.Fatalf("freed uid not reused: got %d", uid)
	}
}

// The probe sees a port held on any address, by either protocol, and
// leaves no socket of its own behind. The ports are the kernel's choice,
// so that nothing else on the host holds them.
func TestBindProbeSeesEveryHolderAndReleasesThePort(t *testing.T) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	if BindProbe(port, "udp") {
		t.Errorf("probe says udp port %d is free while a socket holds it", port)
	}
	c.Close()
	if !BindProbe(port, "udp") {
		t.Errorf("udp port %d not free once its socket closed", port)
	}

	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Logf("no IPv6 loopback here (%v): the IPv6 listener's case is not checked", err)
	} else {
		port := l.Addr().(*net.TCPAddr).Port
		if BindProbe(port, "tcp") {
			t.Errorf("probe says tcp port %d is free while an IPv6 listener holds it", port)
		}
		l.Close()
	}

	// What the probe bound is released: a listener takes the port at once.
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	if !BindProbe(port, "tcp") {
		t.Fatalf("tcp port %d not free", port)
	}
	l, err = net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("listen on port %d after the probe: %v", port, err)
	}
	l.Close()
}
