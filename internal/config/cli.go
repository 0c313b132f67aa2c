package config

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// CLI is the configuration of the command-line programs (mergen's client
// commands and mergen-converter): where the daemon is, where images and
// base assets live on this host, the S3 profile file, progress output.
type CLI struct {
	API           string        // MERGEN_API: the daemon's address
	ConfigFile    string        // MERGEN_CONFIG_FILE: default ~/.config/mergen/config.json
	DataRoot      string        // MGR_DATA_ROOT
	BaseAssetsDir string        // MGR_BASE_ASSETS_DIR
	ImagesRoot    string        // MGR_IMAGES_ROOT
	ProgressEvery time.Duration // MGR_PROGRESS_EVERY_MILLISECONDS
	DockerConfig  string        // DOCKER_CONFIG: registry credentials directory; default ~/.docker
	HTTPSAddr     string        // FWD_HTTPS_ADDR: the forwarder's address, for printed URLs
	Domain        string        // FWD_DOMAIN: the forwarder's domain, for printed URLs
}

// LoadCLI reads the CLI configuration from the process environment.
func LoadCLI() (CLI, error) { return CLIFromEnv(Env()) }

// CLIFromEnv reads the CLI configuration through getenv.
func CLIFromEnv(getenv Source) (CLI, error) {
	r := newReader(getenv)
	c := CLI{
		API:           r.str("MERGEN_API"),
		ConfigFile:    r.optionalPath("MERGEN_CONFIG_FILE"),
		DataRoot:      r.path("MGR_DATA_ROOT"),
		BaseAssetsDir: r.path("MGR_BASE_ASSETS_DIR"),
		ImagesRoot:    r.path("MGR_IMAGES_ROOT"),
		ProgressEvery: r.milliseconds("MGR_PROGRESS_EVERY_MILLISECONDS", 1, 3600_000),
		DockerConfig:  r.optionalPath("DOCKER_CONFIG"),
		HTTPSAddr:     r.str("FWD_HTTPS_ADDR"),
		Domain:        r.str("FWD_DOMAIN"),
	}
	if c.ConfigFile == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			r.fail("MERGEN_CONFIG_FILE", "unset and no home directory: %v", err)
		} else {
			c.ConfigFile = filepath.Join(home, ".config", "mergen", "config.json")
		}
	}
	if c.DockerConfig == "" {
		if home, err := os.UserHomeDir(); err == nil {
			c.DockerConfig = filepath.Join(home, ".docker")
		}
	}
	if err := r.err(); err != nil {
		return c, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// Profile is the S3 profile the MGR_CONFIG_S3_* variables give: each value
// as set (empty when unset), for the profile package to lay over a stored
// profile.
func Profile(getenv Source) map[string]string {
	r := newReader(getenv)
	out := map[string]string{}
	for _, v := range Vars {
		if len(v.Name) > len("MGR_CONFIG_S3_") && v.Name[:len("MGR_CONFIG_S3_")] == "MGR_CONFIG_S3_" {
			if val := r.str(v.Name); val != "" {
				out[v.Name] = val
			}
		}
	}
	return out
}
