// Package alloc hands out guest IPs and host ports. It keeps no state of its
// own: an Index is built from the stored VMs' metadata (the single source of
// truth) and the caller holds the store's allocation lock while it allocates
// and persists, so concurrent creates — in one daemon or several — never hand
// out the same address or port.
package alloc

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
)

// PortKey identifies a host port per protocol.
type PortKey struct {
	Port     int
	Protocol string
}

// Index is the set of guest IPs and host ports in use, each mapped to the VM
// that holds it.
type Index struct {
	IPs   map[netip.Addr]string
	Ports map[PortKey]string
	UIDs  map[int]string // VMM uids (VMs' own ids)
}

// NewIndex builds the index from stored VMs.
func NewIndex(metas []store.Meta) *Index {
	ix := &Index{IPs: map[netip.Addr]string{}, Ports: map[PortKey]string{}, UIDs: map[int]string{}}
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
	}
	for _, p := range m.Ports {
		k := PortKey{p.Host, p.Protocol}
		if ix.Ports[k] == m.ID {
			delete(ix.Ports, k)
		}
	}
	if m.VMMUID != 0 && ix.UIDs[m.VMMUID] == m.ID {
		delete(ix.UIDs, m.VMMUID)
	}
}

// VMMUID returns the lowest uid of [start, end] that no VM holds: a VM's
// own uid, whose gid has the same number. Ids freed by deletes are reused.
func (ix *Index) VMMUID(start, end int) (int, error) {
	for uid := start; uid <= end; uid++ {
		if _, used := ix.UIDs[uid]; !used {
			return uid, nil
		}
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
	cidr = cidr.Masked()
	gw := Gateway(cidr)
	for a := gw.Next(); cidr.Contains(a) && cidr.Contains(a.Next()); a = a.Next() {
		if _, used := ix.IPs[a]; !used {
			return a, nil
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

// BindProbe is the real probe: it binds the port on all addresses and
// releases it.
func BindProbe(port int, protocol string) bool {
	addr := ":" + strconv.Itoa(port)
	switch protocol {
	case "udp":
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	default:
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		l.Close()
		return true
	}
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
	next := map[string]int{"tcp": pool.Start, "udp": pool.Start}
	for i, p := range req {
		if p.Host != 0 {
			continue
		}
		found := false
		for port := next[p.Protocol]; port <= pool.End; port++ {
			k := PortKey{port, p.Protocol}
			if _, used := ix.Ports[k]; used || taken[k] {
				continue
			}
			if !probe(port, p.Protocol) {
				continue
			}
			p.Host = port
			taken[k] = true
			next[p.Protocol] = port + 1
			found = true
			break
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
