package vmnet

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mergenhq/mergen/internal/lock"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family ip) holding every mergen rule.
const TableName = "mergen"

// Comments of the shared rules (one rule each, added once for every VM),
// shown by `nft list ruleset`.
const (
	isolationComment = "mergen isolation"
	// A packet from a VM link whose source is not routed back over that
	// link: the host would answer it (or forward it) out of another
	// interface.
	fenceRPFComment = "mergen fence: reverse path"
	// New connections from a VM link to the host itself.
	fenceHostComment = "mergen fence: host"
	// Link-local destinations (cloud metadata) forwarded for a guest.
	fenceLinkLocalComment = "mergen fence: link-local"
)

func vmComment(id string) string { return "mergen vm " + id }

// lockPath serialises rule changes of concurrent processes, so that the
// shared rules are added once and each VM's rules are replaced as a whole.
var lockPath = "/run/lock/mergen-nftables.lock"

func withRulesLock(ctx context.Context, fn func(*nftables.Conn) error) error {
	held, err := lock.Acquire(ctx, lockPath)
	if err != nil {
		return err
	}
	defer held.Release()
	c, err := nftables.New()
	if err != nil {
		return err
	}
	return fn(c)
}

type chains struct {
	table                   *nftables.Table
	pre, out, post, forward *nftables.Chain
	// The guest fence: input (filter) and rpfilter (prerouting, before
	// conntrack, so that dropped packets leave no conntrack entry).
	input, rpfilter *nftables.Chain
}

// baseChains declares the table and its base chains; adding what exists is
// a no-op for nftables.
func baseChains(c *nftables.Conn) chains {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName})
	accept := nftables.ChainPolicyAccept
	return chains{
		table: t,
		pre: c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest}),
		out: c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest}),
		post: c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}),
		forward: c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept}),
		input: c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept}),
		rpfilter: c.AddChain(&nftables.Chain{Name: "rpfilter", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept}),
	}
}

// bridgeChain declares the bridge-family table and its prerouting chain,
// which only bridge-mode VMs use: hosts without bridge-mode VMs never need
// the kernel's bridge nftables support.
func bridgeChain(c *nftables.Conn) *nftables.Chain {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName})
	accept := nftables.ChainPolicyAccept
	return c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-200), Policy: &accept})
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// ifname is the 16-byte, NUL-padded form nftables compares interface names in.
func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

// vethPrefix matches every mergen host veth (the "veth-*" wildcard).
var vethPrefix = []byte("veth-")

// Expression building blocks, named after what `nft` prints.

func iifname(name []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
	}
}

func oifname(op expr.CmpOp, name []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: name},
	}
}

// ipSaddr matches the IPv4 source address (network header offset 12).
func ipSaddr(op expr.CmpOp, a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: a.AsSlice()},
	}
}

// ipDaddrLinkLocal matches "ip daddr 169.254.0.0/16".
func ipDaddrLinkLocal() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{169, 254}},
	}
}

// dport matches "tcp dport N" or "udp dport N".
func dport(protocol string, port int) []expr.Any {
	proto := byte(unix.IPPROTO_TCP)
	if protocol == "udp" {
		proto = unix.IPPROTO_UDP
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(port))},
	}
}

// notEstablished matches "ct state ! established,related": packets that do
// not belong to (or relate to) a connection already accepted.
func notEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// etherType matches the frame's EtherType (link header offset 12), bridge family.
func etherType(op expr.CmpOp, t uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
	}
}

// counted ends a rule with a counter and a verdict.
func counted(kind expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: kind}}
}

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// sharedRules are the rules every namespace-mode VM relies on, one of each
// (told apart by their comments), matching every VM link ("veth-*").
func sharedRules(ch chains) []*nftables.Rule {
	anyVeth := iifname(vethPrefix)
	return []*nftables.Rule{
		// VMs cannot reach each other.
		{Table: ch.table, Chain: ch.forward, UserData: comment(isolationComment), Exprs: join(
			anyVeth, oifname(expr.CmpOpEq, vethPrefix), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})},
		// Strict reverse-path check on VM links: the source must be routed
		// back over the link it came in on. This drops what the namespace
		// itself sends (169.254.1.2, which every VM's link shares, so the
		// host has no route back to it: its answer would leave through the
		// default route) and anything a guest spoofs.
		{Table: ch.table, Chain: ch.rpfilter, UserData: comment(fenceRPFComment), Exprs: join(anyVeth, []expr.Any{
			&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true, FlagPRESENT: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
		}, counted(expr.VerdictDrop))},
		// The host itself: only replies to connections it opened (and
		// what relates to them), unless a VM's allow-list rule, placed
		// before this one, accepted the packet.
		{Table: ch.table, Chain: ch.input, UserData: comment(fenceHostComment), Exprs: join(
			anyVeth, notEstablished(), counted(expr.VerdictDrop))},
		// Link-local addresses beyond the VM's own link (169.254.169.254,
		// the cloud metadata service) are not forwarded for guests.
		{Table: ch.table, Chain: ch.forward, UserData: comment(fenceLinkLocalComment), Exprs: join(
			anyVeth, ipDaddrLinkLocal(), counted(expr.VerdictDrop))},
	}
}

// vmRules are the VM's own rules: added at the end of their chains, and
// first, placed at the head of theirs (in this order) so that they come
// before the shared drops. Both carry the VM's comment.
func vmRules(c Config, ch chains) (added, first []*nftables.Rule) {
	tag := comment(vmComment(c.ID))
	rule := func(chain *nftables.Chain, exprs ...[]expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: ch.table, Chain: chain, UserData: tag, Exprs: join(exprs...)}
	}
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	if c.Bridge != nil {
		// The guest's traffic reaches the host on the bridge, where other
		// ports may be (containers): its rules match the guest's address,
		// which the bridge-family rules guarantee for frames from the tap.
		br := iifname(ifname(c.Bridge.Name))
		src := ipSaddr(expr.CmpOpEq, c.GuestIP)
		for _, p := range c.HostPorts {
			first = append(first, rule(ch.input, br, src, dport(p.Protocol, p.Port), accept))
		}
		first = append(first, rule(ch.input, br, src, notEstablished(), counted(expr.VerdictDrop)))
		added = append(added, rule(ch.forward, br, src, ipDaddrLinkLocal(), counted(expr.VerdictDrop)))
		return added, first
	}

	// The allow-list: only from the guest's own address, the one the host
	// routes back over this VM's link.
	veth := iifname(ifname(c.Veth))
	for _, p := range c.HostPorts {
		first = append(first, rule(ch.input, veth, ipSaddr(expr.CmpOpEq, c.GuestIP), dport(p.Protocol, p.Port), accept))
	}
	guest := c.GuestIP.AsSlice()
	for _, p := range c.Ports {
		proto := byte(unix.IPPROTO_TCP)
		if p.Protocol == "udp" {
			proto = unix.IPPROTO_UDP
		}
		dnat := []expr.Any{
			// Only traffic for this host's own addresses.
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(p.Host))},
			&expr.Immediate{Register: 1, Data: guest},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(p.Guest))},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		}
		added = append(added, rule(ch.pre, dnat), rule(ch.out, dnat))
	}
	// Loopback clients reach the guest with the veth's address as source.
	added = append(added, rule(ch.post, oifname(expr.CmpOpEq, ifname(c.Veth)), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{127, 0, 0, 0}},
		&expr.Masq{},
	}))
	// The guest's own traffic leaving the host is masqueraded.
	added = append(added, rule(ch.post, ipSaddr(expr.CmpOpEq, c.GuestIP), oifname(expr.CmpOpNeq, vethPrefix),
		[]expr.Any{&expr.Masq{}}))
	return added, first
}

// bridgeRules pin a bridge-mode guest to its address: from its tap only
// IPv4 with the guest's source and ARP for the guest's address pass (no
// IPv6, no VLAN tags, no other protocol), so that the ip-family rules keyed
// on that address hold whatever the guest sends.
func bridgeRules(c Config, chain *nftables.Chain) []*nftables.Rule {
	tag := comment(vmComment(c.ID))
	tap := iifname(ifname(c.Tap))
	drop := []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	return []*nftables.Rule{
		{Table: chain.Table, Chain: chain, UserData: tag, Exprs: join(tap,
			etherType(expr.CmpOpNeq, unix.ETH_P_IP), etherType(expr.CmpOpNeq, unix.ETH_P_ARP), drop)},
		{Table: chain.Table, Chain: chain, UserData: tag, Exprs: join(tap,
			etherType(expr.CmpOpEq, unix.ETH_P_IP), ipSaddr(expr.CmpOpNeq, c.GuestIP), drop)},
		// The sender protocol address of an Ethernet/IPv4 ARP packet.
		{Table: chain.Table, Chain: chain, UserData: tag, Exprs: join(tap,
			etherType(expr.CmpOpEq, unix.ETH_P_ARP), []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: c.GuestIP.AsSlice()},
			}, drop)},
	}
}

// setupRules replaces the VM's rules (and adds missing shared rules) in one
// atomic batch.
func setupRules(ctx context.Context, c Config) error {
	return withRulesLock(ctx, func(conn *nftables.Conn) error {
		ch := baseChains(conn)
		var brChain *nftables.Chain
		if c.Bridge != nil {
			brChain = bridgeChain(conn)
		}
		if err := conn.Flush(); err != nil {
			return fmt.Errorf("create table %s: %w", TableName, err)
		}
		have := map[string]bool{}
		for _, chain := range []*nftables.Chain{ch.pre, ch.out, ch.post, ch.forward, ch.input, ch.rpfilter, brChain} {
			if chain == nil {
				continue
			}
			rules, err := conn.GetRules(chain.Table, chain)
			if err != nil {
				return err
			}
			for _, r := range rules {
				switch cm := ruleComment(r); cm {
				case vmComment(c.ID):
					if err := conn.DelRule(r); err != nil {
						return err
					}
				default:
					have[cm] = true
				}
			}
		}
		for _, r := range sharedRules(ch) {
			if !have[ruleComment(r)] {
				conn.AddRule(r)
			}
		}
		added, first := vmRules(c, ch)
		for _, r := range added {
			conn.AddRule(r)
		}
		// Each insertion goes to the head: the last inserted ends up first.
		for i := len(first) - 1; i >= 0; i-- {
			conn.InsertRule(first[i])
		}
		if brChain != nil {
			for _, r := range bridgeRules(c, brChain) {
				conn.AddRule(r)
			}
		}
		return conn.Flush()
	})
}

// removeRules deletes every rule tagged with the VM's id, in the ip table
// and, if there is one, the bridge table.
func removeRules(ctx context.Context, id string) error {
	return withRulesLock(ctx, func(conn *nftables.Conn) error {
		n := 0
		for _, family := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyBridge} {
			chainList, err := conn.ListChainsOfTableFamily(family)
			if err != nil {
				return err
			}
			for _, chain := range chainList {
				if chain.Table.Name != TableName || chain.Table.Family != family {
					continue
				}
				rules, err := conn.GetRules(chain.Table, chain)
				if err != nil {
					return err
				}
				for _, r := range rules {
					if ruleComment(r) == vmComment(id) {
						if err := conn.DelRule(r); err != nil {
							return err
						}
						n++
					}
				}
			}
		}
		if n == 0 {
			return nil
		}
		return conn.Flush()
	})
}
