package converter

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mergenhq/mergen/internal/converter/ext4"
	"github.com/mergenhq/mergen/internal/imagemeta"
)

// AgentDisk makes the read-only agent disk (label mergen-agent) holding a
// copy of binDir as /bin, written to out atomically.
func AgentDisk(ctx context.Context, binDir, out string, sizeMiB int64) error {
	fi, err := os.Stat(binDir)
	if err != nil {
		return fmt.Errorf("agent disk %s: bin dir: %w", out, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("agent disk %s: bin dir %s is not a directory", out, binDir)
	}
	stage, err := os.MkdirTemp(filepath.Dir(out), ".agent-")
	if err != nil {
		return fmt.Errorf("agent disk %s: %w", out, err)
	}
	defer os.RemoveAll(stage)
	if err := copyTree(binDir, filepath.Join(stage, "bin")); err != nil {
		return fmt.Errorf("agent disk %s: copy %s: %w", out, binDir, err)
	}
	if err := ext4.FromDir(ctx, stage, out, ext4.Options{Label: imagemeta.LabelAgent, SizeMiB: sizeMiB, Headroom: 0.1, ReadOnly: true}); err != nil {
		return fmt.Errorf("agent disk: %w", err)
	}
	return nil
}

// ParseEnvVar checks one --env-var argument: KEY=VALUE with a shell-style
// key and a value on one line.
func ParseEnvVar(kv string) (string, string, error) {
	k, v, ok := strings.Cut(kv, "=")
	if !ok {
		return "", "", fmt.Errorf("env var %q: want KEY=VALUE", kv)
	}
	if k == "" {
		return "", "", fmt.Errorf("env var %q: empty key", kv)
	}
	for i, r := range k {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return "", "", fmt.Errorf("env var %q: key %q may hold only letters, digits and '_' and not start with a digit", kv, k)
		}
	}
	if strings.ContainsAny(v, "\n\x00") {
		return "", "", fmt.Errorf("env var %q: value holds a newline or NUL", k)
	}
	return k, v, nil
}

// EnvDisk makes the env disk (label mergen-env): an env file of KEY=VALUE
// lines (the runtime's environment with vars laid over it, later wins) and
// a copy of the runtime file with the same environment.
func EnvDisk(ctx context.Context, runtimeFile string, vars []string, out string) error {
	var rt imagemeta.Runtime
	if runtimeFile != "" {
		b, err := os.ReadFile(runtimeFile)
		if err != nil {
			return fmt.Errorf("env disk %s: runtime file: %w", out, err)
		}
		if err := json.Unmarshal(b, &rt); err != nil {
			return fmt.Errorf("env disk %s: runtime file %s: %w", out, runtimeFile, err)
		}
	}
	env := map[string]string{}
	var order []string
	set := func(kv string) error {
		k, v, err := ParseEnvVar(kv)
		if err != nil {
			return err
		}
		if _, seen := env[k]; !seen {
			order = append(order, k)
		}
		env[k] = v
		return nil
	}
	for _, kv := range rt.Env {
		if err := set(kv); err != nil {
			return fmt.Errorf("env disk %s: %s: %w", out, runtimeFile, err)
		}
	}
	for _, kv := range vars {
		if err := set(kv); err != nil {
			return fmt.Errorf("env disk %s: %w", out, err)
		}
	}
	var lines []string
	for _, k := range order {
		lines = append(lines, k+"="+env[k])
	}
	rt.Env = lines
	if rt.Version == 0 {
		rt.Version = 1
	}
	stage, err := os.MkdirTemp(filepath.Dir(out), ".env-")
	if err != nil {
		return fmt.Errorf("env disk %s: %w", out, err)
	}
	defer os.RemoveAll(stage)
	content := strings.Join(lines, "\n")
	if content != "" {
		content += "\n"
	}
	if err := os.WriteFile(filepath.Join(stage, imagemeta.EnvFile), []byte(content), 0o644); err != nil {
		return fmt.Errorf("env disk %s: %w", out, err)
	}
	rb, _ := json.MarshalIndent(rt, "", "  ")
	if err := os.WriteFile(filepath.Join(stage, imagemeta.EnvDiskRuntimeCopy), rb, 0o644); err != nil {
		return fmt.Errorf("env disk %s: %w", out, err)
	}
	if err := ext4.FromDir(ctx, stage, out, ext4.Options{Label: imagemeta.LabelEnv, Headroom: 0.5}); err != nil {
		return fmt.Errorf("env disk: %w", err)
	}
	return nil
}

// copyTree copies regular files, directories and symlinks with their modes.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(target, fi.Mode().Perm())
		case fi.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case fi.Mode().IsRegular():
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			o, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(o, in); err != nil {
				o.Close()
				return err
			}
			return o.Close()
		}
		return nil
	})
}
