// Package alloc hands out guest IPs and host ports. It keeps no state of its
// own: an Index is built from the stored VMs' metadata (the single source of
// truth) and the caller holds the store's allocation lock while it allocates
// and persists, so concurrent creates — in one daemon or several — never hand
// out the same address or port.
package alloc

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
)

// PortKey identifies a host port per protocol.
type PortKey struct {
	Port     int
	Protocol string
}

// Index is the set of guest IPs and host ports in use, each mapped to the VM
// that holds it. Change it only through Add and Remove: they keep its
// floors.
type Index struct {
	IPs   map[netip.Addr]string
	Ports map[PortKey]string
	UIDs  map[int]string // VMM uids (VMs' own ids)

	// floors say, for each pool searched for its lowest free value (guest
	// addresses, uids, each protocol's ports), up to where from the pool's
	// start every value is held: the next search starts there. Without
	// them every create scanned all the VMs' addresses, uids and ports
	// from the start, under the allocation lock: quadratic in the VMs
	// defined.
	floors map[string]floor
}

// floor is where a search of the pool beginning at start begins: every
// value from start up to at is held.
type floor struct{ start, at int }

// Pools of an Index's floors.
const (
	poolIPs  = "ip"
	poolUIDs = "uid"
)

func portPool(protocol string) string { return "port/" + protocol }

// NewIndex builds the index from stored VMs.
func NewIndex(metas []store.Meta) *Index {
	ix := &Index{IPs: map[netip.Addr]string{}, Ports: map[PortKey]string{}, UIDs: map[int]string{}, floors: map[string]floor{}}
	for _, m := range metas {
		ix.Add(m)
	}
	return ix
}

// Add records the VM's IP and ports.
func (ix *Index) Add(m store.Meta) {
	if a, err := netip.ParseAddr(m.GuestIP); err == nil && m.Bridge == nil {
		ix.IPs[a] = m.ID
	}
	for _, p := range m.Ports {
		ix.Ports[PortKey{p.Host, p.Protocol}] = m.ID
	}
	if m.VMMUID != 0 {
		ix.UIDs[m.VMMUID] = m.ID
	}
}

// Remove forgets the VM's IP and ports.
func (ix *Index) Remove(m store.Meta) {
	if a, err := netip.ParseAddr(m.GuestIP); err == nil && ix.IPs[a] == m.ID {
		delete(ix.IPs, a)
		if a.Is4() {
			ix.freed(poolIPs, addrNum(a))
		}
	}
	for _, p := range m.Ports {
		k := PortKey{p.Host, p.Protocol}
		if ix.Ports[k] == m.ID {
			delete(ix.Ports, k)
			ix.freed(portPool(p.Protocol), p.Host)
		}
	}
	if m.VMMUID != 0 && ix.UIDs[m.VMMUID] == m.ID {
		delete(ix.UIDs, m.VMMUID)
		ix.freed(poolUIDs, m.VMMUID)
	}
}

// freed lowers pool's floor to v, free again.
func (ix *Index) freed(pool string, v int) {
	if f, ok := ix.floors[pool]; ok && v < f.at {
		ix.floors[pool] = floor{f.start, max(v, f.start)}
	}
}

// lowest returns the lowest v of [start, end] that the index does not hold
// (held) and that ok accepts, searching from pool's floor. The floor moves
// up over the values held from where it was, and stops at the first value
// not held: one that ok refuses (a port bound on the host, or taken
// earlier in the same request) is asked again next time.
func (ix *Index) lowest(pool string, start, end int, held, ok func(int) bool) (int, bool) {
	f, known := ix.floors[pool]
	if !known || f.start != start {
		f = floor{start, start}
	}
	defer func() { ix.floors[pool] = f }()
	below := true // every value from the floor up to v is held
	for v := f.at; v <= end; v++ {
		if held(v) {
			if below {
				f.at = v + 1
			}
			continue
		}
		below = false
		if ok(v) {
			return v, true
		}
	}
	return 0, false
}

// addrNum is an IPv4 address as a number, for the address pool's floor.
func addrNum(a netip.Addr) int {
	b := a.As4()
	return int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3])
}

// numAddr is addrNum's inverse.
func numAddr(n int) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

func always(int) bool { return true }

// VMMUID returns the lowest uid of [start, end] that no VM holds: a VM's
// own uid, whose gid has the same number. Ids freed by deletes are reused.
func (ix *Index) VMMUID(start, end int) (int, error) {
	held := func(uid int) bool { _, used := ix.UIDs[uid]; return used }
	if uid, ok := ix.lowest(poolUIDs, start, end, held, always); ok {
		return uid, nil
	}
	return 0, errdefs.Conflict("vmm uid range %d-%d is exhausted: every id is in use (widen MGR_VMM_UID_RANGE or delete VMs)", start, end)
}

// Gateway is the address the guests of cidr use as their gateway: the first
// host address. Every VM has its own namespace, so all share it.
func Gateway(cidr netip.Prefix) netip.Addr { return cidr.Masked().Addr().Next() }

// PoolSize is how many guest addresses cidr holds: all but the network
// address, the gateway and the broadcast address (the ones GuestIP skips).
func PoolSize(cidr netip.Prefix) int {
	if !cidr.IsValid() || !cidr.Addr().Is4() {
		return 0
	}
	host := 32 - cidr.Bits()
	if host < 2 {
		return 0
	}
	if host > 30 {
		host = 30
	}
	return 1<<host - 3
}

// GuestIP returns the lowest free guest address in cidr: skipping the network
// address, the gateway and the broadcast address. Addresses freed by deletes
// are reused.
func (ix *Index) GuestIP(cidr netip.Prefix) (netip.Addr, error) {
	if n := PoolSize(cidr); n > 0 {
		first := addrNum(Gateway(cidr).Next())
		held := func(v int) bool { _, used := ix.IPs[numAddr(v)]; return used }
		if v, ok := ix.lowest(poolIPs, first, first+n-1, held, always); ok {
			return numAddr(v), nil
		}
	}
	return netip.Addr{}, errdefs.Conflict("guest network %s is exhausted: every address is in use (raise MGR_GUEST_CIDR or delete VMs)", cidr)
}

// Range is the pool of host ports for "host": 0.
type Range struct{ Start, End int }

// Probe reports whether a host port is free for binding on this host. The
// default probe binds the wildcard address, which fails when any socket on
// the host already holds the port.
type Probe func(port int, protocol string) bool

// BindProbe is the real probe: it binds the port on every address as a
// listener of the host would (dual-stack where the host has IPv6; for TCP
// with SO_REUSEADDR, then listen), and closes the socket. It makes the
// socket calls itself: a net listener also registers with the runtime's
// poller and asks the kernel its address, twice the calls, and every
// create that publishes a port probes at least once.
func BindProbe(port int, protocol string) bool {
	typ := unix.SOCK_STREAM
	if protocol == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, sa, err := wildcardSocket(typ, port)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if typ == unix.SOCK_DGRAM {
		return unix.Bind(fd, sa) == nil
	}
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) == nil &&
		unix.Bind(fd, sa) == nil &&
		unix.Listen(fd, 1) == nil
}

// wildcardSocket opens a socket of type typ for the wildcard address at
// port: IPv6 taking IPv4 too, or IPv4 alone on a host without IPv6.
func wildcardSocket(typ, port int) (int, unix.Sockaddr, error) {
	if fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0); err == nil {
		if unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0) == nil {
			return fd, &unix.SockaddrInet6{Port: port}, nil
		}
		unix.Close(fd)
	}
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	return fd, &unix.SockaddrInet4{Port: port}, err
}

// HostPorts fills in the host side of the requested ports. A port with Host
// 0 gets the lowest free port of the range; an explicit host port must not be
// held by another VM nor bound by a socket on the host. The result is in the
// request's order.
func (ix *Index) HostPorts(req []store.Port, pool Range, probe Probe) ([]store.Port, error) {
	out := make([]store.Port, len(req))
	taken := map[PortKey]bool{}
	for i, p := range req {
		if p.Host == 0 {
			continue
		}
		k := PortKey{p.Host, p.Protocol}
		if owner, used := ix.Ports[k]; used {
			return nil, errdefs.Conflict("ports[%d].host: %s port %d is already published by vm %s", i, p.Protocol, p.Host, owner)
		}
		if !probe(p.Host, p.Protocol) {
			return nil, errdefs.Conflict("ports[%d].host: %s port %d is already in use on this host", i, p.Protocol, p.Host)
		}
		taken[k] = true
		out[i] = p
	}
	for i, p := range req {
		if p.Host != 0 {
			continue
		}
		held := func(port int) bool { _, used := ix.Ports[PortKey{port, p.Protocol}]; return used }
		free := func(port int) bool { return !taken[PortKey{port, p.Protocol}] && probe(port, p.Protocol) }
		port, found := ix.lowest(portPool(p.Protocol), pool.Start, pool.End, held, free)
		if found {
			p.Host = port
			taken[PortKey{port, p.Protocol}] = true
		}
		if !found {
			return nil, errdefs.Conflict("ports[%d].host: no free %s port left in %d..%d (MGR_PORT_START..MGR_PORT_END)", i, p.Protocol, pool.Start, pool.End)
		}
		out[i] = p
	}
	return out, nil
}

// String renders a port key, for messages.
func (k PortKey) String() string { return fmt.Sprintf("%d/%s", k.Port, k.Protocol) }
