package guest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/bootparam"
	"github.com/mergenhq/mergen/internal/envfile"
)

// defaultPath is the payload's PATH when no layer of its env sets one.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultStopTimeout is the grace period between the stop signal and SIGKILL.
const DefaultStopTimeout = 10 * time.Second

// Restart is what mergen-init does when the payload exits by itself.
type Restart string

const (
	RestartNo        Restart = "no"
	RestartAlways    Restart = "always"
	RestartOnFailure Restart = "on-failure"
)

// Net is the guest's network as the runtime passes it in the standard
// `ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>`
// form. The cloud kernel is built without IP_PNP and ignores it, so
// mergen-init applies it itself.
type Net struct {
	Addr     net.IP
	Mask     net.IPMask
	Gateway  net.IP // nil when absent
	Hostname string
	Device   string
	DNS      []net.IP
}

// Boot is what the kernel command line tells mergen-init.
type Boot struct {
	Net *Net     // nil: no `ip=`, no network configuration at all
	Env []string // KEY=VALUE from mergen.env, sorted by key
	// EnvFromAgent (mergen.env_from=agent): the VM's extraEnv was too
	// large for the command line; the host hands it over the agent
	// channel (agentproto.OpEnv), and the payload waits for it.
	EnvFromAgent bool
	Argv         []string // mergen.argv: replaces the payload disk's argv; nil keeps it
	Restart      Restart
	// StopTimeout is how long a stopping payload gets between the stop
	// signal and SIGKILL (mergen.stop_timeout=<seconds>).
	StopTimeout time.Duration
	// ExitPort is the I/O port of the VMM's exit device
	// (mergen.exit_port=<port>, QEMU's isa-debug-exit), 0 when it has none.
	ExitPort uint16
}

// ExitPortParam is the kernel command-line parameter naming the VMM's exit
// device: a guest that ends by itself with a non-zero status writes the
// status there, and the VMM exits with a failure.
const ExitPortParam = "mergen.exit_port"

// parseExitPort reads mergen.exit_port's value: a port number, decimal or
// 0x-prefixed hexadecimal, 1 to 0xffff.
func parseExitPort(val string) (uint16, error) {
	n, err := strconv.ParseUint(val, 0, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("kernel command line: %s=%q: want an I/O port number from 1 to 0xffff", ExitPortParam, val)
	}
	return uint16(n), nil
}

// ExitPortFrom is the exit device's port a kernel command line names, 0 when
// it names none or an invalid one. mergen-init reads it even when the rest
// of the command line is wrong: a guest that fails on its command line must
// still end with a failure.
func ExitPortFrom(cmdline string) uint16 {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, ExitPortParam+"="); ok {
			p, _ := parseExitPort(v)
			return p
		}
	}
	return 0
}

// ParseCmdline reads the parameters mergen-init understands from a kernel
// command line and ignores the rest.
func ParseCmdline(s string) (Boot, error) {
	b := Boot{Restart: RestartNo, StopTimeout: DefaultStopTimeout}
	for _, f := range strings.Fields(s) {
		key, val, _ := strings.Cut(f, "=")
		switch key {
		case "ip":
			n, err := parseIP(val)
			if err != nil {
				return Boot{}, fmt.Errorf("kernel command line: ip=%s: %w", val, err)
			}
			b.Net = n
		case bootparam.EnvParam:
			env, err := bootparam.DecodeEnv(val)
			if err != nil {
				return Boot{}, fmt.Errorf("kernel command line: %s: %w", key, err)
			}
			b.Env = env
		case bootparam.EnvFromParam:
			if val != bootparam.FromAgent {
				return Boot{}, fmt.Errorf("kernel command line: %s=%q: want %s", key, val, bootparam.FromAgent)
			}
			b.EnvFromAgent = true
		case bootparam.ArgvParam:
			argv, err := bootparam.DecodeArgv(val)
			if err != nil {
				return Boot{}, fmt.Errorf("kernel command line: %s: %w", key, err)
			}
			b.Argv = argv
		case "mergen.stop_timeout":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 3600 {
				return Boot{}, fmt.Errorf("kernel command line: mergen.stop_timeout=%q: want whole seconds from 1 to 3600", val)
			}
			b.StopTimeout = time.Duration(n) * time.Second
		case ExitPortParam:
			p, err := parseExitPort(val)
			if err != nil {
				return Boot{}, err
			}
			b.ExitPort = p
		case "mergen.restart":
			switch r := Restart(val); r {
			case RestartNo, RestartAlways, RestartOnFailure:
				b.Restart = r
			default:
				return Boot{}, fmt.Errorf("kernel command line: mergen.restart=%q: want always, on-failure or no", val)
			}
		}
	}
	return b, nil
}

func parseIP(v string) (*Net, error) {
	p := strings.Split(v, ":")
	for len(p) < 9 {
		p = append(p, "")
	}
	n := &Net{Hostname: p[4], Device: p[5]}
	if n.Addr = net.ParseIP(p[0]).To4(); n.Addr == nil {
		return nil, fmt.Errorf("client address %q is not an IPv4 address", p[0])
	}
	if p[2] != "" {
		if n.Gateway = net.ParseIP(p[2]).To4(); n.Gateway == nil {
			return nil, fmt.Errorf("gateway %q is not an IPv4 address", p[2])
		}
	}
	if p[3] == "" {
		return nil, fmt.Errorf("netmask is missing")
	}
	m := net.ParseIP(p[3]).To4()
	if m == nil {
		return nil, fmt.Errorf("netmask %q is not an IPv4 address", p[3])
	}
	n.Mask = net.IPMask(m)
	if ones, bits := n.Mask.Size(); ones == 0 && bits == 0 {
		return nil, fmt.Errorf("netmask %q is not contiguous", p[3])
	}
	if n.Device == "" {
		n.Device = "eth0"
	}
	if p[6] != "" && p[6] != "off" && p[6] != "none" {
		return nil, fmt.Errorf("autoconf %q: only static configuration (off) is supported", p[6])
	}
	for _, d := range p[7:9] {
		if d == "" {
			continue
		}
		ip := net.ParseIP(d)
		if ip == nil {
			return nil, fmt.Errorf("DNS server %q is not an IP address", d)
		}
		n.DNS = append(n.DNS, ip)
	}
	return n, nil
}

func checkEnvKey(k string) error {
	if k == "" {
		return fmt.Errorf("empty variable name")
	}
	if strings.ContainsAny(k, "=\x00") {
		return fmt.Errorf("variable name %q contains '=' or NUL", k)
	}
	return nil
}

// ParseEnvFile reads the env disk's `env` file: KEY=VALUE lines, blank lines
// and lines starting with '#' skipped. The value is taken literally (no quotes,
// no expansion). A malformed line is an error naming its number.
func ParseEnvFile(data []byte) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("env file line %d: %q is not KEY=VALUE", n, line)
		}
		if err := checkEnvKey(k); err != nil {
			return nil, fmt.Errorf("env file line %d: %w", n, err)
		}
		if strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("env file line %d: variable name %q contains whitespace", n, k)
		}
		if strings.ContainsRune(line, 0) {
			return nil, fmt.Errorf("env file line %d: contains NUL", n)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("env file: %w", err)
	}
	return out, nil
}

// MergeEnv merges KEY=VALUE layers; a later layer wins. A key keeps the
// position where it first appeared so the image's order survives overrides.
func MergeEnv(layers ...[]string) []string {
	idx := map[string]int{}
	var out []string
	for _, l := range layers {
		for _, kv := range l {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := idx[k]; ok {
				out[i] = kv
				continue
			}
			idx[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}

// PayloadEnv is the environment the payload starts with: the image's env,
// then the env disk's, then the VM's extraEnv (later wins), PATH defaulting
// to the usual directories, HOME and HOSTNAME unless those layers set them.
func PayloadEnv(image, envDisk, extra []string, home, hostname string) []string {
	env := MergeEnv(image, envDisk, extra)
	if _, ok := LookupEnv(env, "PATH"); !ok {
		env = append([]string{"PATH=" + defaultPath}, env...)
	}
	return MergeEnv([]string{"HOME=" + home, "HOSTNAME=" + hostname}, env)
}

// EnvScript renders the VM's extraEnv (sorted KEY=VALUE) as the payload
// finds it in /run/mergen/env: one KEY='value' line each, sourceable by any
// POSIX shell; a single quote in a value ends the quoting, comes escaped
// (\') and the quoting starts again. A name that is not a shell name or a
// value with NUL is refused: the file must mean what it says.
func EnvScript(env []string) ([]byte, error) {
	var b strings.Builder
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !envfile.ValidKey(k) {
			return nil, fmt.Errorf("env script: %q is not NAME=value with a shell name", k)
		}
		if strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("env script: value of %s contains NUL", k)
		}
		b.WriteString(k + "='" + strings.ReplaceAll(v, "'", `'\''`) + "'\n")
	}
	return []byte(b.String()), nil
}

// LookupEnv returns the value of key in a KEY=VALUE list.
func LookupEnv(env []string, key string) (string, bool) {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v, true
		}
	}
	return "", false
}
