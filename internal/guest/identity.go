package guest

import (
	"net"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
	"github.com/mergenhq/mergen/internal/bootparam"
)

// identityPlan is an identity message checked and parsed: what applying it
// will set.
type identityPlan struct {
	clock    time.Time
	entropy  []byte
	hostname string
	// net is the guest's network afterwards (nil: it has none); setNet says
	// the message changes it, where mac is the interface's new MAC (nil:
	// unchanged).
	net    *Net
	setNet bool
	mac    net.HardwareAddr
	env    []string // the VM's extraEnv, KEY=VALUE sorted by key
}

// planIdentity checks id and works out what it changes in a guest whose
// network is cur (nil: none). The identity carries no DNS servers: those
// of cur are kept.
func planIdentity(id agentproto.Identity, cur *Net) (identityPlan, error) {
	if err := id.Validate(); err != nil {
		return identityPlan{}, err
	}
	p := identityPlan{clock: time.Unix(0, id.UnixNano), entropy: id.Entropy, hostname: id.Hostname, env: bootparam.Assignments(id.Env)}
	switch {
	case id.Addr != "":
		ip, ipn, _ := net.ParseCIDR(id.Addr) // Validate checked it
		n := &Net{Addr: ip.To4(), Mask: ipn.Mask, Hostname: id.Hostname, Device: id.Device}
		if n.Device == "" {
			n.Device = "eth0"
		}
		if id.Gateway != "" {
			n.Gateway = net.ParseIP(id.Gateway).To4()
		}
		if id.MAC != "" {
			p.mac, _ = net.ParseMAC(id.MAC)
		}
		if cur != nil {
			n.DNS = cur.DNS
		}
		p.net, p.setNet = n, true
	case cur != nil:
		n := *cur
		n.Hostname = id.Hostname
		p.net = &n
	}
	return p, nil
}

// address is how the console names the guest's address.
func (p identityPlan) address() string {
	switch {
	case p.setNet:
		return p.net.Prefix().String()
	case p.net != nil:
		return p.net.Prefix().String() + " (unchanged)"
	}
	return "none"
}
