package config

import (
	"strings"
	"testing"
	"time"
)

func TestForwarderDefaults(t *testing.T) {
	c, err := ForwarderFromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]string{
		"ConfigRoot":  {c.ConfigRoot, "/var/lib/mergen/vm.d"},
		"NetnsRoot":   {c.NetnsRoot, "/run/netns"},
		"Domain":      {c.Domain, ""},
		"DomainName":  {c.DomainName(), "localhost"},
		"CertFile":    {c.CertFile, "/var/lib/mergen/certs/wildcard.localhost.crt"},
		"KeyFile":     {c.KeyFile, "/var/lib/mergen/certs/wildcard.localhost.key"},
		"HTTPSAddr":   {c.HTTPSAddr, ":443"},
		"MetricsAddr": {c.MetricsAddr, "127.0.0.1:9109"},
		"LogLevel":    {c.LogLevel, "debug"},
		"LogFormat":   {c.LogFormat, "console"},
	}
	for name, got := range checks {
		if got[0] != got[1] {
			t.Errorf("%s = %q, want %q", name, got[0], got[1])
		}
	}
	durations := map[string][2]time.Duration{
		"DialTimeout":      {c.DialTimeout, 5 * time.Second},
		"ResolverTTL":      {c.ResolverTTL, 5 * time.Second},
		"ShutdownTimeout":  {c.ShutdownTimeout, 15 * time.Second},
		"HandshakeTimeout": {c.HandshakeTimeout, 10 * time.Second},
		"IdleTimeout":      {c.IdleTimeout, 300 * time.Second},
		"MaxConnDuration":  {c.MaxConnDuration, 24 * time.Hour},
	}
	for name, got := range durations {
		if got[0] != got[1] {
			t.Errorf("%s = %v, want %v", name, got[0], got[1])
		}
	}
}

func TestForwarderSettings(t *testing.T) {
	c, err := ForwarderFromEnv(env(map[string]string{
		"FWD_METRICS_ADDR":         "off",
		"FWD_DIAL_TIMEOUT_SECONDS": "0.25",
		"FWD_MAX_CONN_SECONDS":     "3600",
		"FWD_TLS_CERT_FILE":        "/etc/fwd/c.pem",
		"FWD_TLS_KEY_FILE":         "/etc/fwd/k.pem",
		"FWD_LOG_LEVEL":            "WARN",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MetricsAddr != "" || c.DialTimeout != 250*time.Millisecond || c.MaxConnDuration != time.Hour ||
		c.CertFile != "/etc/fwd/c.pem" || c.KeyFile != "/etc/fwd/k.pem" || c.LogLevel != "warn" {
		t.Errorf("settings not taken: %+v", c)
	}
}

// The domain is FWD_DOMAIN, or the older prefix/suffix pair; the default
// certificate and key are named after it.
func TestForwarderDomainForms(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"FWD_DOMAIN_SUFFIX": "localhost"}, "localhost"},
		{map[string]string{"FWD_DOMAIN_PREFIX": "vm", "FWD_DOMAIN_SUFFIX": "example.com"}, "vm.example.com"},
		{map[string]string{"FWD_DOMAIN_PREFIX": ".VM.", "FWD_DOMAIN_SUFFIX": " Example.com. "}, "vm.example.com"},
		{map[string]string{"FWD_DOMAIN_PREFIX": "vm"}, "vm.localhost"},
		// FWD_DOMAIN, the newest form, wins over the pair.
		{map[string]string{"FWD_DOMAIN": "VM.Example.com.", "FWD_DOMAIN_PREFIX": "x", "FWD_DOMAIN_SUFFIX": "y.z"}, "vm.example.com"},
	}
	for _, tc := range cases {
		c, err := ForwarderFromEnv(env(tc.env))
		if err != nil {
			t.Errorf("env %v: %v", tc.env, err)
			continue
		}
		if c.DomainName() != tc.want {
			t.Errorf("env %v: domain %q, want %q", tc.env, c.DomainName(), tc.want)
		}
		wantCert := "/var/lib/mergen/certs/wildcard." + tc.want + ".crt"
		wantKey := "/var/lib/mergen/certs/wildcard." + tc.want + ".key"
		if c.CertFile != wantCert || c.KeyFile != wantKey {
			t.Errorf("env %v: cert %q key %q, want %q and %q", tc.env, c.CertFile, c.KeyFile, wantCert, wantKey)
		}
	}
}

func TestForwarderInvalidSettingsNameTheVariable(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"FWD_DIAL_TIMEOUT_SECONDS": "soon"}, `FWD_DIAL_TIMEOUT_SECONDS: "soon" is not a number of seconds between 0.001 and 604800`},
		{map[string]string{"FWD_RESOLVER_CACHE_TTL_SECONDS": "-1"}, "FWD_RESOLVER_CACHE_TTL_SECONDS"},
		{map[string]string{"FWD_SHUTDOWN_TIMEOUT_SECONDS": "1e9"}, "FWD_SHUTDOWN_TIMEOUT_SECONDS"},
		{map[string]string{"FWD_HANDSHAKE_TIMEOUT_SECONDS": "0"}, "FWD_HANDSHAKE_TIMEOUT_SECONDS"},
		{map[string]string{"FWD_IDLE_TIMEOUT_SECONDS": "0"}, "FWD_IDLE_TIMEOUT_SECONDS"},
		{map[string]string{"FWD_MAX_CONN_SECONDS": "NaN"}, "FWD_MAX_CONN_SECONDS"},
		{map[string]string{"FWD_CONFIG_ROOT": "vm.d"}, `FWD_CONFIG_ROOT: "vm.d" must be an absolute path`},
		{map[string]string{"FWD_NETNS_ROOT": "netns"}, "FWD_NETNS_ROOT"},
		{map[string]string{"FWD_TLS_CERT_FILE": "c.pem"}, "FWD_TLS_CERT_FILE"},
		{map[string]string{"FWD_TLS_KEY_FILE": "k.pem"}, "FWD_TLS_KEY_FILE"},
		{map[string]string{"FWD_HTTPS_ADDR": "443"}, "FWD_HTTPS_ADDR"},
		{map[string]string{"FWD_METRICS_ADDR": "9109"}, "FWD_METRICS_ADDR"},
		{map[string]string{"FWD_LOG_LEVEL": "chatty"}, `FWD_LOG_LEVEL: "chatty" is not one of debug|info|warn|error`},
		{map[string]string{"FWD_LOG_FORMAT": "xml"}, "FWD_LOG_FORMAT"},
	}
	for _, tc := range cases {
		_, err := ForwarderFromEnv(env(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("env %v: error %v, want it to contain %q", tc.env, err, tc.want)
		}
	}

	_, err := ForwarderFromEnv(env(map[string]string{"FWD_IDLE_TIMEOUT_SECONDS": "x", "FWD_LOG_FORMAT": "y"}))
	if err == nil || !strings.Contains(err.Error(), "FWD_IDLE_TIMEOUT_SECONDS") || !strings.Contains(err.Error(), "FWD_LOG_FORMAT") {
		t.Errorf("want both variables named at once, got %v", err)
	}
}
