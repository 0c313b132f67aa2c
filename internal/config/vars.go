package config

// Var is one environment variable that a mergen program reads. Vars is the
// single table of names and defaults: every reader in this package takes
// its default from here, and the documentation test checks that every name
// is documented.
type Var struct {
	Name string
	// Default applies when the variable is unset or blank. ${NAME} refers
	// to the resolved value of another variable, so derived defaults follow
	// their roots.
	Default string
	// Programs that read it: daemon (mergen server, mergend), lifecycle
	// (mergen-lifecycle), cli (mergen's client commands), converter
	// (mergen-converter), forwarder (mergen-forwarder).
	Programs string
}

// Vars lists every variable, grouped by what it configures.
var Vars = []Var{
	// Daemon and lifecycle stages: the host's layout.
	{"MGR_HTTP_ADDR", "127.0.0.1:8080", "daemon"},
	{"MGR_API_SOCKET", "${MGR_RUN_ROOT}/mergen.sock", "daemon cli"},
	{"MGR_API_TOKEN_FILE", "/etc/mergen/api-token", "daemon cli"},
	{"MGR_API_AUTH", "token", "daemon"},
	{"MGR_API_ALLOWED_ORIGINS", "", "daemon"},
	{"MGR_ALLOW_VM_COMMAND_HOOKS", "", "daemon"},
	{"MGR_CONFIG_ROOT", "/var/lib/mergen/vm.d", "daemon lifecycle"},
	{"MGR_DATA_ROOT", "/var/lib/mergen", "daemon lifecycle cli converter"},
	{"MGR_RUN_ROOT", "/run/mergen", "daemon lifecycle"},
	{"MGR_GLOBAL_HOOKS_DIR", "${MGR_DATA_ROOT}/hooks.d", "daemon"},
	{"MGR_BASE_ASSETS_DIR", "${MGR_DATA_ROOT}/base/current", "daemon cli converter"},
	{"MGR_IMAGES_ROOT", "${MGR_DATA_ROOT}/images", "daemon cli converter"},
	{"MGR_DEFAULT_KERNEL", "${MGR_BASE_ASSETS_DIR}/vmlinux", "daemon"},
	{"MGR_DEFAULT_INITRD", "${MGR_BASE_ASSETS_DIR}/initrd.img", "daemon"},
	{"MGR_DEFAULT_ROOTFS", "${MGR_BASE_ASSETS_DIR}/golden-rootfs.ext4", "daemon"},
	{"MGR_DEFAULT_AGENT_DISK", "${MGR_BASE_ASSETS_DIR}/agent-rootfs.ext4", "daemon"},
	{"MGR_DEFAULT_ENV_DISK", "", "daemon"},
	{"MGR_DISK_ROOTS", "", "daemon"},
	{"MGR_VOLUMES_DIR", "${MGR_DATA_ROOT}/volumes", "daemon"},
	{"MGR_CONSOLE_LOG_MAX_BYTES", "67108864", "daemon lifecycle"},
	{"MGR_GUEST_HOST_PORTS", "", "daemon lifecycle"},
	{"MGR_VMM_UID_RANGE", "2000000-2065535", "daemon"},
	{"MGN_DAEMON_LOG_FILE", "${MGR_DATA_ROOT}/daemon.log", "daemon lifecycle"},

	// Daemon behaviour.
	{"MGR_UNIT_PREFIX", "mergen", "daemon lifecycle"},
	{"MGR_SYSTEMCTL_PATH", "systemctl", "daemon"}, // accepted, unused: units are driven over D-Bus
	{"PATH", "", "daemon"},                        // handed on to the lifecycle stages
	{"MGR_COMMAND_TIMEOUT_SECONDS", "10", "daemon lifecycle"},
	{"MGR_SHUTDOWN_TIMEOUT_SECONDS", "15", "daemon"},
	{"MGR_STOP_TIMEOUT_SECONDS", "30", "daemon lifecycle"},
	{"MGR_PORT_START", "20000", "daemon"},
	{"MGR_PORT_END", "40000", "daemon"},
	{"MGR_GUEST_CIDR", "172.30.0.0/24", "daemon lifecycle"},
	{"MGR_SUPERVISOR", "", "daemon lifecycle"},
	{"MGR_LIFECYCLE_BIN", "", "daemon lifecycle"},
	{"MGR_LOG_LEVEL", "info", "daemon lifecycle"},
	{"MGR_LOG_FORMAT", "console", "daemon lifecycle"},

	// The VMM driver: read by the daemon at create and stored in the VM's
	// record; the stages use the record, not these.
	{"MGR_VMM", "", "daemon"},
	{"MGR_FIRECRACKER_BIN", "", "daemon"},
	{"MGR_JAILER", "", "daemon"},
	{"MGR_JAILER_BIN", "", "daemon"},
	{"MGR_JAILER_UID", "", "daemon"},
	{"MGR_JAILER_GID", "", "daemon"},
	{"MGR_JAILER_CHROOT_BASE", "", "daemon"},
	{"MGR_VSOCK", "1", "daemon"}, // Firecracker's vsock device, the guest agent's channel; 0 turns it off
	{"MGR_QEMU_BIN", "", "daemon"},
	{"MGR_QEMU_MACHINE", "", "daemon"},
	{"MGR_QEMU_ACCEL", "", "daemon"},
	{"MGN_ENABLE_ENTROPY_DEVICE", "", "daemon"},

	// Lifecycle stage extensions (';'-separated shell commands).
	{"MGN_LIFECYCLE_PRE_START_HOOKS", "", "lifecycle"},
	{"MGN_LIFECYCLE_POST_START_HOOKS", "", "lifecycle"},
	{"MGN_LIFECYCLE_PRE_STOP_HOOKS", "", "lifecycle"},
	{"MGN_LIFECYCLE_POST_STOP_HOOKS", "", "lifecycle"},
	{"MGN_LIFECYCLE_PRE_DELETE_HOOKS", "", "lifecycle"},
	{"MGN_LIFECYCLE_DELETE_HOOKS", "", "lifecycle"},
	{"MGN_LIFECYCLE_POST_DELETE_HOOKS", "", "lifecycle"},
	{"MGN_LIFECYCLE_HOOK_TIMEOUT_SECONDS", "60", "lifecycle"},

	// Command-line programs.
	{"MERGEN_API", "", "cli"},
	{"MERGEN_API_TOKEN", "", "cli"},
	{"MERGEN_CONFIG_FILE", "", "cli converter"},
	{"MGR_PROGRESS_EVERY_MILLISECONDS", "250", "cli converter"},
	{"DOCKER_CONFIG", "", "cli converter"},
	{"KUBECONFIG", "", "cli"},        // mergen-node: the node's Kubernetes credentials
	{"MGR_BASE_PLATFORM", "", "cli"}, // empty: linux-<GOARCH> of the running program
	{"MGR_BASE_FLAVOR", "buildroot", "cli"},

	// S3 profile overrides (see docs/artifacts.md).
	{"MGR_CONFIG_S3_ENDPOINT", "", "cli converter"},
	{"MGR_CONFIG_S3_REGION", "", "cli converter"},
	{"MGR_CONFIG_S3_BUCKET", "", "cli converter"},
	{"MGR_CONFIG_S3_PREFIX", "", "cli converter"},
	{"MGR_CONFIG_S3_USERNAME", "", "cli converter"},
	{"MGR_CONFIG_S3_ACCESS_KEY_ID", "", "cli converter"},
	{"MGR_CONFIG_S3_SECRET_ACCESS_KEY", "", "cli converter"},
	{"MGR_CONFIG_S3_SESSION_TOKEN", "", "cli converter"},
	{"MGR_CONFIG_S3_USE_PATH_STYLE", "", "cli converter"},

	// The forwarder.
	{"FWD_CONFIG_ROOT", "/var/lib/mergen/vm.d", "forwarder"},
	{"FWD_NETNS_ROOT", "/run/netns", "forwarder"},
	{"FWD_HTTPS_ADDR", ":443", "forwarder cli"},
	{"FWD_METRICS_ADDR", "127.0.0.1:9109", "forwarder"},
	{"FWD_DOMAIN", "", "forwarder cli"},
	{"FWD_DOMAIN_PREFIX", "", "forwarder"},
	{"FWD_DOMAIN_SUFFIX", "localhost", "forwarder"},
	{"FWD_TLS_CERT_FILE", "", "forwarder"},
	{"FWD_TLS_KEY_FILE", "", "forwarder"},
	{"FWD_DIAL_TIMEOUT_SECONDS", "5", "forwarder"},
	{"FWD_RESOLVER_CACHE_TTL_SECONDS", "5", "forwarder"},
	{"FWD_SHUTDOWN_TIMEOUT_SECONDS", "15", "forwarder"},
	{"FWD_HANDSHAKE_TIMEOUT_SECONDS", "10", "forwarder"},
	{"FWD_IDLE_TIMEOUT_SECONDS", "300", "forwarder"},
	{"FWD_MAX_CONN_SECONDS", "86400", "forwarder"},
	{"FWD_MAX_CONNS", "10000", "forwarder"},
	{"FWD_MAX_CONNS_PER_IP", "256", "forwarder"},
	{"FWD_LOG_LEVEL", "debug", "forwarder"},
	{"FWD_LOG_FORMAT", "console", "forwarder"},
	{"FWD_LABEL_TAGS", "name,app", "forwarder daemon"},
}

var varIndex = func() map[string]Var {
	m := make(map[string]Var, len(Vars))
	for _, v := range Vars {
		if _, dup := m[v.Name]; dup {
			panic("config: variable listed twice: " + v.Name)
		}
		m[v.Name] = v
	}
	return m
}()
