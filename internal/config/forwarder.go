package config

import (
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/certs"
	"github.com/mergenhq/mergen/internal/logging"
)

// Forwarder is the configuration of mergen-forwarder. Field comments name
// the variable; Vars has the defaults. The domain is kept as given: the
// forwarder validates it and builds its Domain from these strings.
type Forwarder struct {
	ConfigRoot   string // FWD_CONFIG_ROOT
	NetnsRoot    string // FWD_NETNS_ROOT
	Domain       string // FWD_DOMAIN: the whole domain; when set, the pair below is ignored
	DomainPrefix string // FWD_DOMAIN_PREFIX: optional first part, <label>.<prefix>.<suffix>
	DomainSuffix string // FWD_DOMAIN_SUFFIX
	CertFile     string // FWD_TLS_CERT_FILE: default /var/lib/mergen/certs/wildcard.<domain>.crt
	KeyFile      string // FWD_TLS_KEY_FILE: default /var/lib/mergen/certs/wildcard.<domain>.key
	HTTPSAddr    string // FWD_HTTPS_ADDR
	MetricsAddr  string // FWD_METRICS_ADDR; "off" gives empty: no metrics listener

	DialTimeout      time.Duration // FWD_DIAL_TIMEOUT_SECONDS
	ResolverTTL      time.Duration // FWD_RESOLVER_CACHE_TTL_SECONDS
	ShutdownTimeout  time.Duration // FWD_SHUTDOWN_TIMEOUT_SECONDS
	HandshakeTimeout time.Duration // FWD_HANDSHAKE_TIMEOUT_SECONDS
	IdleTimeout      time.Duration // FWD_IDLE_TIMEOUT_SECONDS
	MaxConnDuration  time.Duration // FWD_MAX_CONN_SECONDS; 0 means no limit
	MaxConns         int           // FWD_MAX_CONNS: open client connections at once
	MaxConnsPerIP    int           // FWD_MAX_CONNS_PER_IP: open client connections from one address

	LogLevel  string // FWD_LOG_LEVEL
	LogFormat string // FWD_LOG_FORMAT

	// LabelTags are the tag keys whose values route to a VM besides its id
	// and unique id prefix (FWD_LABEL_TAGS). The daemon keeps their values
	// unique across VMs.
	LabelTags []string
}

// forwarderCertDir is where the default certificate and key of the
// forwarder's domain live (see `mergen certs wildcard`).
const forwarderCertDir = "/var/lib/mergen/certs"

// maxForwarderSeconds caps every FWD_*_SECONDS setting: one week.
const maxForwarderSeconds = 7 * 24 * 3600

// LoadForwarder reads the forwarder's configuration from the process
// environment.
func LoadForwarder() (Forwarder, error) { return ForwarderFromEnv(Env()) }

// ForwarderFromEnv reads the FWD_* variables through getenv. Invalid values
// are errors naming the variable, all of them at once.
func ForwarderFromEnv(getenv Source) (Forwarder, error) {
	r := newReader(getenv)
	c := Forwarder{
		ConfigRoot:   r.path("FWD_CONFIG_ROOT"),
		NetnsRoot:    r.path("FWD_NETNS_ROOT"),
		Domain:       r.str("FWD_DOMAIN"),
		DomainPrefix: r.str("FWD_DOMAIN_PREFIX"),
		DomainSuffix: r.str("FWD_DOMAIN_SUFFIX"),
		CertFile:     r.optionalPath("FWD_TLS_CERT_FILE"),
		KeyFile:      r.optionalPath("FWD_TLS_KEY_FILE"),
		HTTPSAddr:    r.str("FWD_HTTPS_ADDR"),
		MetricsAddr:  r.str("FWD_METRICS_ADDR"),

		DialTimeout:      r.fractionalSeconds("FWD_DIAL_TIMEOUT_SECONDS", 0.001, maxForwarderSeconds),
		ResolverTTL:      r.fractionalSeconds("FWD_RESOLVER_CACHE_TTL_SECONDS", 0, maxForwarderSeconds),
		ShutdownTimeout:  r.fractionalSeconds("FWD_SHUTDOWN_TIMEOUT_SECONDS", 0, maxForwarderSeconds),
		HandshakeTimeout: r.fractionalSeconds("FWD_HANDSHAKE_TIMEOUT_SECONDS", 0.001, maxForwarderSeconds),
		IdleTimeout:      r.fractionalSeconds("FWD_IDLE_TIMEOUT_SECONDS", 0.001, maxForwarderSeconds),
		MaxConnDuration:  r.fractionalSeconds("FWD_MAX_CONN_SECONDS", 0, maxForwarderSeconds),
		MaxConns:         r.int("FWD_MAX_CONNS", 1, 1<<24),
		MaxConnsPerIP:    r.int("FWD_MAX_CONNS_PER_IP", 1, 1<<24),

		LogLevel:  r.oneOf("FWD_LOG_LEVEL", logging.Levels...),
		LogFormat: r.oneOf("FWD_LOG_FORMAT", logging.Formats...),
		LabelTags: r.labelTags("FWD_LABEL_TAGS"),
	}
	if strings.EqualFold(c.MetricsAddr, "off") {
		c.MetricsAddr = ""
	}
	if _, _, err := net.SplitHostPort(c.HTTPSAddr); err != nil {
		r.fail("FWD_HTTPS_ADDR", "%q is not host:port (%v)", c.HTTPSAddr, err)
	}
	if _, _, err := net.SplitHostPort(c.MetricsAddr); c.MetricsAddr != "" && err != nil {
		r.fail("FWD_METRICS_ADDR", "%q is not host:port or off (%v)", c.MetricsAddr, err)
	}
	// The default pair is named after the domain, as `mergen certs
	// wildcard` names the files it writes.
	certName, keyName := certs.FileNames(c.DomainName())
	if c.CertFile == "" {
		c.CertFile = filepath.Join(forwarderCertDir, certName)
	}
	if c.KeyFile == "" {
		c.KeyFile = filepath.Join(forwarderCertDir, keyName)
	}
	return c, r.err()
}

// DomainName is the domain the settings give, lowercased and without
// surrounding dots: FWD_DOMAIN when set, else FWD_DOMAIN_PREFIX joined to
// FWD_DOMAIN_SUFFIX. It is not validated here; the forwarder refuses to
// start with a domain that is not made of DNS labels.
func (c Forwarder) DomainName() string {
	norm := func(s string) string { return strings.Trim(strings.ToLower(strings.TrimSpace(s)), ".") }
	if c.Domain != "" {
		return norm(c.Domain)
	}
	prefix, suffix := norm(c.DomainPrefix), norm(c.DomainSuffix)
	if prefix == "" || suffix == "" {
		return suffix
	}
	return prefix + "." + suffix
}
