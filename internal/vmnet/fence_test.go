package vmnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
)

// The rule building is pure: these tests run without root and read each
// rule in a compact form (see render), close to what `nft` prints.

func testChains() chains {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	c := func(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: t} }
	return chains{table: t, pre: c("prerouting"), out: c("output"), post: c("postrouting"),
		forward: c("forward"), input: c("input"), rpfilter: c("rpfilter")}
}

func fenceConfig() Config {
	return Config{
		ID: "0123456789abcdef0123456789abcdef", Netns: "mergen-01234567", Tap: "tap-01234567", Veth: "veth-01234567",
		GuestIP: netip.MustParseAddr("172.31.240.2"), Gateway: netip.MustParseAddr("172.31.240.1"), PrefixLen: 24,
		Ports:     []store.Port{{Guest: 80, Host: 28080, Protocol: "tcp"}},
		HostPorts: []HostPort{{Port: 8443, Protocol: "tcp"}, {Port: 53, Protocol: "udp"}},
	}
}

func TestSharedFenceRules(t *testing.T) {
	want := []string{
		`forward: iifname=="veth-" oifname=="veth-" drop # mergen isolation`,
		`rpfilter: iifname=="veth-" fib(saddr.iif)->oif-present==0 counter drop # mergen fence: reverse path`,
		`input: iifname=="veth-" ct-state&0x6==0 counter drop # mergen fence: host`,
		`forward: iifname=="veth-" ip-daddr/16==169.254 counter drop # mergen fence: link-local`,
	}
	rules := sharedRules(testChains())
	if got := renderAll(rules); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("shared rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// setupRules adds each shared rule unless one with its comment exists:
	// comments must tell them apart.
	seen := map[string]bool{}
	for _, r := range rules {
		if seen[ruleComment(r)] {
			t.Fatalf("two shared rules share the comment %q", ruleComment(r))
		}
		seen[ruleComment(r)] = true
	}
}

func TestVMFenceRulesNamespaceMode(t *testing.T) {
	c := fenceConfig()
	added, first := vmRules(c, testChains())
	tag := " # mergen vm " + c.ID
	wantFirst := []string{
		`input: iifname=="veth-01234567" ip-saddr==172.31.240.2 l4proto==tcp dport==8443 accept` + tag,
		`input: iifname=="veth-01234567" ip-saddr==172.31.240.2 l4proto==udp dport==53 accept` + tag,
	}
	wantAdded := []string{
		`prerouting: fib(daddr)->type==local l4proto==tcp dport==28080 dnat 172.31.240.2:80` + tag,
		`output: fib(daddr)->type==local l4proto==tcp dport==28080 dnat 172.31.240.2:80` + tag,
		`postrouting: oifname=="veth-01234567" ip-saddr&255.0.0.0==127.0.0.0 masquerade` + tag,
		`postrouting: ip-saddr==172.31.240.2 oifname!="veth-" masquerade` + tag,
	}
	check(t, "placed first", renderAll(first), wantFirst)
	check(t, "added", renderAll(added), wantAdded)

	// No allow-list: nothing goes before the shared drop.
	c.HostPorts = nil
	if _, first := vmRules(c, testChains()); len(first) != 0 {
		t.Fatalf("without an allow-list the VM still gets %d input rules:\n%s", len(first), strings.Join(renderAll(first), "\n"))
	}
}

func TestVMFenceRulesBridgeMode(t *testing.T) {
	c := fenceConfig()
	c.Ports, c.Netns, c.Veth = nil, "", ""
	c.Bridge = &store.Bridge{Name: "docker0", Netmask: "255.255.255.0"}
	added, first := vmRules(c, testChains())
	tag := " # mergen vm " + c.ID
	check(t, "placed first", renderAll(first), []string{
		`input: iifname=="docker0" ip-saddr==172.31.240.2 l4proto==tcp dport==8443 accept` + tag,
		`input: iifname=="docker0" ip-saddr==172.31.240.2 l4proto==udp dport==53 accept` + tag,
		// Last of the three: the allow rules come before it.
		`input: iifname=="docker0" ip-saddr==172.31.240.2 ct-state&0x6==0 counter drop` + tag,
	})
	check(t, "added", renderAll(added), []string{
		`forward: iifname=="docker0" ip-saddr==172.31.240.2 ip-daddr/16==169.254 counter drop` + tag,
	})
	bt := &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName}
	check(t, "bridge", renderAll(bridgeRules(c, &nftables.Chain{Name: "prerouting", Table: bt})), []string{
		`prerouting: iifname=="tap-01234567" ether-type!=0x0800 ether-type!=0x0806 drop` + tag,
		`prerouting: iifname=="tap-01234567" ether-type==0x0800 ip-saddr!=172.31.240.2 drop` + tag,
		`prerouting: iifname=="tap-01234567" ether-type==0x0806 arp-spa!=172.31.240.2 drop` + tag,
	})
}

func TestParseHostPort(t *testing.T) {
	for _, tc := range []struct {
		in, str string
		want    HostPort
	}{
		{"53/udp", "53/udp", HostPort{53, "udp"}}, {"8443/tcp", "8443/tcp", HostPort{8443, "tcp"}},
		{"22", "22/tcp", HostPort{22, "tcp"}}, {"65535/udp", "65535/udp", HostPort{65535, "udp"}},
	} {
		got, err := ParseHostPort(tc.in)
		if err != nil || got != tc.want || got.String() != tc.str {
			t.Errorf("ParseHostPort(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "0/tcp", "65536", "53/sctp", "x/udp", "53/", "/tcp", "-1"} {
		if _, err := ParseHostPort(in); !errdefs.IsInvalid(err) {
			t.Errorf("ParseHostPort(%q): %v, want invalid", in, err)
		}
	}
}

func TestHostPortsAreValidated(t *testing.T) {
	for _, p := range []HostPort{{0, "tcp"}, {70000, "udp"}, {53, "icmp"}} {
		c := fenceConfig()
		c.HostPorts = []HostPort{{22, "tcp"}, p}
		err := c.validate()
		if !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "host ports[1]") || !strings.Contains(err.Error(), c.ID) {
			t.Errorf("host port %v: %v, want invalid naming host ports[1] and the vm", p, err)
		}
	}
}

func check(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n%s\nwant:\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func renderAll(rules []*nftables.Rule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, render(r))
	}
	return out
}

// render prints a rule as "chain: match match ... verdict # comment". It
// knows the expressions this package builds, and fails loudly on others.
func render(r *nftables.Rule) string {
	var parts []string
	load := "?"
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Meta:
			load = map[expr.MetaKey]string{expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname", expr.MetaKeyL4PROTO: "l4proto"}[e.Key]
		case *expr.Payload:
			load = map[string]string{
				"1/12/4": "ip-saddr", "1/16/2": "ip-daddr/16", "1/14/4": "arp-spa",
				"2/2/2": "dport", "0/12/2": "ether-type",
			}[fmt.Sprintf("%d/%d/%d", e.Base, e.Offset, e.Len)]
		case *expr.Ct:
			load = "ct-state"
		case *expr.Fib:
			switch {
			case e.FlagSADDR && e.FlagIIF && e.ResultOIF && e.FlagPRESENT:
				load = "fib(saddr.iif)->oif-present"
			case e.FlagDADDR && e.ResultADDRTYPE:
				load = "fib(daddr)->type"
			default:
				load = fmt.Sprintf("fib%+v", *e)
			}
		case *expr.Bitwise:
			mask := e.Mask
			if load == "ct-state" {
				load += fmt.Sprintf("&%#x", binary.NativeEndian.Uint32(mask))
			} else {
				load += "&" + netip.AddrFrom4([4]byte(mask)).String()
			}
		case *expr.Cmp:
			op := map[expr.CmpOp]string{expr.CmpOpEq: "==", expr.CmpOpNeq: "!="}[e.Op]
			parts = append(parts, load+op+value(load, e.Data))
		case *expr.Counter:
			parts = append(parts, "counter")
		case *expr.Verdict:
			parts = append(parts, map[expr.VerdictKind]string{expr.VerdictDrop: "drop", expr.VerdictAccept: "accept"}[e.Kind])
		case *expr.Immediate:
			// Operands of the NAT that follows.
		case *expr.NAT:
			var addr, port []byte
			for _, x := range r.Exprs {
				if im, ok := x.(*expr.Immediate); ok && im.Register == e.RegAddrMin {
					addr = im.Data
				} else if ok && im.Register == e.RegProtoMin {
					port = im.Data
				}
			}
			parts = append(parts, fmt.Sprintf("dnat %s:%d", netip.AddrFrom4([4]byte(addr)), binary.BigEndian.Uint16(port)))
		case *expr.Masq:
			parts = append(parts, "masquerade")
		default:
			parts = append(parts, fmt.Sprintf("<%T>", e))
		}
	}
	return fmt.Sprintf("%s: %s # %s", r.Chain.Name, strings.Join(parts, " "), ruleComment(r))
}

func value(load string, b []byte) string {
	switch {
	case load == "iifname" || load == "oifname":
		return fmt.Sprintf("%q", strings.TrimRight(string(b), "\x00"))
	case load == "l4proto":
		return map[byte]string{6: "tcp", 17: "udp"}[b[0]]
	case load == "dport":
		return fmt.Sprint(binary.BigEndian.Uint16(b))
	case load == "ether-type":
		return fmt.Sprintf("%#04x", binary.BigEndian.Uint16(b))
	case load == "fib(daddr)->type":
		return map[uint32]string{2: "local"}[binary.NativeEndian.Uint32(b)]
	case strings.HasPrefix(load, "ct-state") || strings.HasPrefix(load, "fib(saddr"):
		return fmt.Sprint(binary.NativeEndian.Uint32(b))
	case load == "ip-daddr/16":
		return fmt.Sprintf("%d.%d", b[0], b[1])
	case len(b) == 4 && strings.HasPrefix(load, "ip-") || strings.HasPrefix(load, "arp-"):
		return netip.AddrFrom4([4]byte(b)).String()
	}
	return fmt.Sprintf("%#x", b)
}
