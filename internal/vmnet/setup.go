package vmnet

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/errdefs"
)

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// netnsDir is where named namespaces live (as with iproute2).
const netnsDir = "/run/netns"

var prepareOnce sync.Once
var prepareErr error

// prepareNetnsDir makes /run/netns a shared mount point, as `ip netns add`
// does the first time. Namespaces created before iproute2 does this would
// end up underneath its bind mount, where nobody can delete them.
func prepareNetnsDir() error {
	prepareOnce.Do(func() {
		if err := os.MkdirAll(netnsDir, 0o755); err != nil {
			prepareErr = err
			return
		}
		err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if errors.Is(err, unix.EINVAL) { // not a mount point yet
			if err = unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
				err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
			}
		}
		if err != nil {
			prepareErr = fmt.Errorf("prepare %s: %w", netnsDir, err)
		}
	})
	return prepareErr
}

// namespaceState tells whether /run/netns/<name> is a mounted namespace,
// missing, or a stale file (left by a creation interrupted between making
// the file and bind-mounting the namespace onto it).
func namespaceState(name string) (mounted, stale bool, err error) {
	var st unix.Statfs_t
	err = unix.Statfs(filepath.Join(netnsDir, name), &st)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, false, nil
	case err != nil:
		return false, false, fmt.Errorf("namespace %s: %w", name, err)
	}
	return st.Type == unix.NSFS_MAGIC, st.Type != unix.NSFS_MAGIC, nil
}

// deleteNamespace unmounts and removes a named namespace; missing is fine.
func deleteNamespace(name string) error {
	mounted, stale, err := namespaceState(name)
	if err != nil || (!mounted && !stale) {
		return err
	}
	p := filepath.Join(netnsDir, name)
	if mounted {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount namespace %s: %w", name, err)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove namespace %s: %w", name, err)
	}
	return nil
}

// ensureNamespace creates the named namespace unless it exists.
func ensureNamespace(name string) error {
	mounted, stale, err := namespaceState(name)
	if err != nil || mounted {
		return err
	}
	if stale {
		if err := deleteNamespace(name); err != nil {
			return err
		}
	}
	if err := prepareNetnsDir(); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name) // also moves this thread into it
		if err != nil {
			errc <- fmt.Errorf("create namespace %s: %w", name, err)
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			return
		}
		ns.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err
			return // the thread dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// ensureTap creates a persistent tap named name in the calling thread's
// namespace, owned by uid/gid, and returns it. A tap of that name left by an
// earlier run is made again: its owner may be another's (no VMM is attached
// at pre-start), and the owner of an existing tap cannot be read reliably
// from another namespace.
func ensureTap(h *netlink.Handle, name string, uid, gid int) (netlink.Link, error) {
	if l, err := h.LinkByName(name); err == nil {
		if l.Type() != "tuntap" {
			return nil, fmt.Errorf("link %s exists and is a %s, not a tap", name, l.Type())
		}
		if err := h.LinkDel(l); err != nil {
			return nil, fmt.Errorf("remove tap %s left by an earlier run: %w", name, err)
		}
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
		// Only this uid (or a member of gid) may attach: the VMM, which
		// runs as them, and no other unprivileged process.
		Owner: uint32(uid),
		Group: uint32(gid),
	}
	// Created through /dev/net/tun, which makes it in the calling thread's
	// namespace; the handle must be for the same one.
	if err := h.LinkAdd(tap); err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	// The VMM attaches later: this process must not keep a queue open.
	for _, f := range tap.Fds {
		f.Close()
	}
	return h.LinkByName(name)
}

func setupNamespace(c Config) error {
	if err := ensureNamespace(c.Netns); err != nil {
		return err
	}
	ns, err := netns.GetFromName(c.Netns)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", c.Netns, err)
	}
	defer ns.Close()

	// Inside: loopback, the tap with the gateway address, forwarding.
	if err := RunInNetns(c.Netns, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		if lo, err := h.LinkByName("lo"); err == nil {
			if err := h.LinkSetUp(lo); err != nil {
				return fmt.Errorf("loopback up: %w", err)
			}
		}
		tap, err := ensureTap(h, c.Tap, c.TapUID, c.TapGID)
		if err != nil {
			return err
		}
		if err := h.AddrReplace(tap, &netlink.Addr{IPNet: ipnet(c.Gateway, c.PrefixLen)}); err != nil {
			return fmt.Errorf("address %s/%d on %s: %w", c.Gateway, c.PrefixLen, c.Tap, err)
		}
		if err := h.LinkSetUp(tap); err != nil {
			return fmt.Errorf("tap %s up: %w", c.Tap, err)
		}
		return sysctl("net/ipv4/ip_forward", "1")
	}); err != nil {
		return err
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()

	// The veth pair: the peer is created directly inside the namespace.
	host := &netlink.Handle{}
	veth, err := host.LinkByName(c.Veth)
	if err == nil && veth.Type() == "veth" && !pairedWith(h, veth) {
		// The namespace was re-created while a process kept the old one
		// (and the old peer) alive: this end leads nowhere useful.
		if err := host.LinkDel(veth); err != nil {
			return fmt.Errorf("delete stale veth %s: %w", c.Veth, err)
		}
		veth, err = host.LinkByName(c.Veth)
	}
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("find %s: %w", c.Veth, err)
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: c.Veth}, PeerName: NSVeth, PeerNamespace: netlink.NsFd(int(ns))}
		if err := host.LinkAdd(v); err != nil {
			return fmt.Errorf("create veth %s: %w", c.Veth, err)
		}
		if veth, err = host.LinkByName(c.Veth); err != nil {
			return err
		}
	} else if veth.Type() != "veth" {
		return fmt.Errorf("link %s exists and is a %s, not a veth", c.Veth, veth.Type())
	}
	// Guests are IPv4 only: the host's end of their link has no IPv6 (not
	// even a link-local address the namespace could talk to). A host
	// without IPv6 has nothing to switch off.
	if err := sysctl("net/ipv6/conf/"+c.Veth+"/disable_ipv6", "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := host.AddrReplace(veth, &netlink.Addr{IPNet: ipnet(HostLinkAddr, 32)}); err != nil {
		return fmt.Errorf("address on %s: %w", c.Veth, err)
	}
	if err := host.LinkSetUp(veth); err != nil {
		return fmt.Errorf("%s up: %w", c.Veth, err)
	}
	// Connections made to 127.0.0.1:<host port> are DNATed out of this
	// veth; the kernel routes loopback sources only where this is set.
	if err := sysctl("net/ipv4/conf/"+c.Veth+"/route_localnet", "1"); err != nil {
		return err
	}
	// Via the namespace's end of the veth, "onlink": every VM's pair uses the
	// same link addresses, so the host has no connected route to them.
	guestRoute := &netlink.Route{LinkIndex: veth.Attrs().Index, Dst: ipnet(c.GuestIP, 32),
		Gw: net.IP(NSLinkAddr.AsSlice()), Flags: int(netlink.FLAG_ONLINK)}
	if err := host.RouteReplace(guestRoute); err != nil {
		return fmt.Errorf("route %s via %s: %w", c.GuestIP, c.Veth, err)
	}
	if err := sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}

	// Inside: the veth end, a link route to the host end and the default route.
	peer, err := h.LinkByName(NSVeth)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", NSVeth, c.Netns, err)
	}
	if err := h.AddrReplace(peer, &netlink.Addr{IPNet: ipnet(NSLinkAddr, 32)}); err != nil {
		return fmt.Errorf("address on %s: %w", NSVeth, err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		return err
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: ipnet(HostLinkAddr, 32), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("link route in %s: %w", c.Netns, err)
	}
	def := &netlink.Route{LinkIndex: peer.Attrs().Index, Dst: ipnet(netip.IPv4Unspecified(), 0), Gw: net.IP(HostLinkAddr.AsSlice())}
	if err := h.RouteReplace(def); err != nil {
		return fmt.Errorf("default route in %s: %w", c.Netns, err)
	}
	return nil
}

func setupBridge(c Config) error {
	h := &netlink.Handle{}
	br, err := h.LinkByName(c.Bridge.Name)
	if err != nil {
		return errdefs.Invalid("network of vm %s: bridge %s does not exist on this host", c.ID, c.Bridge.Name)
	}
	if br.Type() != "bridge" {
		return errdefs.Invalid("network of vm %s: %s is a %s, not a bridge", c.ID, c.Bridge.Name, br.Type())
	}
	tap, err := ensureTap(h, c.Tap, c.TapUID, c.TapGID)
	if err != nil {
		return fmt.Errorf("network of vm %s: %w", c.ID, err)
	}
	if err := h.LinkSetMaster(tap, br); err != nil {
		return fmt.Errorf("network of vm %s: attach %s to %s: %w", c.ID, c.Tap, c.Bridge.Name, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("network of vm %s: %s up: %w", c.ID, c.Tap, err)
	}
	return nil
}

// pairedWith tells whether the host veth's peer is the namespace's veth end.
func pairedWith(ns *netlink.Handle, hostVeth netlink.Link) bool {
	peer, err := ns.LinkByName(NSVeth)
	if err != nil || peer.Type() != "veth" {
		return false
	}
	return peer.Attrs().ParentIndex == hostVeth.Attrs().Index
}
