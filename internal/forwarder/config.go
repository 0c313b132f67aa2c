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
//
// Its settings are config.Forwarder (the FWD_* variables); the domain
// strings there are validated here, by DomainFrom.
package forwarder

import (
	"fmt"

	"github.com/mergenhq/mergen/internal/config"
)

// DomainFrom builds the forwarder's domain from its settings: FWD_DOMAIN
// when set, else FWD_DOMAIN_PREFIX joined to FWD_DOMAIN_SUFFIX. An invalid
// domain is an error naming the variables it came from.
func DomainFrom(c config.Forwarder) (Domain, error) {
	if c.Domain != "" {
		d, err := NewDomain("", c.Domain)
		if err != nil {
			return Domain{}, fmt.Errorf("FWD_DOMAIN: %w", err)
		}
		return d, nil
	}
	d, err := NewDomain(c.DomainPrefix, c.DomainSuffix)
	if err != nil {
		return Domain{}, fmt.Errorf("FWD_DOMAIN_PREFIX/FWD_DOMAIN_SUFFIX: %w", err)
	}
	return d, nil
}
