package guest

import (
	"net"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

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

// A guest whose network comes up tells its gateway where it is, unasked:
// the host side of the link learns the guest's MAC at once (a connection
// it began while the guest was booting goes out then, not at its next ARP
// probe), and learns the new MAC of a guest restored under another.
func TestConfigureNetworkAnnouncesTheGuestToItsGateway(t *testing.T) {
	inNewNetns(t, func() {
		// The host's end, peer0, in the test's namespace: the gateway's
		// address, up, its neighbour table empty. The guest's end, eth0,
		// in a namespace of its own (as in a VM, the two ends' addresses
		// are not each other's local ones), left to configureNetwork.
		host, err := netns.Get()
		if err != nil {
			t.Errorf("this namespace: %v", err)
			return
		}
		defer host.Close()
		guest, err := netns.New() // and the thread is in it
		if err != nil {
			t.Errorf("guest namespace: %v", err)
			return
		}
		defer guest.Close()
		if err := netns.Set(host); err != nil {
			t.Errorf("back to the host's namespace: %v", err)
			return
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Namespace: netlink.NsFd(guest)}, PeerName: "peer0"}); err != nil {
			t.Errorf("veth: %v", err)
			return
		}
		peer, _ := netlink.LinkByName("peer0")
		gw := &net.IPNet{IP: net.IPv4(172, 31, 250, 1).To4(), Mask: net.CIDRMask(24, 32)}
		if err := netlink.AddrAdd(peer, &netlink.Addr{IPNet: gw}); err != nil {
			t.Errorf("gateway address: %v", err)
			return
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			t.Errorf("peer up: %v", err)
			return
		}
		updates := make(chan netlink.NeighUpdate, 64)
		done := make(chan struct{})
		defer close(done)
		if err := netlink.NeighSubscribe(updates, done); err != nil {
			t.Errorf("subscribe to neighbour changes: %v", err)
			return
		}
		// inGuest runs f in the guest's namespace.
		inGuest := func(f func() error) error {
			if err := netns.Set(guest); err != nil {
				return err
			}
			defer netns.Set(host)
			return f()
		}
		// learnt waits until the host's end holds addr at mac.
		learnt := func(what string, addr net.IP, mac string) {
			t.Helper()
			timeout := time.After(10 * time.Second)
			for {
				neigh, _ := netlink.NeighList(peer.Attrs().Index, netlink.FAMILY_V4)
				for _, n := range neigh {
					if n.IP.Equal(addr) && n.HardwareAddr.String() == mac {
						return
					}
				}
				select {
				case <-updates:
				case <-timeout:
					t.Errorf("%s: the host's end never learnt %s at %s (its neighbours: %v)", what, addr, mac, neigh)
					return
				}
			}
		}

		boot := &Net{Addr: net.IPv4(172, 31, 250, 2).To4(), Mask: net.CIDRMask(24, 32), Gateway: gw.IP, Device: "eth0"}
		var mac string
		if err := inGuest(func() error {
			if err := configureNetwork(boot); err != nil {
				return err
			}
			link, err := netlink.LinkByName("eth0")
			if err == nil {
				mac = link.Attrs().HardwareAddr.String()
			}
			return err
		}); err != nil {
			t.Errorf("boot network: %v", err)
			return
		}
		learnt("boot", boot.Addr, mac)

		// Restored into another VM: a new address and MAC on the same link.
		newMAC, _ := net.ParseMAC("52:54:00:12:34:98")
		restored := &Net{Addr: net.IPv4(172, 31, 250, 7).To4(), Mask: net.CIDRMask(24, 32), Gateway: gw.IP, Device: "eth0"}
		if err := inGuest(func() error { return reconfigureNetwork(restored, newMAC) }); err != nil {
			t.Errorf("restored network: %v", err)
			return
		}
		learnt("restored", restored.Addr, newMAC.String())
	})
}
