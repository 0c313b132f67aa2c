package guest

import (
	"net"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs f on a thread moved into a fresh network namespace, which
// goes away with it: nothing f configures is seen outside, and nothing it
// sends leaves the namespace.
func inNewNetns(t *testing.T, f func()) {
	t.Helper()
	testenv.RequireRoot(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is never unlocked: Go discards it with the goroutine
		// instead of handing a thread in the test's namespace to others.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			t.Errorf("new network namespace: %v", err)
			return
		}
		defer ns.Close()
		f()
	}()
	<-done
}

// reconfigureNetwork moves an interface configured at boot to another VM's
// network: checked on a veth pair in a namespace of the test's own.
func TestReconfigureNetworkReplacesAddressRouteMACAndNeighbours(t *testing.T) {
	inNewNetns(t, func() {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
			t.Errorf("veth: %v", err)
			return
		}
		// As at boot (without a hostname: this is the test host's kernel).
		boot := &Net{Addr: net.IPv4(172, 31, 250, 2).To4(), Mask: net.CIDRMask(24, 32), Gateway: net.IPv4(172, 31, 250, 1).To4(), Device: "eth0"}
		if err := configureNetwork(boot); err != nil {
			t.Errorf("boot network: %v", err)
			return
		}
		link, _ := netlink.LinkByName("eth0")
		// A secondary address, and the old VM's gateway learnt with its MAC.
		netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(172, 31, 250, 3), Mask: net.CIDRMask(24, 32)}})
		oldGW, _ := net.ParseMAC("02:00:00:00:00:01")
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, IP: boot.Gateway, HardwareAddr: oldGW, State: netlink.NUD_REACHABLE}); err != nil {
			t.Errorf("neighbour: %v", err)
			return
		}

		check := func(what string, wantAddrs []string, wantGW net.IP, wantMAC string) {
			t.Helper()
			link, err := netlink.LinkByName("eth0")
			if err != nil {
				t.Errorf("%s: %v", what, err)
				return
			}
			addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
			var got []string
			for _, a := range addrs {
				got = append(got, a.IPNet.String())
			}
			sort.Strings(got)
			if len(got) != len(wantAddrs) || (len(got) > 0 && got[0] != wantAddrs[0]) {
				t.Errorf("%s: addresses %v, want %v", what, got, wantAddrs)
			}
			var gw net.IP
			routes, _ := netlink.RouteList(link, netlink.FAMILY_V4)
			for _, r := range routes {
				if isDefault(r.Dst) {
					gw = r.Gw
				}
			}
			if !gw.Equal(wantGW) {
				t.Errorf("%s: default route via %v, want %v", what, gw, wantGW)
			}
			if link.Attrs().HardwareAddr.String() != wantMAC {
				t.Errorf("%s: MAC %s, want %s", what, link.Attrs().HardwareAddr, wantMAC)
			}
			if link.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s: eth0 is down", what)
			}
			neigh, _ := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
			for _, n := range neigh {
				if n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) == 0 {
					t.Errorf("%s: neighbour %s (%s) survived", what, n.IP, n.HardwareAddr)
				}
			}
		}

		// The same addresses (every VM's namespace may use the same ones)
		// and MAC: the address stays, so nothing but the flush makes the
		// kernel forget the old gateway's MAC, which the new VM's
		// namespace does not have.
		mac := link.Attrs().HardwareAddr.String()
		if err := reconfigureNetwork(boot, nil); err != nil {
			t.Errorf("same address: %v", err)
			return
		}
		check("same address", []string{"172.31.250.2/24"}, boot.Gateway, mac)

		same := &Net{Addr: net.IPv4(172, 31, 250, 9).To4(), Mask: net.CIDRMask(24, 32), Gateway: boot.Gateway, Device: "eth0"}
		if err := reconfigureNetwork(same, nil); err != nil {
			t.Errorf("same subnet: %v", err)
			return
		}
		check("same subnet", []string{"172.31.250.9/24"}, boot.Gateway, mac)

		// Another subnet and a new MAC.
		newMAC, _ := net.ParseMAC("52:54:00:12:34:99")
		other := &Net{Addr: net.IPv4(172, 31, 251, 7).To4(), Mask: net.CIDRMask(24, 32), Gateway: net.IPv4(172, 31, 251, 1).To4(), Device: "eth0"}
		if err := reconfigureNetwork(other, newMAC); err != nil {
			t.Errorf("other subnet: %v", err)
			return
		}
		check("other subnet", []string{"172.31.251.7/24"}, other.Gateway, "52:54:00:12:34:99")

		// No gateway: no default route is left pointing at the old one.
		none := &Net{Addr: net.IPv4(172, 31, 252, 5).To4(), Mask: net.CIDRMask(24, 32), Device: "eth0"}
		if err := reconfigureNetwork(none, nil); err != nil {
			t.Errorf("no gateway: %v", err)
			return
		}
		check("no gateway", []string{"172.31.252.5/24"}, nil, "52:54:00:12:34:99")

		if err := reconfigureNetwork(&Net{Addr: none.Addr, Mask: none.Mask, Device: "eth9"}, nil); err == nil || !strings.HasPrefix(err.Error(), "network: interface eth9: ") {
			t.Errorf("missing interface: %v", err)
		}
	})
}
