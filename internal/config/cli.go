package config

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// CLI is the configuration of the command-line programs (mergen's client
// commands and mergen-converter): where the daemon is, where images and
// base assets live on this host, the S3 profile file and its overrides,
// progress output.
type CLI struct {
	API           string            // MERGEN_API: the daemon's address; empty: the socket when it answers, else DefaultAPI
	APISocket     string            // MGR_API_SOCKET: the daemon's unix socket
	APIToken      string            // MERGEN_API_TOKEN: bearer token for TCP; empty: the first line of APITokenFile
	APITokenFile  string            // MGR_API_TOKEN_FILE
	ConfigFile    string            // MERGEN_CONFIG_FILE: default ~/.config/mergen/config.json
	DataRoot      string            // MGR_DATA_ROOT
	BaseAssetsDir string            // MGR_BASE_ASSETS_DIR
	ImagesRoot    string            // MGR_IMAGES_ROOT
	BasePlatform  string            // MGR_BASE_PLATFORM: default linux-<GOARCH>
	BaseFlavor    string            // MGR_BASE_FLAVOR
	ProgressEvery time.Duration     // MGR_PROGRESS_EVERY_MILLISECONDS
	DockerConfig  string            // DOCKER_CONFIG: registry credentials directory; default ~/.docker
	Kubeconfig    string            // KUBECONFIG: mergen-node's Kubernetes credentials (a kubeconfig path, or several separated by ":")
	HTTPSAddr     string            // FWD_HTTPS_ADDR: the forwarder's address, for printed URLs
	Domain        string            // FWD_DOMAIN, else FWD_DOMAIN_PREFIX.FWD_DOMAIN_SUFFIX: the forwarder's domain, for printed URLs
	S3            map[string]string // MGR_CONFIG_S3_*: the ones set (see Profile)
}

// DefaultAPI is the daemon's TCP address when MERGEN_API is unset and the
// socket does not answer: MGR_HTTP_ADDR's default.
var DefaultAPI = "http://" + varIndex["MGR_HTTP_ADDR"].Default

// LoadCLI reads the CLI configuration from the process environment.
func LoadCLI() (CLI, error) { return CLIFromEnv(Env()) }

// CLIFromEnv reads the CLI configuration through getenv. On error the
// returned CLI still holds every value that could be read, so a command
// can build its flags before it reports the error.
func CLIFromEnv(getenv Source) (CLI, error) {
	r := newReader(getenv)
	c := CLI{
		API:           r.str("MERGEN_API"),
		APISocket:     r.path("MGR_API_SOCKET"),
		APIToken:      r.str("MERGEN_API_TOKEN"),
		APITokenFile:  r.path("MGR_API_TOKEN_FILE"),
		ConfigFile:    r.optionalPath("MERGEN_CONFIG_FILE"),
		DataRoot:      r.path("MGR_DATA_ROOT"),
		BaseAssetsDir: r.path("MGR_BASE_ASSETS_DIR"),
		ImagesRoot:    r.path("MGR_IMAGES_ROOT"),
		BasePlatform:  r.str("MGR_BASE_PLATFORM"),
		BaseFlavor:    r.str("MGR_BASE_FLAVOR"),
		ProgressEvery: r.milliseconds("MGR_PROGRESS_EVERY_MILLISECONDS", 1, 3600_000),
		DockerConfig:  r.optionalPath("DOCKER_CONFIG"),
		Kubeconfig:    r.str("KUBECONFIG"),
		HTTPSAddr:     r.str("FWD_HTTPS_ADDR"),
		Domain:        forwarderDomain(r),
		S3:            Profile(getenv),
	}
	if c.BasePlatform == "" {
		c.BasePlatform = "linux-" + runtime.GOARCH
	}
	home, homeErr := homeDir(getenv)
	if c.ConfigFile == "" {
		if homeErr != nil {
			r.fail("MERGEN_CONFIG_FILE", "unset and no home directory: %v", homeErr)
		} else {
			c.ConfigFile = filepath.Join(home, ".config", "mergen", "config.json")
		}
	}
	if c.DockerConfig == "" && homeErr == nil {
		c.DockerConfig = filepath.Join(home, ".docker")
	}
	if err := r.err(); err != nil {
		return c, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// forwarderDomain is the domain the forwarder serves, derived as it derives
// it: FWD_DOMAIN names it whole; otherwise FWD_DOMAIN_PREFIX (if any) is
// joined to FWD_DOMAIN_SUFFIX.
func forwarderDomain(r *reader) string {
	norm := func(s string) string { return strings.Trim(strings.ToLower(s), ".") }
	if d := norm(r.str("FWD_DOMAIN")); d != "" {
		return d
	}
	prefix, suffix := norm(r.str("FWD_DOMAIN_PREFIX")), norm(r.str("FWD_DOMAIN_SUFFIX"))
	if prefix == "" {
		return suffix
	}
	return prefix + "." + suffix
}

// homeDir is HOME as the source gives it, else the user's home directory.
func homeDir(getenv Source) (string, error) {
	if getenv != nil {
		if h := strings.TrimSpace(getenv("HOME")); h != "" {
			return h, nil
		}
	}
	return os.UserHomeDir()
}

// Profile is the S3 profile the MGR_CONFIG_S3_* variables give: each value
// as set (empty when unset), for the profile package to lay over a stored
// profile.
func Profile(getenv Source) map[string]string {
	r := newReader(getenv)
	out := map[string]string{}
	for _, v := range Vars {
		if strings.HasPrefix(v.Name, "MGR_CONFIG_S3_") {
			if val := r.str(v.Name); val != "" {
				out[v.Name] = val
			}
		}
	}
	return out
}

// With is s with name answering value, unless value is empty: a
// command-line flag that stands for a variable (--data-root for
// MGR_DATA_ROOT), so that the defaults derived from it follow the flag.
func (s Source) With(name, value string) Source {
	return func(k string) string {
		switch {
		case k == name && value != "":
			return value
		case s == nil:
			return ""
		}
		return s(k)
	}
}
