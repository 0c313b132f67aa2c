package guest

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
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
	return nil
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
