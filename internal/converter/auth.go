package converter

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

// SaveDockerAuth stores user:pass for registry in the Docker config file in
// dir (config.CLI.DockerConfig: $DOCKER_CONFIG, default ~/.docker), keeping
// every other setting in it, and returns the file's path.
func SaveDockerAuth(dir, registry, user, pass string) (string, error) {
	if dir == "" {
		return "", fmt.Errorf("docker config: no DOCKER_CONFIG and no home directory")
	}
	p := filepath.Join(dir, "config.json")
	cfg := map[string]any{}
	if b, err := os.ReadFile(p); err == nil {
		if err := json.Unmarshal(b, &cfg); err != nil {
			return "", fmt.Errorf("docker config %s: %w", p, err)
		}
	} else if !os.IsNotExist(err) {
		return "", fmt.Errorf("docker config %s: %w", p, err)
	}
	auths, _ := cfg["auths"].(map[string]any)
	if auths == nil {
		auths = map[string]any{}
	}
	auths[registry] = map[string]any{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}
	cfg["auths"] = auths
	b, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("docker config %s: %w", p, err)
	}
	// The file holds secrets: owner only.
	if err := atomicfile.WriteFile(p, b, 0o600); err != nil {
		return "", fmt.Errorf("docker config %s: %w", p, err)
	}
	return p, nil
}
