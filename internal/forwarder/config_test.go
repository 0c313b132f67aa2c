package forwarder

import (
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFromEnvDefaults(t *testing.T) {
	c, err := FromEnv(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Domain.Name != "localhost" || c.HTTPSAddr != ":443" || c.ConfigRoot != "/var/lib/mergen/vm.d" ||
		c.NetnsRoot != "/run/netns" || c.MetricsAddr != "127.0.0.1:9109" || c.DialTimeout != 5*time.Second ||
		c.ResolverTTL != 5*time.Second || c.ShutdownTimeout != 15*time.Second || c.LogLevel != "debug" || c.LogFormat != "console" ||
		c.CertFile != "/var/lib/mergen/certs/wildcard.localhost.crt" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestFromEnvDomainForms(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"FWD_DOMAIN_SUFFIX": "localhost"}, "localhost"},
		{map[string]string{"FWD_DOMAIN_PREFIX": "vm", "FWD_DOMAIN_SUFFIX": "example.com"}, "vm.example.com"},
		// FWD_DOMAIN, the newest form, wins over the pair.
		{map[string]string{"FWD_DOMAIN": "vm.example.com", "FWD_DOMAIN_PREFIX": "x", "FWD_DOMAIN_SUFFIX": "y.z"}, "vm.example.com"},
	}
	for _, c := range cases {
		got, err := FromEnv(envOf(c.env))
		if err != nil || got.Domain.Name != c.want {
			t.Errorf("FromEnv(%v) domain = %q, %v; want %q", c.env, got.Domain.Name, err, c.want)
		}
	}
}

func TestFromEnvRejects(t *testing.T) {
	cases := map[string]string{
		"FWD_DIAL_TIMEOUT_SECONDS":       "soon",
		"FWD_RESOLVER_CACHE_TTL_SECONDS": "-1",
		"FWD_SHUTDOWN_TIMEOUT_SECONDS":   "1e9",
		"FWD_IDLE_TIMEOUT_SECONDS":       "0",
		"FWD_DOMAIN":                     "bad domain",
		"FWD_DOMAIN_SUFFIX":              "a..b",
	}
	for key, val := range cases {
		_, err := FromEnv(envOf(map[string]string{key: val}))
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s=%q: error %v, want one naming %s", key, val, err, key)
		}
	}
}
