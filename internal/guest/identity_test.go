package guest

import (
	"bytes"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
)

func identity() agentproto.Identity {
	return agentproto.Identity{Hostname: "new", Addr: "172.31.251.7/24", Gateway: "172.31.251.1", MAC: "52:54:00:12:34:99",
		Env: map[string]string{"B": "2", "A": "1"}, UnixNano: time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		Entropy: bytes.Repeat([]byte{1}, 32)}
}

func TestPlanIdentity(t *testing.T) {
	boot := &Net{Addr: net.IPv4(172, 31, 250, 2).To4(), Mask: net.CIDRMask(24, 32), Gateway: net.IPv4(172, 31, 250, 1).To4(),
		Hostname: "old", Device: "eth0", DNS: []net.IP{net.ParseIP("172.31.250.1")}}

	p, err := planIdentity(identity(), boot)
	if err != nil {
		t.Fatal(err)
	}
	want := &Net{Addr: net.IPv4(172, 31, 251, 7).To4(), Mask: net.CIDRMask(24, 32), Gateway: net.IPv4(172, 31, 251, 1).To4(),
		Hostname: "new", Device: "eth0", DNS: boot.DNS}
	if !p.setNet || !reflect.DeepEqual(p.net, want) || p.mac.String() != "52:54:00:12:34:99" {
		t.Fatalf("network plan %+v mac %v, want %+v", p.net, p.mac, want)
	}
	if !reflect.DeepEqual(p.env, []string{"A=1", "B=2"}) || p.hostname != "new" || p.clock.Year() != 2030 || p.address() != "172.31.251.7/24" {
		t.Fatalf("plan %+v", p)
	}

	// Without addr the network stays, under the new name.
	id := identity()
	id.Addr, id.Gateway, id.MAC = "", "", ""
	p, err = planIdentity(id, boot)
	if err != nil {
		t.Fatal(err)
	}
	if p.setNet || p.net.Hostname != "new" || !p.net.Addr.Equal(boot.Addr) || boot.Hostname != "old" || p.address() != "172.31.250.2/24 (unchanged)" {
		t.Fatalf("unchanged network: %+v (boot %+v)", p.net, boot)
	}
	if p, err = planIdentity(id, nil); err != nil || p.net != nil || p.address() != "none" {
		t.Fatalf("no network: %+v, %v", p, err)
	}

	for _, c := range []struct {
		edit func(*agentproto.Identity)
		want string
	}{
		{func(id *agentproto.Identity) { id.Addr = "172.31.251.7/33" }, `addr "172.31.251.7/33"`},
		{func(id *agentproto.Identity) { id.MAC = "52:54:00:12:34" }, `mac "52:54:00:12:34"`},
		{func(id *agentproto.Identity) { id.Entropy = id.Entropy[:16] }, "entropy: 16 bytes, want 32"},
	} {
		id := identity()
		c.edit(&id)
		if _, err := planIdentity(id, boot); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("planIdentity = %v, want an error containing %q", err, c.want)
		}
	}
}
