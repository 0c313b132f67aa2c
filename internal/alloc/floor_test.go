package alloc

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/mergenhq/mergen/internal/store"
)

// scanned is what each allocation must return: the lowest free value found
// by scanning its whole pool from the start, as the index did before it
// kept floors.
type scanned struct {
	ip   netip.Addr
	uid  int
	port int
}

func scan(ix *Index, cidr netip.Prefix, uids, ports Range, probe Probe) (s scanned) {
	for a := Gateway(cidr).Next(); cidr.Contains(a.Next()); a = a.Next() {
		if _, used := ix.IPs[a]; !used {
			s.ip = a
			break
		}
	}
	for uid := uids.Start; uid <= uids.End; uid++ {
		if _, used := ix.UIDs[uid]; !used {
			s.uid = uid
			break
		}
	}
	for p := ports.Start; p <= ports.End; p++ {
		if _, used := ix.Ports[PortKey{p, "tcp"}]; !used && probe(p, "tcp") {
			s.port = p
			break
		}
	}
	return s
}

func TestAllocationsAreTheLowestFreeAfterAnyCreatesAndDeletes(t *testing.T) {
	cidr := netip.MustParsePrefix("10.20.0.0/23")
	uids, ports := Range{Start: 5000, End: 5600}, Range{Start: 30000, End: 30600}
	rng := rand.New(rand.NewPCG(1, 2))
	ix := NewIndex(nil)
	var vms []store.Meta
	for step := range 3000 {
		// Some ports are bound on the host for a while: not handed out
		// then, but later.
		probe := func(port int, _ string) bool { return (port+step/50)%7 != 3 }
		// Creates outnumber deletes until the pools are nearly full, then
		// deletes catch up: holes open everywhere, low and high.
		if len(vms) > 0 && rng.IntN(100) < 35+len(vms)/15 {
			i := rng.IntN(len(vms))
			ix.Remove(vms[i])
			vms = append(vms[:i], vms[i+1:]...)
			continue
		}
		want := scan(ix, cidr, uids, ports, probe)
		ip, err := ix.GuestIP(cidr)
		if err != nil {
			t.Fatalf("step %d: guest IP: %v", step, err)
		}
		uid, err := ix.VMMUID(uids.Start, uids.End)
		if err != nil {
			t.Fatalf("step %d: uid: %v", step, err)
		}
		got, err := ix.HostPorts([]store.Port{{Guest: 80, Protocol: "tcp"}}, ports, probe)
		if err != nil {
			t.Fatalf("step %d: port: %v", step, err)
		}
		if ip != want.ip || uid != want.uid || got[0].Host != want.port {
			t.Fatalf("step %d, %d VMs: got %s, uid %d, port %d; the lowest free are %s, %d, %d", step, len(vms), ip, uid, got[0].Host, want.ip, want.uid, want.port)
		}
		if rng.IntN(10) == 0 {
			continue // the create failed after its allocation: nothing held
		}
		vm := store.Meta{ID: fmt.Sprint("vm", step), GuestIP: ip.String(), VMMUID: uid, Ports: got}
		ix.Add(vm)
		vms = append(vms, vm)
	}
}

func TestAnIndexRebuiltWithHolesHandsOutTheLowestFirst(t *testing.T) {
	ix := NewIndex([]store.Meta{
		{ID: "a", GuestIP: "172.30.0.2", VMMUID: 100, Ports: []store.Port{{Guest: 80, Host: 20000, Protocol: "tcp"}}},
		{ID: "c", GuestIP: "172.30.0.4", VMMUID: 102, Ports: []store.Port{{Guest: 80, Host: 20002, Protocol: "tcp"}}},
	})
	ip, _ := ix.GuestIP(cidr)
	uid, _ := ix.VMMUID(100, 110)
	ports, _ := ix.HostPorts([]store.Port{{Guest: 80, Protocol: "tcp"}, {Guest: 81, Protocol: "tcp"}}, Range{Start: 20000, End: 20010}, freeProbe)
	if ip.String() != "172.30.0.3" || uid != 101 || ports[0].Host != 20001 || ports[1].Host != 20003 {
		t.Fatalf("got %s, uid %d, ports %d and %d; want the holes 172.30.0.3, 101, 20001, then 20003", ip, uid, ports[0].Host, ports[1].Host)
	}
}

// BenchmarkAllocateAmong1000VMs is one create's allocation (guest IP, uid,
// a host port) with 1,000 VMs defined, beside the same found by scanning
// each pool from its start (how the index allocated before it kept
// floors).
func BenchmarkAllocateAmong1000VMs(b *testing.B) {
	cidr := netip.MustParsePrefix("10.20.0.0/20")
	uids, ports := Range{Start: 5000, End: 9000}, Range{Start: 30000, End: 34000}
	ix := NewIndex(nil)
	for i := range 1000 {
		ix.Add(store.Meta{ID: fmt.Sprint("vm", i), GuestIP: numAddr(addrNum(Gateway(cidr).Next()) + i).String(), VMMUID: uids.Start + i,
			Ports: []store.Port{{Guest: 80, Host: ports.Start + i, Protocol: "tcp"}}})
	}
	vm := store.Meta{ID: "new", GuestIP: numAddr(addrNum(Gateway(cidr).Next()) + 1000).String(), VMMUID: uids.Start + 1000,
		Ports: []store.Port{{Guest: 80, Host: ports.Start + 1000, Protocol: "tcp"}}}
	b.Run("floors", func(b *testing.B) {
		for b.Loop() {
			// A create, then its delete: the pools stay at 1,000 VMs.
			ix.GuestIP(cidr)
			ix.VMMUID(uids.Start, uids.End)
			ix.HostPorts([]store.Port{{Guest: 80, Protocol: "tcp"}}, ports, freeProbe)
			ix.Add(vm)
			ix.Remove(vm)
		}
	})
	b.Run("scan from the start", func(b *testing.B) {
		for b.Loop() {
			scan(ix, cidr, uids, ports, freeProbe)
			ix.Add(vm)
			ix.Remove(vm)
		}
	})
}
