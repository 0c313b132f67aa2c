package manager

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/mergenhq/mergen/internal/bootparam"
	"github.com/mergenhq/mergen/internal/envfile"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/health"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/wire"
)

// Limits of a create request.
const (
	DefaultVCPU   = 1
	MaxVCPU       = 32
	DefaultMemMiB = 512
	MinMemMiB     = 128
	MaxMemMiB     = 256 * 1024
	maxBootArgs   = 1024
	maxMetadata   = 64 << 10
	maxTags       = 64
	maxTagKey     = 63
	maxTagValue   = 253
	NameTag       = wire.NameTag // the tag the CLI resolves VM names with
)

var (
	tagKeyRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)
	// nameRe and bridgeRe leave their bounds (63 and 15 bytes) to a
	// length check.
	// A repetition with a bound ({1,64}) compiles to a copy of its
	// class per repetition, kept for the program's life (20 KB and more
	// per expression): the length is checked apart.
	nameRe   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	bridgeRe = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	macRe    = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)
)

// normalize fills defaults and checks every field of r that needs no I/O
// (but for the bridge's guest address, checked against the host's own
// addresses). Errors name the field as it appears in the JSON body.
func normalize(r *wire.CreateRequest) error {
	if r.VMM != "" && r.VMM != "firecracker" && r.VMM != "qemu" {
		return errdefs.Invalid("vmm: %q is not a known VMM (want firecracker or qemu)", r.VMM)
	}
	if r.VCPU == 0 {
		r.VCPU = DefaultVCPU
	}
	if r.VCPU < 1 || r.VCPU > MaxVCPU {
		return errdefs.Invalid("vcpu: %d is out of range 1..%d", r.VCPU, MaxVCPU)
	}
	if r.MemMiB == 0 {
		r.MemMiB = DefaultMemMiB
	}
	if r.MemMiB < MinMemMiB || r.MemMiB > MaxMemMiB {
		return errdefs.Invalid("memMiB: %d is out of range %d..%d", r.MemMiB, MinMemMiB, MaxMemMiB)
	}
	if err := normalizePorts(r.Ports); err != nil {
		return err
	}
	if r.HTTPPort < 0 || r.HTTPPort > 65535 {
		return errdefs.Invalid("httpPort: %d is out of range 1..65535", r.HTTPPort)
	}
	if len(r.Tags) > maxTags {
		return errdefs.Invalid("tags: %d tags, at most %d allowed", len(r.Tags), maxTags)
	}
	for k, v := range r.Tags {
		if len(k) > maxTagKey || !tagKeyRe.MatchString(k) {
			return errdefs.Invalid("tags: key %q must be 1..%d characters of letters, digits, '.', '_', '-', '/'", k, maxTagKey)
		}
		if len(v) > maxTagValue || strings.ContainsFunc(v, isControl) {
			return errdefs.Invalid("tags.%s: value must be at most %d printable characters", k, maxTagValue)
		}
	}
	if name, ok := r.Tags[NameTag]; ok && (len(name) > 63 || !nameRe.MatchString(name)) {
		return errdefs.Invalid("tags.name: %q must be a DNS label: lowercase letters, digits and '-', 1..63 characters", name)
	}
	if len(r.Metadata) > maxMetadata {
		return errdefs.Invalid("metadata: %d bytes, at most %d allowed", len(r.Metadata), maxMetadata)
	}
	if len(r.Metadata) > 0 && !json.Valid(r.Metadata) {
		return errdefs.Invalid("metadata: not valid JSON")
	}
	if len(r.BootArgs) > maxBootArgs || strings.ContainsFunc(r.BootArgs, isControl) {
		return errdefs.Invalid("bootArgs: must be at most %d printable characters on one line", maxBootArgs)
	}
	for k, v := range r.ExtraEnv {
		if !envfile.ValidKey(k) { // the guest writes it as a shell assignment
			return errdefs.Invalid("extraEnv: %q is not a valid variable name", k)
		}
		if strings.ContainsAny(v, "\x00\n") {
			return errdefs.Invalid("extraEnv.%s: value must not contain NUL or newline", k)
		}
	}
	if n := bootparam.EnvSize(r.ExtraEnv); n > bootparam.MaxAgentEnv {
		return errdefs.Invalid("extraEnv: %d bytes of JSON, at most %d (put large configuration on an env disk)", n, bootparam.MaxAgentEnv)
	}
	for i, a := range r.Argv {
		if strings.ContainsRune(a, 0) {
			return errdefs.Invalid("argv[%d]: must not contain NUL", i)
		}
	}
	if len(r.Argv) > 0 && r.Argv[0] == "" {
		return errdefs.Invalid("argv[0]: the program to run is empty")
	}
	if enc := bootparam.EncodeArgv(r.Argv); len(enc) > bootparam.MaxArgv {
		return errdefs.Invalid("argv: %d bytes once encoded for the kernel command line, at most %d", len(enc), bootparam.MaxArgv)
	}
	if len(r.Argv) > 0 && (r.Snapshot != "" || r.Ready != nil) {
		return errdefs.Invalid("argv: a VM restored from a snapshot runs what the snapshot's guest runs; argv goes only with a boot")
	}
	policy, err := supervisor.ParseRestart(r.Restart)
	if err != nil {
		return errdefs.Invalid("restart: %v", err)
	}
	r.Restart = policy.String()
	if err := normalizeHealthCheck(r.HealthCheck, r.HTTPPort, r.Snapshot != ""); err != nil {
		return err
	}
	if r.Bridge != nil {
		if err := normalizeBridge(r.Bridge); err != nil {
			return err
		}
		if len(r.Ports) > 0 {
			return errdefs.Invalid("ports: published ports need the namespace network mode; in bridge mode the guest is reachable at its own address")
		}
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func normalizePorts(ports []wire.Port) error {
	seenGuest := map[string]int{}
	seenHost := map[string]int{}
	for i := range ports {
		p := &ports[i]
		if p.Protocol == "" {
			p.Protocol = "tcp"
		}
		p.Protocol = strings.ToLower(p.Protocol)
		if p.Protocol != "tcp" && p.Protocol != "udp" {
			return errdefs.Invalid("ports[%d].protocol: %q is not tcp or udp", i, p.Protocol)
		}
		if p.Guest < 1 || p.Guest > 65535 {
			return errdefs.Invalid("ports[%d].guest: %d is out of range 1..65535", i, p.Guest)
		}
		if p.Host < 0 || p.Host > 65535 {
			return errdefs.Invalid("ports[%d].host: %d is out of range 1..65535 (0 picks a free port)", i, p.Host)
		}
		g := fmt.Sprintf("%d/%s", p.Guest, p.Protocol)
		if j, dup := seenGuest[g]; dup {
			return errdefs.Invalid("ports[%d].guest: %s is already published by ports[%d]", i, g, j)
		}
		seenGuest[g] = i
		if p.Host != 0 {
			h := fmt.Sprintf("%d/%s", p.Host, p.Protocol)
			if j, dup := seenHost[h]; dup {
				return errdefs.Invalid("ports[%d].host: %s is already used by ports[%d]", i, h, j)
			}
			seenHost[h] = i
		}
	}
	return nil
}

func normalizeBridge(b *wire.BridgeRequest) error {
	if len(b.Name) > 15 || !bridgeRe.MatchString(b.Name) {
		return errdefs.Invalid("bridge.name: %q is not a valid interface name", b.Name)
	}
	ip, err := netip.ParseAddr(b.GuestIP)
	if err != nil || !ip.Is4() {
		return errdefs.Invalid("bridge.guestIP: %q is not an IPv4 address", b.GuestIP)
	}
	gw, err := netip.ParseAddr(b.GatewayIP)
	if err != nil || !gw.Is4() {
		return errdefs.Invalid("bridge.gatewayIP: %q is not an IPv4 address", b.GatewayIP)
	}
	for _, f := range []struct {
		name string
		ip   netip.Addr
	}{{"bridge.guestIP", ip}, {"bridge.gatewayIP", gw}} {
		if why := notUnicast(f.ip); why != "" {
			return errdefs.Invalid("%s: %s is %s", f.name, f.ip, why)
		}
	}
	bits, err := maskBits(b.Netmask)
	if err != nil {
		return errdefs.Invalid("bridge.netmask: %w", err)
	}
	pfx := netip.PrefixFrom(ip, bits).Masked()
	if !pfx.Contains(gw) {
		return errdefs.Invalid("bridge.gatewayIP: %s is not in the guest's network %s", gw, pfx)
	}
	if ip == gw {
		return errdefs.Invalid("bridge.guestIP: %s equals the gateway", ip)
	}
	if ip == pfx.Addr() || ip == lastAddr(pfx) {
		return errdefs.Invalid("bridge.guestIP: %s is the network or broadcast address of %s", ip, pfx)
	}
	// The forwarder and published ports dial the guest's address: one of
	// the host's own would hand them the host's services. (The gateway is
	// usually the host's address on the bridge: that is expected.)
	own, err := hostAddrs()
	if err != nil {
		return errdefs.Unavailable("bridge.guestIP: cannot list the host's addresses to check it: %w", err)
	}
	for _, a := range own {
		if a == ip {
			return errdefs.Invalid("bridge.guestIP: %s is one of this host's own addresses", ip)
		}
	}
	b.MAC = strings.ToLower(b.MAC)
	if b.MAC != "" && !macRe.MatchString(b.MAC) {
		return errdefs.Invalid("bridge.mac: %q is not a MAC address like 02:00:00:00:00:01", b.MAC)
	}
	return nil
}

// notUnicast says why ip cannot be a guest's or gateway's address on a
// bridge ("" when it can): loopback, link-local, unspecified, multicast or
// the limited broadcast address.
func notUnicast(ip netip.Addr) string {
	switch {
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsLinkLocalUnicast():
		return "a link-local address"
	case ip.IsUnspecified():
		return "the unspecified address"
	case ip.IsMulticast(), ip.IsLinkLocalMulticast():
		return "a multicast address"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}

// lastAddr is the highest address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// hostAddrs lists the addresses of this host's interfaces (in the daemon's
// network namespace).
func hostAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// maskBits converts a dotted netmask to a prefix length.
func maskBits(mask string) (int, error) {
	a, err := netip.ParseAddr(mask)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("%q is not a dotted IPv4 netmask", mask)
	}
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	bits := 0
	for v&0x80000000 != 0 {
		bits++
		v <<= 1
	}
	if v != 0 || bits == 0 || bits > 30 {
		return 0, fmt.Errorf("%q is not a contiguous netmask between /1 and /30", mask)
	}
	return bits, nil
}

var healthPathRe = regexp.MustCompile(`^/[\x21-\x7e]*$`)

// normalizeHealthCheck checks a health check and fills in its timing's
// defaults. An http check without a port checks httpPort, which a restore
// may take from its snapshot (restore).
func normalizeHealthCheck(c *wire.HealthCheck, httpPort int, restore bool) error {
	if c == nil {
		return nil
	}
	kinds := 0
	for _, set := range []bool{c.HTTP != nil, c.TCP != nil, c.Exec != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return errdefs.Invalid("healthCheck: give exactly one of http, tcp and exec (%d given)", kinds)
	}
	switch {
	case c.HTTP != nil:
		h := c.HTTP
		if h.Port < 0 || h.Port > 65535 {
			return errdefs.Invalid("healthCheck.http.port: %d is out of range 1..65535 (0 is the VM's httpPort)", h.Port)
		}
		if h.Port == 0 && httpPort == 0 && !restore {
			return errdefs.Invalid("healthCheck.http.port: required when the VM has no httpPort")
		}
		if h.Path == "" {
			h.Path = "/"
		}
		if len(h.Path) > health.MaxPath || !healthPathRe.MatchString(h.Path) {
			return errdefs.Invalid("healthCheck.http.path: must begin with / and be at most %d printable characters without blanks", health.MaxPath)
		}
	case c.TCP != nil:
		if c.TCP.Port < 1 || c.TCP.Port > 65535 {
			return errdefs.Invalid("healthCheck.tcp.port: %d is out of range 1..65535", c.TCP.Port)
		}
	case c.Exec != nil:
		argv := c.Exec.Argv
		if len(argv) == 0 || argv[0] == "" {
			return errdefs.Invalid("healthCheck.exec.argv: the command to run is missing")
		}
		if len(argv) > health.MaxArgs {
			return errdefs.Invalid("healthCheck.exec.argv: %d arguments, at most %d allowed", len(argv), health.MaxArgs)
		}
		n := 0
		for i, a := range argv {
			if strings.ContainsRune(a, 0) {
				return errdefs.Invalid("healthCheck.exec.argv[%d]: must not contain NUL", i)
			}
			n += len(a)
		}
		if n > health.MaxArgBytes {
			return errdefs.Invalid("healthCheck.exec.argv: %d bytes, at most %d allowed", n, health.MaxArgBytes)
		}
	}
	for _, f := range []struct {
		name          string
		v             *int
		def, min, max int
	}{
		{"intervalSeconds", &c.IntervalSeconds, health.DefaultInterval, 1, health.MaxInterval},
		{"timeoutSeconds", &c.TimeoutSeconds, health.DefaultTimeout, 1, health.MaxTimeout},
		{"retries", &c.Retries, health.DefaultRetries, 1, health.MaxRetries},
		{"startPeriodSeconds", &c.StartPeriodSeconds, 0, 0, health.MaxStartPeriod},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
		if *f.v < f.min || *f.v > f.max {
			return errdefs.Invalid("healthCheck.%s: must be %d..%d, not %d", f.name, f.min, f.max, *f.v)
		}
	}
	return nil
}

// recordHealthCheck is the record's copy of a normalized health check.
func recordHealthCheck(c *wire.HealthCheck) *health.Check {
	if c == nil {
		return nil
	}
	out := &health.Check{
		IntervalSeconds: c.IntervalSeconds, TimeoutSeconds: c.TimeoutSeconds,
		Retries: c.Retries, StartPeriodSeconds: c.StartPeriodSeconds,
	}
	switch {
	case c.HTTP != nil:
		out.HTTP = &health.HTTPCheck{Port: c.HTTP.Port, Path: c.HTTP.Path}
	case c.TCP != nil:
		out.TCP = &health.TCPCheck{Port: c.TCP.Port}
	case c.Exec != nil:
		out.Exec = &health.ExecCheck{Argv: append([]string(nil), c.Exec.Argv...)}
	}
	return out
}

// wireHealthCheck is the document's copy of the record's health check.
func wireHealthCheck(c *health.Check) *wire.HealthCheck {
	if c == nil {
		return nil
	}
	out := &wire.HealthCheck{
		IntervalSeconds: c.IntervalSeconds, TimeoutSeconds: c.TimeoutSeconds,
		Retries: c.Retries, StartPeriodSeconds: c.StartPeriodSeconds,
	}
	switch {
	case c.HTTP != nil:
		out.HTTP = &wire.HTTPHealthCheck{Port: c.HTTP.Port, Path: c.HTTP.Path}
	case c.TCP != nil:
		out.TCP = &wire.TCPHealthCheck{Port: c.TCP.Port}
	case c.Exec != nil:
		out.Exec = &wire.ExecHealthCheck{Argv: append([]string(nil), c.Exec.Argv...)}
	}
	return out
}
