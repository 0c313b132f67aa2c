package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// reader reads variables through a Source, takes defaults from Vars and
// collects every problem, so that one run reports all of them.
type reader struct {
	getenv Source
	memo   map[string]string
	errs   []error
}

func newReader(getenv Source) *reader {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	return &reader{getenv: getenv, memo: map[string]string{}}
}

func (r *reader) err() error { return errors.Join(r.errs...) }

func (r *reader) fail(name, format string, a ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s: "+format, append([]any{name}, a...)...))
}

// str is the variable's value, or its default from Vars with ${NAME}
// references resolved. Reading a name missing from Vars is a programming
// error: the table is the list of what mergen reads.
func (r *reader) str(name string) string {
	if v, ok := r.memo[name]; ok {
		return v
	}
	def, ok := varIndex[name]
	if !ok {
		panic("config: " + name + " is not in the Vars table")
	}
	v := strings.TrimSpace(r.getenv(name))
	if v == "" {
		v = os.Expand(def.Default, r.str)
	}
	r.memo[name] = v
	return v
}

func (r *reader) path(name string) string {
	v := r.str(name)
	if !filepath.IsAbs(v) {
		r.fail(name, "%q must be an absolute path", v)
		return v
	}
	return filepath.Clean(v)
}

func (r *reader) optionalPath(name string) string {
	if r.str(name) == "" {
		return ""
	}
	return r.path(name)
}

func (r *reader) pathList(name string) []string {
	var out []string
	for _, p := range strings.Split(r.str(name), ":") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if !filepath.IsAbs(p) {
			r.fail(name, "%q must be an absolute path", p)
			continue
		}
		out = append(out, filepath.Clean(p))
	}
	return out
}

func (r *reader) int(name string, min, max int) int {
	v := r.str(name)
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.fail(name, "%q is not an integer", v)
		return 0
	}
	if n < min || n > max {
		r.fail(name, "%d is out of range %d..%d", n, min, max)
		return 0
	}
	return n
}

func (r *reader) port(name string) int { return r.int(name, 1, 65535) }

func (r *reader) seconds(name string, min, max int) time.Duration {
	return time.Duration(r.int(name, min, max)) * time.Second
}

// fractionalSeconds accepts decimals ("0.5") between min and max seconds.
func (r *reader) fractionalSeconds(name string, min, max float64) time.Duration {
	raw := r.str(name)
	v, err := strconv.ParseFloat(raw, 64)
	if err != nil || !(v >= min && v <= max) { // also refuses NaN
		r.fail(name, "%q is not a number of seconds between %g and %g", raw, min, max)
		return 0
	}
	return time.Duration(v * float64(time.Second))
}

func (r *reader) milliseconds(name string, min, max int) time.Duration {
	return time.Duration(r.int(name, min, max)) * time.Millisecond
}

// boolean accepts 1/0, true/false, yes/no, on/off; unset is false.
func (r *reader) boolean(name string) bool {
	switch v := strings.ToLower(r.str(name)); v {
	case "", "0", "false", "no", "off":
		return false
	case "1", "true", "yes", "on":
		return true
	default:
		r.fail(name, "%q is not a boolean (want 1 or 0)", v)
		return false
	}
}

// oneOf is the lower-cased value when it is the default or one of allowed.
func (r *reader) oneOf(name string, allowed ...string) string {
	v := strings.ToLower(r.str(name))
	if v == strings.ToLower(os.Expand(varIndex[name].Default, r.str)) {
		return v
	}
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	r.fail(name, "%q is not one of %s", v, strings.Join(allowed, "|"))
	return ""
}

func (r *reader) guestCIDR(name string) netip.Prefix {
	cidr := r.str(name)
	p, err := netip.ParsePrefix(cidr)
	switch {
	case err != nil:
		r.fail(name, "%q is not a CIDR (want e.g. 172.30.0.0/24)", cidr)
	case !p.Addr().Is4():
		r.fail(name, "%q: only IPv4 guest networks are supported", cidr)
	case p.Bits() > 29 || p.Bits() < 8:
		r.fail(name, "%q: prefix length must be between /8 and /29", cidr)
	case p.Masked() != p:
		r.fail(name, "%q has host bits set (did you mean %s?)", cidr, p.Masked())
	default:
		return p
	}
	return netip.Prefix{}
}

// list is a comma-separated list, blanks dropped.
func (r *reader) list(name string) []string {
	var out []string
	for _, v := range strings.Split(r.str(name), ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// tagKeyRe takes a tag key of at most maxTagKey bytes.
// A repetition with a bound ({1,64}) compiles to a copy of its
// class per repetition, kept for the program's life (20 KB and more
// per expression): the length is checked apart.
var tagKeyRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)

const maxTagKey = 63

// labelTags is a non-empty list of tag keys.
func (r *reader) labelTags(name string) []string {
	keys := r.list(name)
	for _, k := range keys {
		if len(k) > maxTagKey || !tagKeyRe.MatchString(k) {
			r.fail(name, "%q is not a tag key", k)
		}
	}
	if len(keys) == 0 {
		r.fail(name, "empty: name at least one tag key (default name,app)")
	}
	return keys
}

var portProtoRe = regexp.MustCompile(`^([0-9]{1,5})(/(tcp|udp))?$`)

// portList is a comma-separated list of PORT[/tcp|udp] (tcp when left out),
// returned as "PORT/PROTO".
func (r *reader) portList(name string) []string {
	var out []string
	for _, v := range r.list(name) {
		m := portProtoRe.FindStringSubmatch(strings.ToLower(v))
		n, err := strconv.Atoi(safeIndex(m, 1))
		if m == nil || err != nil || n < 1 || n > 65535 {
			r.fail(name, "%q is not PORT or PORT/tcp or PORT/udp", v)
			continue
		}
		proto := m[3]
		if proto == "" {
			proto = "tcp"
		}
		out = append(out, strconv.Itoa(n)+"/"+proto)
	}
	return out
}

func safeIndex(m []string, i int) string {
	if i < len(m) {
		return m[i]
	}
	return ""
}
