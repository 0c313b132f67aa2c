// Package bootparam is how a VM's payload environment and argv travel to
// its guest on the kernel command line: mergen.env= and mergen.argv=, each
// base64url of JSON, so that no value's spaces or quotes can split or end
// the parameter; an environment too large for the line is announced there
// (mergen.env_from=agent) and handed over the agent channel at start. The
// daemon encodes them when it renders a VM, mergen-init decodes them at
// boot, and whoever builds a create request (the API, the Kubernetes node)
// checks their sizes against the same bounds.
//
// It imports only the standard library and envfile's name rule, so the
// guest and the node agent link nothing else of the daemon.
package bootparam

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/mergenhq/mergen/internal/envfile"
)

// The bounds of the encoded parameters on the command line. They share
// one kernel command line with the console, network and the caller's boot
// arguments: 2,047 bytes under Firecracker, its own arguments included,
// and 1,012 under QEMU (its configuration file's line), which each driver
// checks when it renders the VM (docs/vmm.md). An environment past MaxEnv
// goes over the agent channel instead (EnvArg), so that with the usual
// arguments it never makes the line too long for either VMM.
const (
	MaxEnv  = 512 // bytes of EncodeEnv's result on the command line
	MaxArgv = 512 // bytes of EncodeArgv's result
)

// The parameters' names, and EnvFromParam's one value.
const (
	EnvParam     = "mergen.env"
	ArgvParam    = "mergen.argv"
	EnvFromParam = "mergen.env_from"
	FromAgent    = "agent"
)

// MaxAgentEnv bounds the environment (bytes of its JSON) that does not fit
// the command line and goes over the agent channel instead (EnvArg); the
// channel takes messages of 64 KiB (agentproto.MaxLine).
const MaxAgentEnv = 32 << 10

// EnvSize is the size MaxAgentEnv bounds: env's JSON.
func EnvSize(env map[string]string) int {
	if len(env) == 0 {
		return 0
	}
	b, _ := json.Marshal(env) // a map[string]string always encodes
	return len(b)
}

// EnvArg is the kernel argument that gives the guest env: mergen.env= with
// EncodeEnv's value while that fits MaxEnv; else mergen.env_from=agent,
// and the guest starts its payload only once the host has handed it env
// over the agent channel (agentproto.OpEnv), which the post-start stage
// does. Empty for no variables.
func EnvArg(env map[string]string) string {
	enc, onLine := envOnLine(env)
	switch {
	case enc == "":
		return ""
	case onLine:
		return EnvParam + "=" + enc
	}
	return EnvFromParam + "=" + FromAgent
}

// EnvFromAgent reports whether EnvArg sends env over the agent channel.
func EnvFromAgent(env map[string]string) bool {
	_, onLine := envOnLine(env)
	return !onLine
}

// envOnLine is env encoded, and whether that goes on the command line.
func envOnLine(env map[string]string) (enc string, onLine bool) {
	enc = EncodeEnv(env)
	return enc, len(enc) <= MaxEnv
}

// EncodeEnv is the value of mergen.env= for env; empty for none.
func EncodeEnv(env map[string]string) string {
	if len(env) == 0 {
		return ""
	}
	b, _ := json.Marshal(env) // a map[string]string always encodes
	return base64.RawURLEncoding.EncodeToString(b)
}

// EncodeArgv is the value of mergen.argv= for argv; empty for none.
func EncodeArgv(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	b, _ := json.Marshal(argv) // a []string always encodes
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeEnv reads a mergen.env= value (padded base64url or not) into
// sorted KEY=value assignments. Names must be shell names and values free
// of NUL: the guest writes them as shell assignments.
func DecodeEnv(v string) ([]string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(v, "="))
	if err != nil {
		return nil, fmt.Errorf("not base64url: %w", err)
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("not a JSON object of strings: %w", err)
	}
	for k, val := range m {
		if !envfile.ValidKey(k) {
			return nil, fmt.Errorf("variable name %q is not a shell name ([A-Za-z_][A-Za-z0-9_]*)", k)
		}
		if strings.ContainsRune(val, 0) {
			return nil, fmt.Errorf("value of %s contains NUL", k)
		}
	}
	return Assignments(m), nil
}

// Assignments is env as the guest keeps it: KEY=value, sorted by name.
func Assignments(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// DecodeArgv reads a mergen.argv= value (padded base64url or not): a
// program and its arguments, none holding a NUL.
func DecodeArgv(v string) ([]string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(v, "="))
	if err != nil {
		return nil, fmt.Errorf("not base64url: %w", err)
	}
	var argv []string
	if err := json.Unmarshal(raw, &argv); err != nil {
		return nil, fmt.Errorf("not a JSON array of strings: %w", err)
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("the program to run is empty")
	}
	for i, a := range argv {
		if strings.ContainsRune(a, 0) {
			return nil, fmt.Errorf("argument %d contains NUL", i)
		}
	}
	return argv, nil
}
