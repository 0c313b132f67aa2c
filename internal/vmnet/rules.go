package vmnet

import (
	"context"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mergenhq/mergen/internal/lock"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family ip) holding every mergen rule.
const TableName = "mergen"

// Comments that tag rules, shown by `nft list ruleset`.
const isolationComment = "mergen isolation"

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
	}
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

// setupRules replaces the VM's rules (and adds the shared isolation rule
// once) in one atomic batch.
func setupRules(ctx context.Context, c Config) error {
	return withRulesLock(ctx, func(conn *nftables.Conn) error {
		ch := baseChains(conn)
		if err := conn.Flush(); err != nil {
			return fmt.Errorf("create table %s: %w", TableName, err)
		}
		haveIsolation := false
		for _, chain := range []*nftables.Chain{ch.pre, ch.out, ch.post, ch.forward} {
			rules, err := conn.GetRules(ch.table, chain)
			if err != nil {
				return err
			}
			for _, r := range rules {
				switch ruleComment(r) {
				case vmComment(c.ID):
					if err := conn.DelRule(r); err != nil {
						return err
					}
				case isolationComment:
					haveIsolation = true
				}
			}
		}
		if !haveIsolation {
			conn.AddRule(&nftables.Rule{Table: ch.table, Chain: ch.forward, UserData: comment(isolationComment), Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: vethPrefix},
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: vethPrefix},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}})
		}
		tag := comment(vmComment(c.ID))
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
			conn.AddRule(&nftables.Rule{Table: ch.table, Chain: ch.pre, UserData: tag, Exprs: dnat})
			conn.AddRule(&nftables.Rule{Table: ch.table, Chain: ch.out, UserData: tag, Exprs: dnat})
		}
		// Loopback clients reach the guest with the veth's address as source.
		conn.AddRule(&nftables.Rule{Table: ch.table, Chain: ch.post, UserData: tag, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(c.Veth)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{127, 0, 0, 0}},
			&expr.Masq{},
		}})
		// The guest's own traffic leaving the host is masqueraded.
		conn.AddRule(&nftables.Rule{Table: ch.table, Chain: ch.post, UserData: tag, Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: guest},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: vethPrefix},
			&expr.Masq{},
		}})
		return conn.Flush()
	})
}

// removeRules deletes every rule tagged with the VM's id.
func removeRules(ctx context.Context, id string) error {
	return withRulesLock(ctx, func(conn *nftables.Conn) error {
		tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return err
		}
		var table *nftables.Table
		for _, t := range tables {
			if t.Name == TableName {
				table = t
			}
		}
		if table == nil {
			return nil
		}
		chainList, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return err
		}
		n := 0
		for _, chain := range chainList {
			if chain.Table.Name != TableName {
				continue
			}
			rules, err := conn.GetRules(table, chain)
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
		if n == 0 {
			return nil
		}
		return conn.Flush()
	})
}
