package forwarder

import (
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/config"
)

func envOf(m map[string]string) config.Source { return func(k string) string { return m[k] } }

// The domain the forwarder serves is the one its settings name, including
// the one the default certificate and key files are named after.
func TestDomainFromSettings(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{nil, "localhost"},
		{map[string]string{"FWD_DOMAIN_PREFIX": "vm", "FWD_DOMAIN_SUFFIX": "Example.com."}, "vm.example.com"},
		{map[string]string{"FWD_DOMAIN_PREFIX": ".vm.", "FWD_DOMAIN_SUFFIX": ".example.com"}, "vm.example.com"},
		{map[string]string{"FWD_DOMAIN": "VM.example.com", "FWD_DOMAIN_PREFIX": "x", "FWD_DOMAIN_SUFFIX": "y.z"}, "vm.example.com"},
	}
	for _, tc := range cases {
		c, err := config.ForwarderFromEnv(envOf(tc.env))
		if err != nil {
			t.Fatalf("env %v: %v", tc.env, err)
		}
		d, err := DomainFrom(c)
		if err != nil || d.Name != tc.want {
			t.Errorf("env %v: domain %q, %v; want %q", tc.env, d.Name, err, tc.want)
		}
		if c.DomainName() != d.Name {
			t.Errorf("env %v: the settings name the domain %q (and its default certificate after it), the forwarder serves %q", tc.env, c.DomainName(), d.Name)
		}
	}
}

func TestDomainFromRejectsNamingTheVariable(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"FWD_DOMAIN": "bad domain"}, "FWD_DOMAIN: "},
		{map[string]string{"FWD_DOMAIN": "..."}, "FWD_DOMAIN: "},
		{map[string]string{"FWD_DOMAIN_SUFFIX": "a..b"}, "FWD_DOMAIN_PREFIX/FWD_DOMAIN_SUFFIX"},
		{map[string]string{"FWD_DOMAIN_PREFIX": "a_b"}, "FWD_DOMAIN_PREFIX/FWD_DOMAIN_SUFFIX"},
	}
	for _, tc := range cases {
		c, err := config.ForwarderFromEnv(envOf(tc.env))
		if err != nil {
			t.Fatalf("env %v: %v", tc.env, err)
		}
		if _, err := DomainFrom(c); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("env %v: error %v, want one starting with %q", tc.env, err, tc.want)
		}
		if _, err := New(c, discard()); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("env %v: New error %v, want one starting with %q", tc.env, err, tc.want)
		}
	}
}
