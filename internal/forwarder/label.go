package forwarder

import (
	"errors"
	"fmt"
	"strings"
)

// maxLabelLen is the DNS limit for one label; anything longer cannot be a
// real host name and is refused before it reaches the resolver.
const maxLabelLen = 63

// maxServerNameLen bounds the work done on a client-chosen string.
const maxServerNameLen = 253

// Why a server name was refused. The proxy answers 421 for all of them: the
// client reached a host that does not serve that name.
var (
	ErrNoServerName  = errors.New("no server name (SNI) in the TLS ClientHello")
	ErrOtherDomain   = errors.New("server name is not under the forwarder's domain")
	ErrInvalidLabel  = errors.New("invalid label")
	ErrNestedLabel   = errors.New("label must be a single DNS label (no dots)")
	ErrNameTooLong   = errors.New("server name too long")
	ErrDomainMissing = errors.New("forwarder domain is empty")
)

// Domain is the DNS suffix under which VM labels live: "<label>.<Name>".
type Domain struct {
	// Name is the lowercase domain without leading or trailing dots, e.g.
	// "vm.example.com".
	Name string
}

// NewDomain joins the optional prefix and the suffix ("vm" + "example.com"
// gives "vm.example.com"), lowercased and stripped of surrounding dots.
func NewDomain(prefix, suffix string) (Domain, error) {
	prefix = strings.Trim(strings.ToLower(strings.TrimSpace(prefix)), ".")
	suffix = strings.Trim(strings.ToLower(strings.TrimSpace(suffix)), ".")
	if suffix == "" {
		return Domain{}, ErrDomainMissing
	}
	name := suffix
	if prefix != "" {
		name = prefix + "." + suffix
	}
	for _, part := range strings.Split(name, ".") {
		if err := checkLabel(part); err != nil {
			return Domain{}, fmt.Errorf("domain %q: %w", name, err)
		}
	}
	return Domain{Name: name}, nil
}

// Label extracts the VM label from a TLS server name: "App1.vm.example.com"
// gives "app1" for the domain "vm.example.com". Exactly one label must
// precede the domain; the result is lowercase and made of [a-z0-9-] only,
// so it is safe to log and to use as a map key.
func (d Domain) Label(serverName string) (string, error) {
	if serverName == "" {
		return "", ErrNoServerName
	}
	if len(serverName) > maxServerNameLen {
		return "", ErrNameTooLong
	}
	name := strings.ToLower(strings.TrimSuffix(serverName, "."))
	suffix := "." + d.Name
	if d.Name == "" || !strings.HasSuffix(name, suffix) {
		return "", ErrOtherDomain
	}
	label := name[:len(name)-len(suffix)]
	if strings.Contains(label, ".") {
		return "", ErrNestedLabel
	}
	if err := checkLabel(label); err != nil {
		return "", err
	}
	return label, nil
}

// checkLabel accepts a lowercase DNS label: 1-63 of [a-z0-9-], not starting
// or ending with a hyphen.
func checkLabel(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrInvalidLabel)
	}
	if len(s) > maxLabelLen {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrInvalidLabel, len(s), maxLabelLen)
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return fmt.Errorf("%w: starts or ends with a hyphen", ErrInvalidLabel)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' {
			continue
		}
		return fmt.Errorf("%w: character %q at %d", ErrInvalidLabel, c, i)
	}
	return nil
}
