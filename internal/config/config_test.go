package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaultsFollowTheDocumentedLayout(t *testing.T) {
	c, err := FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]string{
		"HTTPAddr":      {c.HTTPAddr, "127.0.0.1:8080"},
		"APISocket":     {c.APISocket, "/run/mergen/mergen.sock"},
		"APITokenFile":  {c.APITokenFile, "/etc/mergen/api-token"},
		"APIAuth":       {c.APIAuth, "token"},
		"ConfigRoot":    {c.ConfigRoot, "/var/lib/mergen/vm.d"},
		"RunRoot":       {c.RunRoot, "/run/mergen"},
		"DataRoot":      {c.DataRoot, "/var/lib/mergen"},
		"GlobalHooks":   {c.GlobalHooksDir, "/var/lib/mergen/hooks.d"},
		"BaseAssetsDir": {c.BaseAssetsDir, "/var/lib/mergen/base/current"},
		"ImagesRoot":    {c.ImagesRoot, "/var/lib/mergen/images"},
		"DefaultKernel": {c.DefaultKernel, "/var/lib/mergen/base/current/vmlinux"},
		"DefaultRootfs": {c.DefaultRootfs, "/var/lib/mergen/base/current/golden-rootfs.ext4"},
		"DefaultAgent":  {c.DefaultAgent, "/var/lib/mergen/base/current/agent-rootfs.ext4"},
		"DefaultEnv":    {c.DefaultEnvDisk, ""},
		"GuestCIDR":     {c.GuestCIDR.String(), "172.30.0.0/24"},
		"UnitPrefix":    {c.UnitPrefix, "mergen"},
		"LogLevel":      {c.LogLevel, "info"},
		"LogFormat":     {c.LogFormat, "console"},
		"DaemonLog":     {c.DaemonLogFile, "/var/lib/mergen/daemon.log"},
	}
	if !c.Driver.JailerAuto || c.Driver.Jailer {
		t.Errorf("MGR_JAILER unset: JailerAuto %v, Jailer %v; want auto (on when the jailer is found)", c.Driver.JailerAuto, c.Driver.Jailer)
	}
	if c, _ := FromEnv(env(map[string]string{"MGR_JAILER": "0"})); c.Driver.JailerAuto || c.Driver.Jailer {
		t.Errorf("MGR_JAILER=0: JailerAuto %v, Jailer %v; want off", c.Driver.JailerAuto, c.Driver.Jailer)
	}
	// Firecracker VMs get the vsock device (the guest agent's channel)
	// unless MGR_VSOCK=0; a version 1 record's env file without the
	// variable was written when unset meant off, and still means it.
	if !c.Driver.Vsock {
		t.Error("MGR_VSOCK unset: Vsock off, want on")
	}
	for v, want := range map[string]bool{"0": false, "1": true, "": true} {
		if c, _ := FromEnv(env(map[string]string{"MGR_VSOCK": v})); c.Driver.Vsock != want {
			t.Errorf("MGR_VSOCK=%q: Vsock %v, want %v", v, c.Driver.Vsock, want)
		}
	}
	for v, want := range map[string]bool{"0": false, "1": true, "": false} {
		if d, err := DriverFromEnv(env(map[string]string{"MGR_VSOCK": v})); err != nil || d.Vsock != want {
			t.Errorf("version 1 env file with MGR_VSOCK=%q: Vsock %v (%v), want %v", v, d.Vsock, err, want)
		}
	}
	if c.VMMUIDs != (IDRange{2000000, 2065535}) {
		t.Errorf("VMMUIDs = %+v, want 2000000-2065535", c.VMMUIDs)
	}
	for name, got := range checks {
		if got[0] != got[1] {
			t.Errorf("%s = %q, want %q", name, got[0], got[1])
		}
	}
	if c.PortStart != 20000 || c.PortEnd != 40000 {
		t.Errorf("port range %d..%d, want 20000..40000", c.PortStart, c.PortEnd)
	}
	if c.CommandTimeout != 10*time.Second || c.ShutdownTimeout != 15*time.Second {
		t.Errorf("timeouts %v/%v, want 10s/15s", c.CommandTimeout, c.ShutdownTimeout)
	}
}

func TestDerivedDefaultsFollowTheirRoots(t *testing.T) {
	c, err := FromEnv(env(map[string]string{"MGR_DATA_ROOT": "/srv/m", "MGR_BASE_ASSETS_DIR": "/srv/base"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.ImagesRoot != "/srv/m/images" || c.DefaultKernel != "/srv/base/vmlinux" || c.GlobalHooksDir != "/srv/m/hooks.d" {
		t.Fatalf("derived paths not under their roots: %+v", c)
	}
}

func TestInvalidSettingsNameTheVariable(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"MGR_PORT_START": "abc"}, `MGR_PORT_START: "abc" is not an integer`},
		{map[string]string{"FWD_LABEL_TAGS": "name," + strings.Repeat("k", 64)}, "FWD_LABEL_TAGS: \"" + strings.Repeat("k", 64) + "\" is not a tag key"},
		{map[string]string{"MGR_PORT_END": "70000"}, "MGR_PORT_END: 70000 is out of range 1..65535"},
		{map[string]string{"MGR_PORT_START": "30000", "MGR_PORT_END": "20000"}, "MGR_PORT_START: 30000 is above MGR_PORT_END 20000"},
		{map[string]string{"MGR_GUEST_CIDR": "10.0.0.1/24"}, "MGR_GUEST_CIDR: \"10.0.0.1/24\" has host bits set"},
		{map[string]string{"MGR_GUEST_CIDR": "nope"}, "MGR_GUEST_CIDR: \"nope\" is not a CIDR"},
		{map[string]string{"MGR_GUEST_CIDR": "fd00::/64"}, "only IPv4"},
		{map[string]string{"MGR_GUEST_CIDR": "10.0.0.0/30"}, "between /8 and /29"},
		{map[string]string{"MGR_CONFIG_ROOT": "relative/dir"}, "MGR_CONFIG_ROOT: \"relative/dir\" must be an absolute path"},
		{map[string]string{"MGR_LOG_LEVEL": "chatty"}, "MGR_LOG_LEVEL: \"chatty\" is not one of debug|info|warn|error"},
		{map[string]string{"MGR_LOG_FORMAT": "xml"}, "MGR_LOG_FORMAT"},
		{map[string]string{"MGR_VMM": "kvmtool"}, "MGR_VMM: \"kvmtool\" is not one of firecracker|qemu"},
		{map[string]string{"MGR_SUPERVISOR": "runit"}, "MGR_SUPERVISOR"},
		{map[string]string{"MGR_COMMAND_TIMEOUT_SECONDS": "0"}, "MGR_COMMAND_TIMEOUT_SECONDS: 0 is out of range"},
		{map[string]string{"MGR_HTTP_ADDR": "8080"}, "MGR_HTTP_ADDR"},
		{map[string]string{"MGR_UNIT_PREFIX": "a@b"}, "MGR_UNIT_PREFIX"},
		{map[string]string{"MGR_DISK_ROOTS": "/ok:rel"}, "MGR_DISK_ROOTS: \"rel\" must be an absolute path"},
		{map[string]string{"MGR_JAILER_UID": "1234"}, "MGR_JAILER_UID and MGR_JAILER_GID go together"},
		{map[string]string{"MGR_JAILER_UID": "0", "MGR_JAILER_GID": "0"}, "other than root's"},
		{map[string]string{"MGR_VMM_UID_RANGE": "2000000"}, "MGR_VMM_UID_RANGE: \"2000000\" is not a range START-END"},
		{map[string]string{"MGR_VMM_UID_RANGE": "1000-2000"}, "starts below 100000"},
		{map[string]string{"MGR_VMM_UID_RANGE": "300000-200000"}, "END must be at least START"},
	}
	for _, tc := range cases {
		_, err := FromEnv(env(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("env %v: error %v, want it to contain %q", tc.env, err, tc.want)
		}
	}
}

func TestAllErrorsAreReportedAtOnce(t *testing.T) {
	_, err := FromEnv(env(map[string]string{"MGR_PORT_START": "x", "MGR_LOG_LEVEL": "y"}))
	if err == nil || !strings.Contains(err.Error(), "MGR_PORT_START") || !strings.Contains(err.Error(), "MGR_LOG_LEVEL") {
		t.Fatalf("want both variables named, got %v", err)
	}
}

func TestAuthNoneOnlyOnLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:8080": true, "[::1]:8080": true, "localhost:9": true, ":8080": false, "0.0.0.0:8080": false, "10.1.2.3:8080": false} {
		_, err := FromEnv(env(map[string]string{"MGR_API_AUTH": "none", "MGR_HTTP_ADDR": addr}))
		if ok && err != nil {
			t.Errorf("MGR_API_AUTH=none on %s refused: %v", addr, err)
		}
		if !ok && (err == nil || !strings.Contains(err.Error(), "MGR_API_AUTH")) {
			t.Errorf("MGR_API_AUTH=none on %s: %v, want a refusal naming MGR_API_AUTH", addr, err)
		}
	}
}

func TestOriginsAndLabelTagsAreValidated(t *testing.T) {
	c, err := FromEnv(env(map[string]string{"MGR_API_ALLOWED_ORIGINS": "https://console.example.com, http://localhost:3000"}))
	if err != nil || len(c.AllowedOrigins) != 2 || c.AllowedOrigins[1] != "http://localhost:3000" {
		t.Fatalf("origins %v, %v", c.AllowedOrigins, err)
	}
	if c.LabelTags[0] != "name" || c.LabelTags[1] != "app" || len(c.LabelTags) != 2 {
		t.Fatalf("default label tags %v, want name,app", c.LabelTags)
	}
	for k, v := range map[string]string{"MGR_API_ALLOWED_ORIGINS": "null", "FWD_LABEL_TAGS": "name,bad key"} {
		if _, err := FromEnv(env(map[string]string{k: v})); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%q: %v, want a refusal naming it", k, v, err)
		}
	}
}

// Every variable mergen reads is documented for operators: in the README
// or a page under docs/.
func TestEveryVariableIsDocumented(t *testing.T) {
	root := filepath.Join("..", "..")
	docs, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	var all strings.Builder
	for _, f := range append(docs, filepath.Join(root, "README.md")) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	for _, v := range Vars {
		if !strings.Contains(all.String(), v.Name) {
			t.Errorf("%s is read by %s but documented nowhere", v.Name, v.Programs)
		}
	}
}
