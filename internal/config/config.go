// Package config is the one reader of the environment for every mergen
// program: the daemon and the lifecycle stages (MGR_*, MGN_*), the CLI and
// the converter (MERGEN_*, MGR_CONFIG_S3_*, MGR_PROGRESS_*), and the
// forwarder (FWD_*). Names and defaults live in one table (Vars); each
// loader validates everything at once, so a misconfigured program refuses
// to start with a message naming every variable that is wrong instead of
// failing later in the middle of a request.
//
// Nothing else in the module calls os.Getenv (the guest's init aside, which
// runs in another world); a test enforces it.
package config

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/logging"
)

// Source looks a variable up; os.Getenv in the programs, a map in tests.
type Source func(string) string

// Env is the process environment.
func Env() Source { return os.Getenv }

// GOGCSet reports whether Go's own GOGC is set: a program that picks its
// collector's target leaves the operator's alone.
func GOGCSet(getenv Source) bool { return getenv("GOGC") != "" }

// GOMAXPROCSSet reports whether Go's own GOMAXPROCS is set: a program that
// picks its number of Ps leaves the operator's alone.
func GOMAXPROCSSet(getenv Source) bool { return getenv("GOMAXPROCS") != "" }

// Config is the configuration of the daemon and the lifecycle stages.
// Field comments name the variable; Vars has the defaults.
type Config struct {
	HTTPAddr        string        // MGR_HTTP_ADDR: TCP listener; every request but health needs a token
	APISocket       string        // MGR_API_SOCKET: unix socket listener; its file permissions are the boundary
	APITokenFile    string        // MGR_API_TOKEN_FILE: bearer tokens, one per line; created with one random token when missing
	APIAuth         string        // MGR_API_AUTH: token, or none (loopback MGR_HTTP_ADDR only)
	AllowedOrigins  []string      // MGR_API_ALLOWED_ORIGINS: browser origins allowed to call the API (comma-separated)
	AllowVMCommands bool          // MGR_ALLOW_VM_COMMAND_HOOKS: accept command hooks in API requests
	LabelTags       []string      // FWD_LABEL_TAGS: tag keys whose values are forwarder labels, unique across VMs
	ConfigRoot      string        // MGR_CONFIG_ROOT
	DataRoot        string        // MGR_DATA_ROOT
	RunRoot         string        // MGR_RUN_ROOT
	GlobalHooksDir  string        // MGR_GLOBAL_HOOKS_DIR
	UnitPrefix      string        // MGR_UNIT_PREFIX
	SystemctlPath   string        // MGR_SYSTEMCTL_PATH: accepted for old env files, unused (units are driven over D-Bus)
	SearchPath      string        // PATH: where the daemon finds tools; the stages get the same
	CommandTimeout  time.Duration // MGR_COMMAND_TIMEOUT_SECONDS
	ShutdownTimeout time.Duration // MGR_SHUTDOWN_TIMEOUT_SECONDS
	StopTimeout     time.Duration // MGR_STOP_TIMEOUT_SECONDS: graceful guest stop before the VMM is killed
	PortStart       int           // MGR_PORT_START
	PortEnd         int           // MGR_PORT_END
	GuestCIDR       netip.Prefix  // MGR_GUEST_CIDR
	BaseAssetsDir   string        // MGR_BASE_ASSETS_DIR
	ImagesRoot      string        // MGR_IMAGES_ROOT
	DefaultKernel   string        // MGR_DEFAULT_KERNEL
	DefaultInitrd   string        // MGR_DEFAULT_INITRD (used when present)
	DefaultRootfs   string        // MGR_DEFAULT_ROOTFS
	DefaultAgent    string        // MGR_DEFAULT_AGENT_DISK (used when present)
	DefaultEnvDisk  string        // MGR_DEFAULT_ENV_DISK
	DiskRoots       []string      // MGR_DISK_ROOTS: extra directories disks may come from (':'-separated)
	VolumesDir      string        // MGR_VOLUMES_DIR: writable data disks of VMs
	ConsoleLogMax   int64         // MGR_CONSOLE_LOG_MAX_BYTES: a VM's console log is rotated past this size
	GuestHostPorts  []string      // MGR_GUEST_HOST_PORTS: host ports guests may reach ("53/udp", "8443/tcp"); none by default
	VMMUIDs         IDRange       // MGR_VMM_UID_RANGE: each VM's VMM runs as its own uid/gid from this range
	VMM             string        // MGR_VMM: empty means firecracker when its binary exists, else qemu
	Driver          Driver        // MGR_FIRECRACKER_BIN, MGR_JAILER*, MGR_VSOCK, MGR_QEMU_*, MGN_ENABLE_ENTROPY_DEVICE
	Supervisor      string        // MGR_SUPERVISOR: empty means systemd when PID 1 is systemd, else detached
	LifecycleBin    string        // MGR_LIFECYCLE_BIN: default mergen-lifecycle next to the running program, else on PATH
	DaemonLogFile   string        // MGN_DAEMON_LOG_FILE
	StageHooks      StageHooks    // MGN_LIFECYCLE_*
	LogLevel        string        // MGR_LOG_LEVEL
	LogFormat       string        // MGR_LOG_FORMAT
}

// Driver are the VMM driver settings of this host. The daemon resolves them
// at create and stores them in the VM's record, so the stages that launch
// the VMM use what create decided, whatever the host's environment says
// later.
type Driver struct {
	FirecrackerBin string `json:"firecrackerBin,omitempty"` // MGR_FIRECRACKER_BIN; empty: firecracker on PATH
	Jailer         bool   `json:"jailer,omitempty"`         // MGR_JAILER=1, or unset and a jailer binary found (see JailerAuto)
	JailerAuto     bool   `json:"-"`                        // MGR_JAILER unset: the jailer is used when its binary is found (decided at create)
	JailerBin      string `json:"jailerBin,omitempty"`      // MGR_JAILER_BIN; empty: jailer on PATH
	JailerUID      string `json:"jailerUID,omitempty"`      // MGR_JAILER_UID
	JailerGID      string `json:"jailerGID,omitempty"`      // MGR_JAILER_GID
	ChrootBase     string `json:"chrootBase,omitempty"`     // MGR_JAILER_CHROOT_BASE; empty: <run dir>/jail
	Vsock          bool   `json:"vsock,omitempty"`          // MGR_VSOCK: on unless 0 (Firecracker's vsock device, the guest agent's channel)
	QEMUBin        string `json:"qemuBin,omitempty"`        // MGR_QEMU_BIN; empty: qemu-system-x86_64 on PATH
	QEMUMachine    string `json:"qemuMachine,omitempty"`    // MGR_QEMU_MACHINE: q35 (default) or microvm
	QEMUAccel      string `json:"qemuAccel,omitempty"`      // MGR_QEMU_ACCEL: auto (default), kvm or tcg
	Entropy        bool   `json:"entropy,omitempty"`        // MGN_ENABLE_ENTROPY_DEVICE
}

// IDRange is an inclusive range of uids (and the gids of the same numbers).
type IDRange struct{ Start, End int }

// MinVMMUID is the lowest uid MGR_VMM_UID_RANGE may start at: below it lie
// the system's and its users' accounts (login.defs hands out up to 60000;
// 65534 is nobody).
const MinVMMUID = 100000

// idRange reads START-END, with MinVMMUID <= START <= END < 2^31-1.
func (r *reader) idRange(name string) IDRange {
	v := r.str(name)
	a, b, ok := strings.Cut(v, "-")
	start, err1 := strconv.Atoi(strings.TrimSpace(a))
	end, err2 := strconv.Atoi(strings.TrimSpace(b))
	switch {
	case !ok || err1 != nil || err2 != nil:
		r.fail(name, "%q is not a range START-END of numeric ids", v)
	case start < MinVMMUID:
		r.fail(name, "%q starts below %d, among the system's and users' own ids", v, MinVMMUID)
	case end < start || end >= 1<<31-1:
		r.fail(name, "%q: END must be at least START and below 2147483647", v)
	default:
		return IDRange{start, end}
	}
	return IDRange{}
}

// StageHooks are the lifecycle stage extensions given in the environment:
// per stage key (preStart, …) the ';'-separated shell commands of
// MGN_LIFECYCLE_<STAGE>_HOOKS, and the timeout of each hook.
type StageHooks struct {
	Commands map[string]string // stage key → raw list
	Timeout  time.Duration     // MGN_LIFECYCLE_HOOK_TIMEOUT_SECONDS
}

// StageHookKeys are the stage keys that take extensions, in stage order.
var StageHookKeys = []string{"preStart", "postStart", "preStop", "postStop", "preDelete", "delete", "postDelete"}

// StageHookVar is the variable of a stage key: preStart →
// MGN_LIFECYCLE_PRE_START_HOOKS.
func StageHookVar(key string) string {
	var b strings.Builder
	for i, r := range key {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return "MGN_LIFECYCLE_" + strings.ToUpper(b.String()) + "_HOOKS"
}

// MaxStageHookTimeout caps MGN_LIFECYCLE_HOOK_TIMEOUT_SECONDS: a stage hook
// may drain or back up a VM, but a unit must never hang on one forever.
const MaxStageHookTimeout = time.Hour

// Load reads the configuration from the process environment.
func Load() (Config, error) { return FromEnv(Env()) }

// FromEnv reads the configuration through getenv.
func FromEnv(getenv Source) (Config, error) {
	r := newReader(getenv)
	c := Config{
		HTTPAddr:        r.str("MGR_HTTP_ADDR"),
		APISocket:       r.path("MGR_API_SOCKET"),
		APITokenFile:    r.path("MGR_API_TOKEN_FILE"),
		APIAuth:         r.oneOf("MGR_API_AUTH", "token", "none"),
		AllowedOrigins:  r.list("MGR_API_ALLOWED_ORIGINS"),
		AllowVMCommands: r.boolean("MGR_ALLOW_VM_COMMAND_HOOKS"),
		LabelTags:       r.labelTags("FWD_LABEL_TAGS"),
		ConfigRoot:      r.path("MGR_CONFIG_ROOT"),
		DataRoot:        r.path("MGR_DATA_ROOT"),
		RunRoot:         r.path("MGR_RUN_ROOT"),
		GlobalHooksDir:  r.path("MGR_GLOBAL_HOOKS_DIR"),
		UnitPrefix:      r.str("MGR_UNIT_PREFIX"),
		SystemctlPath:   r.str("MGR_SYSTEMCTL_PATH"),
		SearchPath:      r.str("PATH"),
		CommandTimeout:  r.seconds("MGR_COMMAND_TIMEOUT_SECONDS", 1, 86400),
		ShutdownTimeout: r.seconds("MGR_SHUTDOWN_TIMEOUT_SECONDS", 1, 86400),
		StopTimeout:     r.seconds("MGR_STOP_TIMEOUT_SECONDS", 1, 86400),
		PortStart:       r.port("MGR_PORT_START"),
		PortEnd:         r.port("MGR_PORT_END"),
		BaseAssetsDir:   r.path("MGR_BASE_ASSETS_DIR"),
		ImagesRoot:      r.path("MGR_IMAGES_ROOT"),
		DefaultKernel:   r.path("MGR_DEFAULT_KERNEL"),
		DefaultInitrd:   r.optionalPath("MGR_DEFAULT_INITRD"),
		DefaultRootfs:   r.path("MGR_DEFAULT_ROOTFS"),
		DefaultAgent:    r.optionalPath("MGR_DEFAULT_AGENT_DISK"),
		DefaultEnvDisk:  r.optionalPath("MGR_DEFAULT_ENV_DISK"),
		DiskRoots:       r.pathList("MGR_DISK_ROOTS"),
		VolumesDir:      r.path("MGR_VOLUMES_DIR"),
		ConsoleLogMax:   int64(r.int("MGR_CONSOLE_LOG_MAX_BYTES", 64<<10, 1<<40)),
		GuestHostPorts:  r.portList("MGR_GUEST_HOST_PORTS"),
		VMMUIDs:         r.idRange("MGR_VMM_UID_RANGE"),
		VMM:             r.oneOf("MGR_VMM", "firecracker", "qemu"),
		Supervisor:      r.oneOf("MGR_SUPERVISOR", "systemd", "detached"),
		LifecycleBin:    r.str("MGR_LIFECYCLE_BIN"),
		DaemonLogFile:   r.path("MGN_DAEMON_LOG_FILE"),
		LogLevel:        r.oneOf("MGR_LOG_LEVEL", logging.Levels...),
		LogFormat:       r.oneOf("MGR_LOG_FORMAT", logging.Formats...),
		Driver:          readDriver(r),
		StageHooks:      readStageHooks(r),
	}
	if c.LifecycleBin == "" {
		c.LifecycleBin = defaultLifecycleBin()
	}
	c.GuestCIDR = r.guestCIDR("MGR_GUEST_CIDR")
	if c.PortStart > c.PortEnd {
		r.fail("MGR_PORT_START", "%d is above MGR_PORT_END %d", c.PortStart, c.PortEnd)
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		r.fail("MGR_HTTP_ADDR", "%q is not host:port (%v)", c.HTTPAddr, err)
	} else if c.APIAuth == "none" && !Loopback(c.HTTPAddr) {
		r.fail("MGR_API_AUTH", "none is accepted only when MGR_HTTP_ADDR is a loopback address (it is %q): anyone who reaches the API is root on this host", c.HTTPAddr)
	}
	for _, o := range c.AllowedOrigins {
		if !originRe.MatchString(o) {
			r.fail("MGR_API_ALLOWED_ORIGINS", "%q is not an origin like https://console.example.com", o)
		}
	}
	if c.UnitPrefix == "" || strings.ContainsAny(c.UnitPrefix, "@/ \t") {
		r.fail("MGR_UNIT_PREFIX", "%q is not a valid unit name prefix", c.UnitPrefix)
	}
	return c, r.err()
}

func readDriver(r *reader) Driver {
	d := Driver{
		FirecrackerBin: r.str("MGR_FIRECRACKER_BIN"),
		JailerAuto:     r.str("MGR_JAILER") == "",
		Jailer:         r.boolean("MGR_JAILER"),
		JailerBin:      r.str("MGR_JAILER_BIN"),
		JailerUID:      r.str("MGR_JAILER_UID"),
		JailerGID:      r.str("MGR_JAILER_GID"),
		ChrootBase:     r.optionalPath("MGR_JAILER_CHROOT_BASE"),
		Vsock:          r.boolean("MGR_VSOCK"),
		QEMUBin:        r.str("MGR_QEMU_BIN"),
		QEMUMachine:    r.oneOf("MGR_QEMU_MACHINE", "q35", "microvm"),
		QEMUAccel:      r.oneOf("MGR_QEMU_ACCEL", "auto", "kvm", "tcg"),
		Entropy:        r.boolean("MGN_ENABLE_ENTROPY_DEVICE"),
	}
	// The jail's ids are each VM's own (MGR_VMM_UID_RANGE) unless both of
	// these name one uid/gid for every VM.
	if (d.JailerUID == "") != (d.JailerGID == "") {
		r.fail("MGR_JAILER_UID", "MGR_JAILER_UID and MGR_JAILER_GID go together: set both, or neither to give each VM its own ids")
	}
	for _, v := range []struct{ name, val string }{{"MGR_JAILER_UID", d.JailerUID}, {"MGR_JAILER_GID", d.JailerGID}} {
		if v.val == "" {
			continue
		}
		if n, err := strconv.ParseUint(v.val, 10, 32); err != nil || n == 0 {
			r.fail(v.name, "%q is not a numeric id other than root's", v.val)
		}
	}
	return d
}

func readStageHooks(r *reader) StageHooks {
	h := StageHooks{
		Commands: map[string]string{},
		Timeout:  r.seconds("MGN_LIFECYCLE_HOOK_TIMEOUT_SECONDS", 1, int(MaxStageHookTimeout.Seconds())),
	}
	for _, k := range StageHookKeys {
		if v := r.str(StageHookVar(k)); v != "" {
			h.Commands[k] = v
		}
	}
	return h
}

// Layout is the host's file layout under the configured roots.
func (c Config) Layout() layout.Layout {
	return layout.Layout{ConfigRoot: c.ConfigRoot, RunRoot: c.RunRoot, DataRoot: c.DataRoot}
}

// AllowedDiskRoots are the directories a VM's disks and kernel may come from:
// the base assets dir, the images root, the volumes dir and MGR_DISK_ROOTS —
// never the rest of the data root (daemon state, hooks, certificates, logs,
// other VMs' data), the config root or the run root.
func (c Config) AllowedDiskRoots() []string {
	roots := []string{c.BaseAssetsDir, c.ImagesRoot, c.VolumesDir}
	return append(roots, c.DiskRoots...)
}

// NoDiskAreas are the places a VM's disks and kernel may never come from,
// whatever the allowed roots say (an operator may well list a directory
// that contains them): the config root (records, hooks.json, vm.json), the
// run root (sockets, jails), the global hooks, every VM's data directory
// (console logs), the certificates and logs under the data root, the
// forwarder's certificate directory, the jailer's chroot base, and the API
// token and daemon log files. Each is an absolute path, a directory or a
// file; a disk is refused when it is one of them or lies below one.
func (c Config) NoDiskAreas() []string {
	areas := []string{
		c.ConfigRoot, c.RunRoot, c.GlobalHooksDir,
		c.Layout().VMsDataDir(),
		filepath.Join(c.DataRoot, "certs"), filepath.Join(c.DataRoot, "logs"),
		forwarderCertDir,
		c.Driver.ChrootBase,
		c.APITokenFile, c.DaemonLogFile,
	}
	out := areas[:0]
	for _, a := range areas {
		if filepath.IsAbs(a) {
			out = append(out, filepath.Clean(a))
		}
	}
	return out
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

// DriverFromEnv reads only the driver settings through getenv: what a
// version 1 VM record left in the VM's env file. Those records were made
// when MGR_VSOCK was off unless set, so unset still means off for them:
// their vm.json has no vsock device.
func DriverFromEnv(getenv Source) (Driver, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	r := newReader(func(k string) string {
		if v := getenv(k); k != "MGR_VSOCK" || strings.TrimSpace(v) != "" {
			return v
		}
		return "0"
	})
	d := readDriver(r)
	return d, r.err()
}

// StageEnv is the host configuration the lifecycle stages need, as
// KEY=VALUE pairs: rendered into the unit templates' Environment= lines and
// given by the detached supervisor to the stages it runs, so that a stage
// reads the same configuration as the daemon. PATH goes along so the stages
// find the tools the daemon finds.
func (c Config) StageEnv() []string {
	env := []string{
		"MGR_CONFIG_ROOT=" + c.ConfigRoot,
		"MGR_RUN_ROOT=" + c.RunRoot,
		"MGR_DATA_ROOT=" + c.DataRoot,
		"MGR_GUEST_CIDR=" + c.GuestCIDR.String(),
		"MGR_UNIT_PREFIX=" + c.UnitPrefix,
		"MGR_COMMAND_TIMEOUT_SECONDS=" + strconv.Itoa(int(c.CommandTimeout.Seconds())),
		"MGR_STOP_TIMEOUT_SECONDS=" + strconv.Itoa(int(c.StopTimeout.Seconds())),
		"MGR_GLOBAL_HOOKS_DIR=" + c.GlobalHooksDir,
		"MGN_DAEMON_LOG_FILE=" + c.DaemonLogFile,
		"MGR_LOG_LEVEL=" + c.LogLevel,
		"MGR_LOG_FORMAT=" + c.LogFormat,
		"MGN_LIFECYCLE_HOOK_TIMEOUT_SECONDS=" + strconv.Itoa(int(c.StageHooks.Timeout.Seconds())),
		"MGR_CONSOLE_LOG_MAX_BYTES=" + strconv.FormatInt(c.ConsoleLogMax, 10),
	}
	if c.Supervisor != "" {
		env = append(env, "MGR_SUPERVISOR="+c.Supervisor)
	}
	for _, k := range StageHookKeys {
		if v := c.StageHooks.Commands[k]; v != "" {
			env = append(env, StageHookVar(k)+"="+v)
		}
	}
	if c.SearchPath != "" {
		env = append(env, "PATH="+c.SearchPath)
	}
	return env
}

// Loopback reports whether the host of addr (host:port) is a loopback
// address or localhost. An empty host (every interface) is not.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// originRe is a browser origin: scheme://host[:port], nothing after.
var originRe = regexp.MustCompile(`^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$`)

// RunResult is what the service manager tells the stop and post-stop
// stages about the run that ended: systemd's SERVICE_RESULT (success,
// exit-code, signal, core-dump, timeout, …), EXIT_CODE (exited, killed,
// dumped) and EXIT_STATUS (a number or a signal's name). The detached
// supervisor sets the same variables.
type RunResult struct {
	Result     string
	ExitCode   string
	ExitStatus string
}

// RunResultFrom reads the run's result through getenv.
func RunResultFrom(getenv Source) RunResult {
	return RunResult{Result: getenv("SERVICE_RESULT"), ExitCode: getenv("EXIT_CODE"), ExitStatus: getenv("EXIT_STATUS")}
}
