package manager_test

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/wire"
)

// Guest addresses come from MGR_GUEST_CIDR, lowest first, starting after the
// gateway (the network's first host address), one per VM.
func TestCreateGivesEachVMItsOwnGuestAddress(t *testing.T) {
	h := newHost(t, map[string]string{"MGR_GUEST_CIDR": "10.77.0.0/24"})
	for i, want := range []string{"10.77.0.2", "10.77.0.3", "10.77.0.4"} {
		vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		n := vm.Network
		if n.GuestIP != want || n.Gateway != "10.77.0.1" || n.PrefixLen != 24 {
			t.Errorf("VM %d: guest %s, gateway %s/%d; want %s, 10.77.0.1/24", i, n.GuestIP, n.Gateway, n.PrefixLen, want)
		}
		if n.Netns == "" || !strings.HasPrefix(n.TapName, "tap-") || n.MAC == "" {
			t.Errorf("VM %d: network identity incomplete: %+v", i, n)
		}
	}
}

// A /29 holds five guests (.2 to .6: .0 is the network, .1 the gateway, .7
// the broadcast address); the sixth create is a conflict and writes nothing.
func TestCreateInAnExhaustedGuestNetworkIsAConflict(t *testing.T) {
	h := newHost(t, map[string]string{"MGR_GUEST_CIDR": "10.77.0.8/29"})
	seen := map[string]bool{}
	for i := 0; i < 5; i++ {
		vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
		if err != nil {
			t.Fatalf("create %d of 5: %v", i+1, err)
		}
		seen[vm.Network.GuestIP] = true
	}
	for _, a := range []string{"10.77.0.10", "10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.14"} {
		if !seen[a] {
			t.Errorf("%s was not handed out; got %v", a, seen)
		}
	}
	_, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
	if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "10.77.0.8/29") {
		t.Fatalf("sixth create = %v; want a conflict naming the exhausted network", err)
	}
	if ids, _ := h.store.IDs(); len(ids) != 5 {
		t.Fatalf("%d VMs stored, want 5", len(ids))
	}
}

// Ports with host 0 get the lowest free ports of MGR_PORT_START..END, per
// protocol: not one published by another VM, not one a socket on the host
// holds.
func TestCreatePicksFreeHostPortsFromTheRange(t *testing.T) {
	held := holdPort(t) // the range's first port, bound by someone else
	end := min(held+40, 65535)
	h := newHost(t, map[string]string{"MGR_PORT_START": itoa(held), "MGR_PORT_END": itoa(end)})
	inRange := func(p int) bool { return p >= held && p <= end }

	first, err := h.mgr.Create(context.Background(), wire.CreateRequest{Ports: []wire.Port{{Guest: 80}, {Guest: 443}, {Guest: 53, Protocol: "udp"}}})
	if err != nil {
		t.Fatal(err)
	}
	second, err := h.mgr.Create(context.Background(), wire.CreateRequest{Ports: []wire.Port{{Guest: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	tcp := map[int]string{}
	for _, vm := range []wire.VM{first, second} {
		for _, p := range vm.Network.Ports {
			if !inRange(p.Host) {
				t.Errorf("vm %s: guest %d/%s got host port %d outside %d..%d", vm.ID, p.Guest, p.Protocol, p.Host, held, end)
			}
			if p.Protocol != "tcp" {
				continue
			}
			if p.Host == held {
				t.Errorf("vm %s: got tcp port %d, which a socket on the host holds", vm.ID, held)
			}
			if other, dup := tcp[p.Host]; dup {
				t.Errorf("tcp port %d handed to %s and %s", p.Host, other, vm.ID)
			}
			tcp[p.Host] = vm.ID
		}
	}
	if got := first.Network.Ports; len(got) != 3 || got[0].Guest != 80 || got[1].Guest != 443 || got[2].Guest != 53 {
		t.Errorf("ports %+v, want the request's order", got)
	}
}

// An explicit host port must be free: one published by a VM and one bound
// by a socket on the host are both conflicts naming the port's field.
func TestCreateRefusesATakenHostPort(t *testing.T) {
	held := holdPort(t)
	h := newHost(t, nil)
	first, err := h.mgr.Create(context.Background(), wire.CreateRequest{Ports: []wire.Port{{Guest: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	published := first.Network.Ports[0].Host

	_, err = h.mgr.Create(context.Background(), wire.CreateRequest{Ports: []wire.Port{{Guest: 8080, Host: published}}})
	if !errdefs.IsConflict(err) || !contains(err.Error(), "ports[0].host", itoa(published), first.ID) {
		t.Errorf("host port published by %s: %v; want a conflict naming ports[0].host, the port and the VM", first.ID, err)
	}
	_, err = h.mgr.Create(context.Background(), wire.CreateRequest{Ports: []wire.Port{{Guest: 22}, {Guest: 80, Host: held}}})
	if !errdefs.IsConflict(err) || !contains(err.Error(), "ports[1].host", itoa(held), "in use on this host") {
		t.Errorf("host port held by a socket: %v; want a conflict naming ports[1].host and the port", err)
	}
	// The same number over the other protocol is another port.
	if _, err := h.mgr.Create(context.Background(), wire.CreateRequest{Ports: []wire.Port{{Guest: 53, Host: published, Protocol: "udp"}}}); err != nil {
		t.Errorf("udp port %d while tcp %d is published: %v", published, published, err)
	}
	if ids, _ := h.store.IDs(); len(ids) != 2 {
		t.Errorf("%d VMs stored, want 2 (refused creates keep nothing)", len(ids))
	}
}

// When every port of the range is taken, a create that needs one is a
// conflict naming the range's variables.
func TestCreateWithNoFreePortInTheRangeIsAConflict(t *testing.T) {
	held := holdPort(t)
	h := newHost(t, map[string]string{"MGR_PORT_START": itoa(held), "MGR_PORT_END": itoa(held)})
	_, err := h.mgr.Create(context.Background(), wire.CreateRequest{Ports: []wire.Port{{Guest: 80}}})
	if !errdefs.IsConflict(err) || !contains(err.Error(), "ports[0].host", "MGR_PORT_START") {
		t.Fatalf("create = %v; want a conflict naming ports[0].host and MGR_PORT_START", err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Errorf("a refused create left %v", left)
	}
}

// Names are unique on the host: a second VM with a taken name is a conflict
// that names the owner.
func TestCreateRefusesATakenName(t *testing.T) {
	h := newHost(t, nil)
	web, err := h.mgr.Create(context.Background(), wire.CreateRequest{Tags: map[string]string{"name": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.mgr.Create(context.Background(), wire.CreateRequest{Tags: map[string]string{"name": "web"}})
	if !errdefs.IsConflict(err) || !contains(err.Error(), "tags.name", "web", web.ID) {
		t.Fatalf("second VM named web: %v; want a conflict naming tags.name and %s", err, web.ID)
	}
	if ids, _ := h.store.IDs(); len(ids) != 1 {
		t.Fatalf("%d VMs stored, want 1", len(ids))
	}
}

// A data disk belongs to one VM at a time.
func TestCreateRefusesADataDiskAttachedToAnotherVM(t *testing.T) {
	h := newHost(t, nil)
	data := h.disk(t, "data.ext4")
	owner, err := h.mgr.Create(context.Background(), wire.CreateRequest{DataDisk: data})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.mgr.Create(context.Background(), wire.CreateRequest{DataDisk: data})
	if !errdefs.IsConflict(err) || !contains(err.Error(), "dataDisk", owner.ID) {
		t.Fatalf("second VM with the same data disk: %v; want a conflict naming dataDisk and %s", err, owner.ID)
	}
}

// Concurrent creates, through one manager or through two sharing the store
// (two daemons, or a daemon and a lifecycle command), never hand out the same
// address or host port.
func TestConcurrentCreatesNeverShareAnAddressOrPort(t *testing.T) {
	h := newHost(t, nil)
	other := manager.New(manager.Options{Config: h.cfg, Store: h.store, SupervisorErr: errNoSupervisor})
	const n = 12
	vms := make([]wire.VM, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		m := h.mgr
		if i%2 == 1 {
			m = other
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = m.Create(context.Background(), wire.CreateRequest{Ports: []wire.Port{{Guest: 80}}})
		}()
	}
	wg.Wait()
	ips := map[string]bool{}
	ports := map[int]bool{}
	for i, vm := range vms {
		if errs[i] != nil {
			t.Fatalf("create %d: %v", i, errs[i])
		}
		ip := vm.Network.GuestIP
		if ips[ip] || !netip.MustParsePrefix("172.30.0.0/24").Contains(netip.MustParseAddr(ip)) {
			t.Errorf("guest IP %s handed out twice or outside the network", ip)
		}
		ips[ip] = true
		p := vm.Network.Ports[0].Host
		if ports[p] {
			t.Errorf("host port %d handed out twice", p)
		}
		ports[p] = true
	}
}

// Each VM gets its own VMM uid/gid from MGR_VMM_UID_RANGE, lowest free
// first; a deleted VM's id goes to the next VM.
func TestCreateGivesEachVMItsOwnVMMUID(t *testing.T) {
	h := newHost(t, map[string]string{"MGR_VMM_UID_RANGE": "300000-300001"})
	var ids []string
	for i, want := range []int{300000, 300001} {
		vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		m, err := h.store.ReadMeta(vm.ID)
		if err != nil {
			t.Fatal(err)
		}
		if m.VMMUID != want || m.VMMGID != want {
			t.Errorf("VM %d: vmm uid/gid %d/%d, want %d", i, m.VMMUID, m.VMMGID, want)
		}
		ids = append(ids, vm.ID)
	}
	if _, err := h.mgr.Create(context.Background(), wire.CreateRequest{}); !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "MGR_VMM_UID_RANGE") {
		t.Fatalf("third create = %v; want a conflict naming MGR_VMM_UID_RANGE", err)
	}
	if err := h.mgr.Delete(context.Background(), ids[0]); err != nil {
		t.Fatal(err)
	}
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := h.store.ReadMeta(vm.ID); m.VMMUID != 300000 {
		t.Fatalf("freed uid not reused: got %d", m.VMMUID)
	}
}
