// Package forwarder is mergen's public front door: it terminates TLS with a
// wildcard certificate, takes the VM label from the SNI server name,
// resolves it through the VMs' meta.json files and relays the connection to
// guestIP:httpPort inside that VM's network namespace.
//
// Guarantees: no file-system scan per connection (an index refreshed at
// most once per TTL); every connection has bounded cost (handshake, dial,
// idle and total deadlines); failures are answered over TLS with a short
// HTTP response (421 wrong name, 404 unknown label, 409 ambiguous label,
// 502 unreachable VM) and one log line.
package forwarder

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Config is the forwarder's configuration, normally read from FWD_*
// variables by FromEnv.
type Config struct {
	ConfigRoot  string // FWD_CONFIG_ROOT
	NetnsRoot   string // FWD_NETNS_ROOT
	CertFile    string // FWD_TLS_CERT_FILE
	KeyFile     string // FWD_TLS_KEY_FILE
	Domain      Domain // FWD_DOMAIN, or FWD_DOMAIN_PREFIX + FWD_DOMAIN_SUFFIX
	HTTPSAddr   string // FWD_HTTPS_ADDR
	MetricsAddr string // FWD_METRICS_ADDR; empty disables the listener

	DialTimeout      time.Duration // FWD_DIAL_TIMEOUT_SECONDS
	ResolverTTL      time.Duration // FWD_RESOLVER_CACHE_TTL_SECONDS
	ShutdownTimeout  time.Duration // FWD_SHUTDOWN_TIMEOUT_SECONDS
	HandshakeTimeout time.Duration // FWD_HANDSHAKE_TIMEOUT_SECONDS
	IdleTimeout      time.Duration // FWD_IDLE_TIMEOUT_SECONDS
	MaxConnDuration  time.Duration // FWD_MAX_CONN_SECONDS; 0 means no limit

	LogLevel  string // FWD_LOG_LEVEL
	LogFormat string // FWD_LOG_FORMAT
}

// FromEnv reads the FWD_* variables through getenv (os.Getenv in the
// program). Invalid values are errors naming the variable.
func FromEnv(getenv func(string) string) (Config, error) {
	str := func(key, def string) string {
		if v := strings.TrimSpace(getenv(key)); v != "" {
			return v
		}
		return def
	}
	c := Config{
		ConfigRoot:  str("FWD_CONFIG_ROOT", "/var/lib/mergen/vm.d"),
		NetnsRoot:   str("FWD_NETNS_ROOT", "/run/netns"),
		HTTPSAddr:   str("FWD_HTTPS_ADDR", ":443"),
		MetricsAddr: str("FWD_METRICS_ADDR", "127.0.0.1:9109"),
		LogLevel:    str("FWD_LOG_LEVEL", "debug"),
		LogFormat:   str("FWD_LOG_FORMAT", "console"),
	}
	if getenv("FWD_METRICS_ADDR") == "off" {
		c.MetricsAddr = ""
	}

	// FWD_DOMAIN (newest form) names the whole domain; otherwise the older
	// prefix/suffix pair is joined, with the suffix defaulting to localhost.
	var err error
	if d := str("FWD_DOMAIN", ""); d != "" {
		c.Domain, err = NewDomain("", d)
		if err != nil {
			return c, fmt.Errorf("FWD_DOMAIN: %w", err)
		}
	} else {
		c.Domain, err = NewDomain(getenv("FWD_DOMAIN_PREFIX"), str("FWD_DOMAIN_SUFFIX", "localhost"))
		if err != nil {
			return c, fmt.Errorf("FWD_DOMAIN_PREFIX/FWD_DOMAIN_SUFFIX: %w", err)
		}
	}
	certDir := "/var/lib/mergen/certs"
	c.CertFile = str("FWD_TLS_CERT_FILE", certDir+"/wildcard."+c.Domain.Name+".crt")
	c.KeyFile = str("FWD_TLS_KEY_FILE", certDir+"/wildcard."+c.Domain.Name+".key")

	secs := []struct {
		key string
		def float64
		dst *time.Duration
		min float64
	}{
		{"FWD_DIAL_TIMEOUT_SECONDS", 5, &c.DialTimeout, 0.001},
		{"FWD_RESOLVER_CACHE_TTL_SECONDS", 5, &c.ResolverTTL, 0},
		{"FWD_SHUTDOWN_TIMEOUT_SECONDS", 15, &c.ShutdownTimeout, 0},
		{"FWD_HANDSHAKE_TIMEOUT_SECONDS", 10, &c.HandshakeTimeout, 0.001},
		{"FWD_IDLE_TIMEOUT_SECONDS", 300, &c.IdleTimeout, 0.001},
		{"FWD_MAX_CONN_SECONDS", 0, &c.MaxConnDuration, 0},
	}
	for _, s := range secs {
		v := s.def
		if raw := strings.TrimSpace(getenv(s.key)); raw != "" {
			v, err = strconv.ParseFloat(raw, 64)
			if err != nil || v < s.min || v > 7*24*3600 {
				return c, fmt.Errorf("%s: %q is not a number of seconds between %g and 604800", s.key, raw, s.min)
			}
		}
		*s.dst = time.Duration(v * float64(time.Second))
	}
	return c, nil
}
