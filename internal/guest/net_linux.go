package guest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// configureNetwork brings up lo and, when the command line has ip=, the
// guest's interface with its address and default route.
func configureNetwork(n *Net) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	if n == nil {
		return nil
	}
	if n.Hostname != "" {
		if err := setHostname(n.Hostname); err != nil {
			return fmt.Errorf("network: hostname %q: %w", n.Hostname, err)
		}
	}
	var link netlink.Link
	var err error
	// virtio_net probes after its module loads; give it a moment.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if link, err = netlink.LinkByName(n.Device); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("network: interface %s: %w", n.Device, err)
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: n.Prefix()}); err != nil {
		return fmt.Errorf("network: address %s on %s: %w", n.Prefix(), n.Device, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: up %s: %w", n.Device, err)
	}
	if n.Gateway != nil {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: n.Gateway}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("network: default route via %s: %w", n.Gateway, err)
		}
	}
	logf("network: %s %s gateway %v", n.Device, n.Prefix(), n.Gateway)
	announce(link, n)
	return nil
}

// announce tells the link where the guest's address now is: one broadcast
// ARP request from that address and the interface's MAC, for the gateway
// (for the guest's own address when there is none).
//
// Why: a connection to the guest that the host began before the guest's
// network was up waits in the host's neighbour table, whose next ARP probe
// may be up to a second away; the guest says nothing on its own until it
// is spoken to. An ARP from the guest settles that entry at once, and the
// waiting packets go out: a VM's first connection then comes as soon as
// its service listens. A request for the gateway is the one every
// neighbour takes, whatever its arp_accept: the gateway's side (the VM's
// namespace, or the bridge) records the sender as it answers, and any
// other neighbour holding an entry for the address updates it (after a
// restore under a new MAC too). Best effort: without it the host finds the
// guest by its own probes, as before.
func announce(link netlink.Link, n *Net) {
	if err := sendARP(link, n); err != nil {
		logf("network: announce %s on %s: %v", n.Addr, n.Device, err)
	}
}

func sendARP(link netlink.Link, n *Net) error {
	self, ok := netip.AddrFromSlice(n.Addr.To4())
	if !ok {
		return fmt.Errorf("%s is not an IPv4 address", n.Addr)
	}
	target := self
	if gw, ok := netip.AddrFromSlice(n.Gateway.To4()); ok {
		target = gw
	}
	ifi, err := net.InterfaceByIndex(link.Attrs().Index)
	if err != nil {
		return err
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return err
	}
	defer c.Close()
	p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, self, ethernet.Broadcast, target)
	if err != nil {
		return err
	}
	return c.WriteTo(p, ethernet.Broadcast)
}

// writeNetFiles puts hostname, hosts and resolv.conf for a guest called
// name with network n (nil: none) into the payload's writable layer (never
// the read-only image).
func writeNetFiles(root, name string, n *Net) error {
	hosts, resolv := NetFiles(name, n)
	var errs []error
	write := func(file, data string) {
		errs = append(errs, writeInRoot(root, "etc", file, []byte(data), 0o644, -1, -1))
	}
	write("hostname", name+"\n")
	write("hosts", hosts)
	if n != nil && len(n.DNS) > 0 {
		write("resolv.conf", resolv)
	}
	return errors.Join(errs...)
}

// reconfigureNetwork gives the guest's interface a new VM's network, as
// after a restore from another VM's snapshot: its MAC (when mac is set),
// n's address instead of every IPv4 address it had, the link up, the
// default route via n's gateway (none without one), and a neighbour table
// without the old VM's entries (the gateway's address may be the same, its
// MAC in the new VM's namespace is not).
func reconfigureNetwork(n *Net, mac net.HardwareAddr) error {
	link, err := netlink.LinkByName(n.Device)
	if err != nil {
		return fmt.Errorf("network: interface %s: %w", n.Device, err)
	}
	if mac != nil {
		switch err := netlink.LinkSetHardwareAddr(link, mac); {
		case errors.Is(err, unix.EOPNOTSUPP):
			// virtio-net refuses when it offers a standby (failover) device.
			logf("network: %s keeps its MAC %s: the device cannot change it", n.Device, link.Attrs().HardwareAddr)
		case err != nil:
			return fmt.Errorf("network: MAC %s on %s: %w", mac, n.Device, err)
		}
	}
	want := n.Prefix()
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("network: addresses of %s: %w", n.Device, err)
	}
	// Removed before the new one is added: removing a primary address also
	// removes the secondaries of its subnet, the new one among them.
	for _, a := range addrs {
		if a.IPNet.String() == want.String() {
			continue
		}
		// EADDRNOTAVAIL: a secondary that went with its primary.
		if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("network: remove %s from %s: %w", a.IPNet, n.Device, err)
		}
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: want}); err != nil {
		return fmt.Errorf("network: address %s on %s: %w", want, n.Device, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: up %s: %w", n.Device, err)
	}
	if n.Gateway != nil {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: n.Gateway}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("network: default route via %s: %w", n.Gateway, err)
		}
	} else {
		routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("network: routes of %s: %w", n.Device, err)
		}
		for _, r := range routes {
			if isDefault(r.Dst) {
				if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					return fmt.Errorf("network: remove the default route via %s: %w", r.Gw, err)
				}
			}
		}
	}
	neigh, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("network: neighbours of %s: %w", n.Device, err)
	}
	for _, nb := range neigh {
		if nb.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue // configured, not learnt (as `ip neigh flush` leaves them)
		}
		if err := netlink.NeighDel(&nb); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("network: forget neighbour %s on %s: %w", nb.IP, n.Device, err)
		}
	}
	announce(link, n)
	return nil
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0 && dst.IP.IsUnspecified()
}
