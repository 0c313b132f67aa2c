// Package config reads the daemon's MGR_* environment variables, applies the
// documented defaults and validates everything once at start-up, so that a
// misconfigured daemon refuses to start with a message naming the variable
// instead of failing later in the middle of a request.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/logging"
)

// Config is the daemon's configuration. Field comments name the variable.
type Config struct {
	HTTPAddr        string        // MGR_HTTP_ADDR (:8080)
	ConfigRoot      string        // MGR_CONFIG_ROOT (/var/lib/mergen/vm.d)
	DataRoot        string        // MGR_DATA_ROOT (/var/lib/mergen)
	RunRoot         string        // MGR_RUN_ROOT (/run/mergen)
	GlobalHooksDir  string        // MGR_GLOBAL_HOOKS_DIR (<data>/hooks.d)
	UnitPrefix      string        // MGR_UNIT_PREFIX (mergen)
	SystemctlPath   string        // MGR_SYSTEMCTL_PATH (systemctl)
	CommandTimeout  time.Duration // MGR_COMMAND_TIMEOUT_SECONDS (10)
	ShutdownTimeout time.Duration // MGR_SHUTDOWN_TIMEOUT_SECONDS (15)
	StopTimeout     time.Duration // MGR_STOP_TIMEOUT_SECONDS (30): graceful guest stop before the VMM is killed
	PortStart       int           // MGR_PORT_START (20000)
	PortEnd         int           // MGR_PORT_END (40000)
	GuestCIDR       netip.Prefix  // MGR_GUEST_CIDR (172.30.0.0/24)
	BaseAssetsDir   string        // MGR_BASE_ASSETS_DIR (<data>/base/current)
	ImagesRoot      string        // MGR_IMAGES_ROOT (<data>/images)
	DefaultKernel   string        // MGR_DEFAULT_KERNEL (<base>/vmlinux)
	DefaultInitrd   string        // MGR_DEFAULT_INITRD (<base>/initrd.img, used when present)
	DefaultRootfs   string        // MGR_DEFAULT_ROOTFS (<base>/golden-rootfs.ext4)
	DefaultAgent    string        // MGR_DEFAULT_AGENT_DISK (<base>/agent-rootfs.ext4)
	DefaultEnvDisk  string        // MGR_DEFAULT_ENV_DISK (empty)
	DiskRoots       []string      // MGR_DISK_ROOTS: extra directories disks may come from (':'-separated)
	VMM             string        // MGR_VMM (firecracker when its binary exists, else qemu)
	Supervisor      string        // MGR_SUPERVISOR (systemd when PID 1 is systemd, else detached)
	LifecycleBin    string        // MGR_LIFECYCLE_BIN (mergen-lifecycle next to the daemon, else on PATH)
	DaemonLogFile   string        // MGN_DAEMON_LOG_FILE (<data>/daemon.log)
	LogLevel        string        // MGR_LOG_LEVEL (info)
	LogFormat       string        // MGR_LOG_FORMAT (console)
}

// Load reads the configuration from the process environment.
func Load() (Config, error) { return FromEnv(os.Getenv) }

// FromEnv reads the configuration through getenv (for tests).
func FromEnv(getenv func(string) string) (Config, error) {
	r := reader{getenv: getenv}
	c := Config{
		HTTPAddr:        r.str("MGR_HTTP_ADDR", ":8080"),
		ConfigRoot:      r.path("MGR_CONFIG_ROOT", "/var/lib/mergen/vm.d"),
		DataRoot:        r.path("MGR_DATA_ROOT", "/var/lib/mergen"),
		RunRoot:         r.path("MGR_RUN_ROOT", "/run/mergen"),
		UnitPrefix:      r.str("MGR_UNIT_PREFIX", "mergen"),
		SystemctlPath:   r.str("MGR_SYSTEMCTL_PATH", "systemctl"),
		CommandTimeout:  r.seconds("MGR_COMMAND_TIMEOUT_SECONDS", 10),
		ShutdownTimeout: r.seconds("MGR_SHUTDOWN_TIMEOUT_SECONDS", 15),
		StopTimeout:     r.seconds("MGR_STOP_TIMEOUT_SECONDS", 30),
		PortStart:       r.port("MGR_PORT_START", 20000),
		PortEnd:         r.port("MGR_PORT_END", 40000),
		VMM:             r.oneOf("MGR_VMM", "", "firecracker", "qemu"),
		Supervisor:      r.oneOf("MGR_SUPERVISOR", "", "systemd", "detached"),
		LogLevel:        r.oneOf("MGR_LOG_LEVEL", "info", logging.Levels...),
		LogFormat:       r.oneOf("MGR_LOG_FORMAT", "console", logging.Formats...),
	}
	c.GlobalHooksDir = r.path("MGR_GLOBAL_HOOKS_DIR", filepath.Join(c.DataRoot, "hooks.d"))
	c.BaseAssetsDir = r.path("MGR_BASE_ASSETS_DIR", filepath.Join(c.DataRoot, "base", "current"))
	c.ImagesRoot = r.path("MGR_IMAGES_ROOT", filepath.Join(c.DataRoot, "images"))
	c.DefaultKernel = r.path("MGR_DEFAULT_KERNEL", filepath.Join(c.BaseAssetsDir, "vmlinux"))
	c.DefaultInitrd = r.optionalPath("MGR_DEFAULT_INITRD", filepath.Join(c.BaseAssetsDir, "initrd.img"))
	c.DefaultRootfs = r.path("MGR_DEFAULT_ROOTFS", filepath.Join(c.BaseAssetsDir, "golden-rootfs.ext4"))
	c.DefaultAgent = r.optionalPath("MGR_DEFAULT_AGENT_DISK", filepath.Join(c.BaseAssetsDir, "agent-rootfs.ext4"))
	c.DefaultEnvDisk = r.optionalPath("MGR_DEFAULT_ENV_DISK", "")
	c.DaemonLogFile = r.path("MGN_DAEMON_LOG_FILE", filepath.Join(c.DataRoot, "daemon.log"))
	c.LifecycleBin = r.str("MGR_LIFECYCLE_BIN", defaultLifecycleBin())
	c.DiskRoots = r.pathList("MGR_DISK_ROOTS")

	if cidr := r.str("MGR_GUEST_CIDR", "172.30.0.0/24"); cidr != "" {
		p, err := netip.ParsePrefix(cidr)
		switch {
		case err != nil:
			r.fail("MGR_GUEST_CIDR", "%q is not a CIDR (want e.g. 172.30.0.0/24)", cidr)
		case !p.Addr().Is4():
			r.fail("MGR_GUEST_CIDR", "%q: only IPv4 guest networks are supported", cidr)
		case p.Bits() > 29 || p.Bits() < 8:
			r.fail("MGR_GUEST_CIDR", "%q: prefix length must be between /8 and /29", cidr)
		case p.Masked() != p:
			r.fail("MGR_GUEST_CIDR", "%q has host bits set (did you mean %s?)", cidr, p.Masked())
		default:
			c.GuestCIDR = p
		}
	}
	if c.PortStart > c.PortEnd {
		r.fail("MGR_PORT_START", "%d is above MGR_PORT_END %d", c.PortStart, c.PortEnd)
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		r.fail("MGR_HTTP_ADDR", "%q is not host:port (%v)", c.HTTPAddr, err)
	}
	if c.UnitPrefix == "" || strings.ContainsAny(c.UnitPrefix, "@/ \t") {
		r.fail("MGR_UNIT_PREFIX", "%q is not a valid unit name prefix", c.UnitPrefix)
	}
	return c, errors.Join(r.errs...)
}

// AllowedDiskRoots are the directories a VM's disks and kernel may come from:
// the data root (which holds base assets, images and per-VM data), the base
// assets dir and images root when configured elsewhere, and MGR_DISK_ROOTS.
func (c Config) AllowedDiskRoots() []string {
	roots := []string{c.DataRoot, c.BaseAssetsDir, c.ImagesRoot}
	return append(roots, c.DiskRoots...)
}

func defaultLifecycleBin() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "mergen-lifecycle")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "mergen-lifecycle"
}

type reader struct {
	getenv func(string) string
	errs   []error
}

func (r *reader) fail(name, format string, a ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s: "+format, append([]any{name}, a...)...))
}

func (r *reader) str(name, def string) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

func (r *reader) path(name, def string) string {
	v := r.str(name, def)
	if !filepath.IsAbs(v) {
		r.fail(name, "%q must be an absolute path", v)
	}
	return filepath.Clean(v)
}

func (r *reader) optionalPath(name, def string) string {
	v := r.str(name, def)
	if v == "" {
		return ""
	}
	if !filepath.IsAbs(v) {
		r.fail(name, "%q must be an absolute path", v)
	}
	return filepath.Clean(v)
}

func (r *reader) pathList(name string) []string {
	var out []string
	for _, p := range strings.Split(r.getenv(name), ":") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if !filepath.IsAbs(p) {
			r.fail(name, "%q must be an absolute path", p)
			continue
		}
		out = append(out, filepath.Clean(p))
	}
	return out
}

func (r *reader) int(name string, def, min, max int) int {
	v := r.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.fail(name, "%q is not an integer", v)
		return def
	}
	if n < min || n > max {
		r.fail(name, "%d is out of range %d..%d", n, min, max)
		return def
	}
	return n
}

func (r *reader) port(name string, def int) int { return r.int(name, def, 1, 65535) }

func (r *reader) seconds(name string, def int) time.Duration {
	return time.Duration(r.int(name, def, 1, 86400)) * time.Second
}

func (r *reader) oneOf(name, def string, allowed ...string) string {
	v := strings.ToLower(r.str(name, def))
	if v == def {
		return v
	}
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	r.fail(name, "%q is not one of %s", v, strings.Join(allowed, "|"))
	return def
}
