// Package profile stores the S3 profiles that artifact commands use: one JSON
// file (config.CLI.ConfigFile: MERGEN_CONFIG_FILE, default
// ~/.config/mergen/config.json), mode 0600 because it holds credentials. The
// MGR_CONFIG_S3_* variables (config.CLI.S3, as config.Profile reads them)
// override the stored fields, so a CI job can work with no file at all.
// Secrets never appear in String or in errors.
package profile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

// Profile is one S3 target.
type Profile struct {
	Endpoint        string `json:"endpoint,omitempty"` // empty = AWS
	Region          string `json:"region"`
	Bucket          string `json:"bucket"`
	Prefix          string `json:"prefix"`
	PathStyle       bool   `json:"usePathStyle"`
	AccessKeyID     string `json:"accessKeyId,omitempty"`
	SecretAccessKey string `json:"secretAccessKey,omitempty"`
	SessionToken    string `json:"sessionToken,omitempty"`
	// Username is recorded by `config login` for the operator's reference;
	// it never enters the S3 key layout.
	Username string `json:"username,omitempty"`
}

// Defaults the seed documents.
const (
	DefaultRegion = "us-east-1"
	DefaultPrefix = "artifacts"
)

// Config is the whole file.
type Config struct {
	Profiles map[string]Profile `json:"profiles"`
}

// nameRE takes names of at most 64 bytes, checked apart.
// A repetition with a bound ({1,64}) compiles to a copy of its
// class per repetition, kept for the program's life (20 KB and more
// per expression): the length is checked apart.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidName reports whether name can name a profile.
func ValidName(name string) error {
	if len(name) > 64 || !nameRE.MatchString(name) {
		return fmt.Errorf("registry %q: must be 1-64 letters, digits, '.', '_' or '-'", name)
	}
	return nil
}

// Load reads the file; a missing file is an empty config.
func Load(path string) (Config, error) {
	c := Config{Profiles: map[string]Profile{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("load config %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("load config %s: not valid JSON: %w", path, err)
	}
	if c.Profiles == nil {
		c.Profiles = map[string]Profile{}
	}
	return c, nil
}

// Save writes the file atomically with mode 0600 (its directory 0700).
func Save(path string, c Config) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save config %s: %w", path, err)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("save config %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save config %s: %w", path, err)
	}
	// WriteFile may keep an existing file's mode; credentials must not be
	// readable by others whatever the file looked like before.
	return os.Chmod(path, 0o600)
}

// Names lists the stored profiles, sorted.
func (c Config) Names() []string {
	var n []string
	for k := range c.Profiles {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Env holds the MGR_CONFIG_S3_* variables that are set, by name, as
// config.Profile reads them (config.CLI.S3).
type Env = map[string]string

// Resolve returns the named profile with the env overrides applied and
// validated. A name that is not stored is an error unless the environment
// alone supplies a complete profile (bucket set).
func Resolve(c Config, name string, env Env) (Profile, error) {
	if err := ValidName(name); err != nil {
		return Profile{}, err
	}
	p, ok := c.Profiles[name]
	if !ok && env["MGR_CONFIG_S3_BUCKET"] == "" {
		known := "none stored"
		if n := c.Names(); len(n) > 0 {
			known = "known: " + strings.Join(n, ", ")
		}
		return Profile{}, fmt.Errorf("registry %q: unknown profile (%s); run `config init --registry %s`", name, known, name)
	}
	if err := ApplyEnv(&p, env); err != nil {
		return Profile{}, err
	}
	if err := p.Validate(); err != nil {
		return Profile{}, fmt.Errorf("registry %q: %w", name, err)
	}
	return p, nil
}

// ApplyEnv overrides fields from MGR_CONFIG_S3_* and fills defaults.
func ApplyEnv(p *Profile, env Env) error {
	set := func(dst *string, key string) {
		if v := env[key]; v != "" {
			*dst = v
		}
	}
	set(&p.Endpoint, "MGR_CONFIG_S3_ENDPOINT")
	set(&p.Region, "MGR_CONFIG_S3_REGION")
	set(&p.Bucket, "MGR_CONFIG_S3_BUCKET")
	set(&p.Prefix, "MGR_CONFIG_S3_PREFIX")
	set(&p.AccessKeyID, "MGR_CONFIG_S3_ACCESS_KEY_ID")
	set(&p.SecretAccessKey, "MGR_CONFIG_S3_SECRET_ACCESS_KEY")
	set(&p.SessionToken, "MGR_CONFIG_S3_SESSION_TOKEN")
	set(&p.Username, "MGR_CONFIG_S3_USERNAME")
	if v := env["MGR_CONFIG_S3_USE_PATH_STYLE"]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("MGR_CONFIG_S3_USE_PATH_STYLE=%q: not a boolean", v)
		}
		p.PathStyle = b
	}
	if p.Region == "" {
		p.Region = DefaultRegion
	}
	if p.Prefix == "" {
		p.Prefix = DefaultPrefix
	}
	return nil
}

// Validate names the first missing or malformed field.
func (p Profile) Validate() error {
	switch {
	case p.Bucket == "":
		return errors.New("bucket: required")
	case p.Region == "":
		return errors.New("region: required")
	case (p.AccessKeyID == "") != (p.SecretAccessKey == ""):
		return errors.New("accessKeyId and secretAccessKey: give both or neither")
	}
	if p.Endpoint != "" && !strings.HasPrefix(p.Endpoint, "http://") && !strings.HasPrefix(p.Endpoint, "https://") {
		return fmt.Errorf("endpoint %q: must start with http:// or https://", p.Endpoint)
	}
	if strings.Contains(p.Prefix, "..") || strings.HasPrefix(p.Prefix, "/") {
		return fmt.Errorf("prefix %q: must be relative and must not contain '..'", p.Prefix)
	}
	return nil
}

// String describes the profile with secrets masked.
func (p Profile) String() string {
	return fmt.Sprintf("endpoint=%s region=%s bucket=%s prefix=%s usePathStyle=%t accessKeyId=%s secretAccessKey=%s",
		orDash(p.Endpoint), p.Region, p.Bucket, p.Prefix, p.PathStyle, mask(p.AccessKeyID), mask(p.SecretAccessKey))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// mask keeps a hint of which key is configured without revealing it.
func mask(s string) string {
	switch {
	case s == "":
		return "-"
	case len(s) <= 8:
		return "****"
	default:
		return s[:4] + "****"
	}
}
