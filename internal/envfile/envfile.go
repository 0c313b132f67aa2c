// Package envfile reads and writes environment files in systemd's
// EnvironmentFile= syntax: KEY=VALUE lines, '#' and ';' comments, values
// optionally in single or double quotes. The daemon writes each VM's env
// file with Render; systemd reads it for the unit, and the detached
// supervisor reads it with Parse, so both give the stages the same
// environment.
package envfile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"
)

var keyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidKey reports whether k can name an environment variable.
func ValidKey(k string) bool { return keyRe.MatchString(k) }

// Render writes KEY=VALUE pairs (in order) under a comment line. Values are
// quoted where systemd would otherwise read them differently. Keys must be
// valid and values free of NUL and newlines; Render refuses anything else
// rather than write a file that means something else.
func Render(comment string, env []string) ([]byte, error) {
	var b strings.Builder
	if comment != "" {
		for _, line := range strings.Split(comment, "\n") {
			b.WriteString("# " + line + "\n")
		}
	}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !ValidKey(k) {
			return nil, fmt.Errorf("environment file: %q is not KEY=VALUE", kv)
		}
		if strings.ContainsAny(v, "\x00\n\r") {
			return nil, fmt.Errorf("environment file: value of %s contains a control character", k)
		}
		fmt.Fprintf(&b, "%s=%s\n", k, Quote(v))
	}
	return []byte(b.String()), nil
}

// Quote quotes a value for EnvironmentFile=; plain values stay bare.
func Quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\"'\\$#;") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`)
	return `"` + r.Replace(v) + `"`
}

// Parse reads the file's KEY=VALUE pairs in order.
func Parse(data []byte) ([]string, error) {
	var env []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || !ValidKey(k) {
			return nil, fmt.Errorf("line %d: want KEY=VALUE", n)
		}
		env = append(env, k+"="+unquote(strings.TrimSpace(v)))
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return env, nil
}

// Read parses the file at path. A missing file is empty, like systemd's
// "-" prefix.
func Read(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("environment file: %w", err)
	}
	env, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("environment file %s: %w", path, err)
	}
	return env, nil
}

// Lookup returns the last value of key in env (later entries win, as in
// an environment).
func Lookup(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return v[1 : len(v)-1]
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		var b strings.Builder
		in := v[1 : len(v)-1]
		for i := 0; i < len(in); i++ {
			if in[i] == '\\' && i+1 < len(in) {
				i++
				switch in[i] {
				case 'n':
					b.WriteByte('\n')
				default:
					b.WriteByte(in[i])
				}
				continue
			}
			b.WriteByte(in[i])
		}
		return b.String()
	}
	return v
}
