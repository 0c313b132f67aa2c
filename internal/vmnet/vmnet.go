// Package vmnet builds and removes the network of one VM.
//
// Namespace mode (the default). Every VM gets:
//
//	host namespace                      VM namespace mergen-<short>
//	──────────────                      ──────────────────────────
//	veth-<short> 169.254.1.1/32  ◄──►  veth0 169.254.1.2/32
//	<guestIP>/32 via 169.254.1.2 onlink  default via 169.254.1.1
//	                                    tap-<short> <gateway>/<prefix>  ◄──► guest eth0 <guestIP>
//
// The link addresses are the same for every VM: each pair is a separate
// point-to-point link, so nothing collides, and no address has to be
// allocated per VM. Guest IPs are unique across the host, so the host routes
// each one into its own namespace.
//
// nftables (one table, "ip mergen"): published host ports are DNATed to
// guestIP:guestPort both for traffic arriving at the host (prerouting) and
// for connections made on the host itself, 127.0.0.1 included (output; the
// veth gets route_localnet=1 and the loopback source is masqueraded to the
// veth's address); guests' outbound traffic is masqueraded; forwarding from
// one VM's veth to another's is dropped, so VMs cannot reach each other.
//
// The guest fence: a packet from a VM link whose source address is not
// routed back over that same link is dropped before conntrack (so the host
// never answers a guest out of another interface, and spoofed traffic is not
// forwarded); new connections from a VM link to the host itself are dropped
// except to the operator's allow-list (Config.HostPorts) and from the
// guest's own address; link-local destinations (169.254.0.0/16, cloud
// metadata) are never forwarded for a guest.
// Each VM's rules carry the comment "mergen vm <id>" and are removed exactly;
// the table and its base chains stay (empty) after the last VM is gone.
//
// Bridge mode (the earlier generation's): the tap is created in the host
// namespace and attached to an existing bridge (for example docker0); the
// guest has a static address on the bridge's network; no NAT. The fence
// applies there too: frames from the tap must carry the guest's address
// (IPv4 and ARP only), and new connections from that address to the host
// itself are dropped except to the allow-list.
//
// Setup and Teardown are idempotent, and safe to run concurrently for
// different VMs from different processes.
package vmnet

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
)

// Config is what the network of one VM needs.
type Config struct {
	ID               string
	Netns, Tap, Veth string
	GuestIP, Gateway netip.Addr
	PrefixLen        int
	MAC              string
	// TapUID and TapGID own the tap: the VMM, running as them, may attach
	// to it and no other unprivileged user may. 0, 0: root (records from
	// before VMs had their own ids).
	TapUID, TapGID int
	Ports          []store.Port
	Bridge         *store.Bridge
	// HostPorts are the host's own ports the guest may open connections
	// to (MGR_GUEST_HOST_PORTS); every other port of the host is fenced
	// off from guests. Empty by default.
	HostPorts []HostPort
}

// HostPort is one port of the host that guests may reach.
type HostPort struct {
	Port     int
	Protocol string // "tcp" or "udp"
}

func (p HostPort) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// ParseHostPort reads "PORT/tcp", "PORT/udp" or "PORT" (tcp), the form of
// MGR_GUEST_HOST_PORTS entries.
func ParseHostPort(s string) (HostPort, error) {
	port, proto, found := strings.Cut(s, "/")
	if !found {
		proto = "tcp"
	}
	n, err := strconv.Atoi(port)
	p := HostPort{Port: n, Protocol: proto}
	if err != nil || p.validate() != nil {
		return HostPort{}, errdefs.Invalid("guest host port %q is not PORT/tcp or PORT/udp with PORT in 1..65535", s)
	}
	return p, nil
}

func (p HostPort) validate() error {
	if p.Port < 1 || p.Port > 65535 || (p.Protocol != "tcp" && p.Protocol != "udp") {
		return fmt.Errorf("%d/%s is not a port in 1..65535 with protocol tcp or udp", p.Port, p.Protocol)
	}
	return nil
}

// The link addresses of every VM's veth pair.
var (
	HostLinkAddr = netip.MustParseAddr("169.254.1.1")
	NSLinkAddr   = netip.MustParseAddr("169.254.1.2")
)

// NSVeth is the name of the veth end inside the VM's namespace.
const NSVeth = "veth0"

// validIfName: 1..15 letters, digits, '-', '_', '.' (IFNAMSIZ less the NUL).
func validIfName(name string) bool { return len(name) <= 15 && ifNameRe.MatchString(name) }

// A repetition with a bound ({1,64}) compiles to a copy of its class per
// repetition, kept for the program's life (20 KB and more per
// expression): the bounds are checked apart, by length.
var ifNameRe = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

func (c Config) validate() error {
	if c.ID == "" {
		return errdefs.Invalid("network: vm id is empty")
	}
	names := map[string]string{"tap": c.Tap}
	if c.Bridge == nil {
		names["veth"], names["netns"] = c.Veth, c.Netns
		if !validIfName(c.Netns) {
			return errdefs.Invalid("network of vm %s: netns %q is not a valid name", c.ID, c.Netns)
		}
	} else {
		names["bridge"] = c.Bridge.Name
	}
	for field, n := range names {
		if field != "netns" && !validIfName(n) {
			return errdefs.Invalid("network of vm %s: %s name %q must be 1..15 characters of letters, digits, '-', '_', '.'", c.ID, field, n)
		}
	}
	if !c.GuestIP.Is4() || !c.Gateway.Is4() {
		return errdefs.Invalid("network of vm %s: guest IP %s and gateway %s must be IPv4 addresses", c.ID, c.GuestIP, c.Gateway)
	}
	if c.PrefixLen < 1 || c.PrefixLen > 30 {
		return errdefs.Invalid("network of vm %s: prefix length %d is out of range 1..30", c.ID, c.PrefixLen)
	}
	pfx := netip.PrefixFrom(c.Gateway, c.PrefixLen).Masked()
	if !pfx.Contains(c.GuestIP) {
		return errdefs.Invalid("network of vm %s: guest IP %s is not in the gateway's network %s", c.ID, c.GuestIP, pfx)
	}
	if c.GuestIP == c.Gateway {
		return errdefs.Invalid("network of vm %s: guest IP equals the gateway %s", c.ID, c.Gateway)
	}
	if _, err := net.ParseMAC(c.MAC); err != nil && c.MAC != "" {
		return errdefs.Invalid("network of vm %s: mac %q: %w", c.ID, c.MAC, err)
	}
	for i, p := range c.Ports {
		if p.Guest < 1 || p.Guest > 65535 || p.Host < 1 || p.Host > 65535 {
			return errdefs.Invalid("network of vm %s: ports[%d]: %d->%d is out of range 1..65535", c.ID, i, p.Host, p.Guest)
		}
		if p.Protocol != "tcp" && p.Protocol != "udp" {
			return errdefs.Invalid("network of vm %s: ports[%d]: protocol %q is not tcp or udp", c.ID, i, p.Protocol)
		}
	}
	for i, p := range c.HostPorts {
		if err := p.validate(); err != nil {
			return errdefs.Invalid("network of vm %s: host ports[%d]: %v", c.ID, i, err)
		}
	}
	if c.Bridge != nil && len(c.Ports) > 0 {
		return errdefs.Invalid("network of vm %s: published ports need the namespace mode", c.ID)
	}
	return nil
}

// MACFor derives a stable, locally administered unicast MAC from the id.
func MACFor(id string) string {
	h := sha256.Sum256([]byte(id))
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3], h[4])
}

// Setup creates the VM's network. Running it again on a complete network
// changes nothing; a failure removes what this call made.
func Setup(ctx context.Context, c Config) (err error) {
	if err := c.validate(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if terr := Teardown(context.WithoutCancel(ctx), c); terr != nil {
				err = errors.Join(err, fmt.Errorf("roll back: %w", terr))
			}
		}
	}()
	if c.Bridge != nil {
		if err := setupBridge(c); err != nil {
			return err
		}
	} else if err := setupNamespace(c); err != nil {
		return fmt.Errorf("network of vm %s: %w", c.ID, err)
	}
	if err := setupRules(ctx, c); err != nil {
		return fmt.Errorf("network of vm %s: nftables: %w", c.ID, err)
	}
	return nil
}

// Teardown removes everything Setup made; what is already gone is fine.
func Teardown(ctx context.Context, c Config) error {
	if c.ID == "" {
		return errdefs.Invalid("network: vm id is empty")
	}
	var errs []error
	if c.Bridge != nil {
		// As in namespace mode: Setup adds rules only once the tap exists,
		// and the tap is removed only once the rules are gone.
		if tapExists(c.Tap) {
			if err := removeRules(ctx, c.ID); err != nil {
				return joinf(c.ID, []error{fmt.Errorf("nftables: %w", err)})
			}
		}
		if err := deleteLink(nil, c.Tap, "tuntap"); err != nil {
			errs = append(errs, err)
		}
		return joinf(c.ID, errs)
	}
	// Setup adds the VM's rules only once its namespace exists, and this
	// removes the namespace only once the rules are gone: so no namespace
	// means no rules, and a VM whose network was never set up is torn down
	// without touching nftables (which needs privileges).
	mounted, stale, err := namespaceState(c.Netns)
	if err != nil || mounted || stale || c.Netns == "" {
		if err := removeRules(ctx, c.ID); err != nil {
			// Keep the namespace: it tells the next teardown that rules
			// may remain.
			return joinf(c.ID, []error{fmt.Errorf("nftables: %w", err)})
		}
	}
	if err := deleteLink(nil, c.Veth, "veth"); err != nil {
		errs = append(errs, err)
	}
	if c.Netns != "" && validIfName(c.Netns) {
		// Unmounting does not destroy a namespace a process still runs in
		// (a VMM that has not exited yet); the tap is removed explicitly so
		// that it is gone now either way.
		if mounted, _, _ := namespaceState(c.Netns); mounted {
			if ns, err := netns.GetFromName(c.Netns); err == nil {
				if h, err := netlink.NewHandleAt(ns); err == nil {
					if err := deleteLink(h, c.Tap, "tuntap"); err != nil {
						errs = append(errs, err)
					}
					h.Close()
				}
				ns.Close()
			}
		}
		if err := deleteNamespace(c.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	return joinf(c.ID, errs)
}

// tapExists tells whether a link named name is in the host namespace; an
// error other than "not found" counts as yes, so that rules are not left.
func tapExists(name string) bool {
	if !validIfName(name) {
		return false
	}
	_, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	return !errors.As(err, &nf)
}

func joinf(id string, errs []error) error {
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down network of vm %s: %w", id, err)
	}
	return nil
}

// deleteLink removes a link by name through h (nil: the host namespace) if
// it is of the kind Setup makes; a link of another kind under the same name
// was not made by mergen and stays.
func deleteLink(h *netlink.Handle, name, kind string) error {
	if !validIfName(name) {
		return nil
	}
	if h == nil {
		h = &netlink.Handle{}
	}
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if l.Type() != kind {
		return nil
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// DialInNetns connects to addr over TCP from inside the named network
// namespace (the caller's own when name is empty): a socket belongs to the
// namespace it was made in, so the connect happens on a thread inside it;
// the connection is then used from any thread.
func DialInNetns(ctx context.Context, name, addr string) (net.Conn, error) {
	// A guest that goes away (powered off, its namespace torn down) sends
	// no reset: keep-alive probes notice within seconds, where an idle
	// connection would otherwise wait for it forever.
	d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3}}
	if name == "" {
		return d.DialContext(ctx, "tcp", addr)
	}
	var conn net.Conn
	err := RunInNetns(name, func() error {
		var err error
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return conn, err
}

// RunInNetns runs fn on an OS thread switched into the named namespace. The
// thread is discarded afterwards if it cannot be switched back.
func RunInNetns(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return // thread exits locked, never reused
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// sysctl writes a /proc/sys value in the calling thread's namespace.
func sysctl(path, value string) error {
	if err := os.WriteFile("/proc/sys/"+path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", path, value, err)
	}
	return nil
}

// OpenTap attaches to the VM's tap (in namespace netnsName, or this
// process's namespace when it is empty) and returns the open queue, for a
// VMM that runs unprivileged: it gets the tap as an inherited descriptor
// instead of opening /dev/net/tun itself, which hosts without udev rules
// leave to root (mode 0600). The flags are those the tap was made with.
func OpenTap(netnsName, tap string) (*os.File, error) {
	var f *os.File
	open := func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		req, err := unix.NewIfreq(tap)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("tap %s: %w", tap, err)
		}
		req.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_ONE_QUEUE)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, req); err != nil {
			unix.Close(fd)
			return fmt.Errorf("attach to tap %s: %w", tap, err)
		}
		f = os.NewFile(uintptr(fd), "/dev/net/tun:"+tap)
		return nil
	}
	var err error
	if netnsName == "" {
		err = open()
	} else {
		err = RunInNetns(netnsName, open)
	}
	return f, err
}

// TapCounters are a tap's traffic as the host sees it: Rx is what the
// guest sent, Tx what it was sent.
type TapCounters struct {
	RxBytes, TxBytes, RxPackets, TxPackets uint64
}

// Counters reads the counters of tap in the network namespace netns
// (empty: the host's own, bridge mode).
func Counters(netnsName, tap string) (TapCounters, error) {
	h := &netlink.Handle{}
	if netnsName != "" {
		ns, err := netns.GetFromName(netnsName)
		if err != nil {
			return TapCounters{}, fmt.Errorf("namespace %s: %w", netnsName, err)
		}
		defer ns.Close()
		if h, err = netlink.NewHandleAt(ns); err != nil {
			return TapCounters{}, fmt.Errorf("namespace %s: %w", netnsName, err)
		}
		defer h.Close()
	}
	l, err := h.LinkByName(tap)
	if err != nil {
		return TapCounters{}, fmt.Errorf("tap %s: %w", tap, err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		return TapCounters{}, fmt.Errorf("tap %s: no statistics", tap)
	}
	return TapCounters{RxBytes: s.RxBytes, TxBytes: s.TxBytes, RxPackets: s.RxPackets, TxPackets: s.TxPackets}, nil
}
