package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/testenv"
)

func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "mergen", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newConfigCmd(), newImagesCmd())
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// An operator's whole path: store a profile, push the base assets, pull
// latest on a "new machine", list what is there.
func TestConfigAndImagesCommands(t *testing.T) {
	endpoint := testenv.StartS3(t, "cli-access", "cli-secret-key", "fleet").Endpoint
	cfg := filepath.Join(t.TempDir(), "config.json")
	t.Setenv("MERGEN_CONFIG_FILE", cfg)
	t.Setenv("MGR_PROGRESS_EVERY_MILLISECONDS", "10")

	if _, err := runCLI(t, "", "config", "init", "--registry", "lab"); err == nil || !strings.Contains(err.Error(), "bucket: required") {
		t.Fatalf("init without bucket: %v", err)
	}
	if _, err := runCLI(t, "", "config", "init", "--registry", "lab", "--bucket", "fleet", "--endpoint", endpoint, "--path-style"); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "cli-secret-key\n", "config", "login", "--registry", "lab", "--access-key-id", "cli-access", "--secret-access-key-stdin")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "cli-secret-key") {
		t.Fatalf("login printed the secret: %s", out)
	}
	if st, err := os.Stat(cfg); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file mode: %v %v", st.Mode(), err)
	}
	if _, err := runCLI(t, "", "images", "push", "base", "--registry", "nope", "--version", "v1"); err == nil || !strings.Contains(err.Error(), `registry "nope": unknown profile`) {
		t.Fatalf("push to an unknown profile: %v", err)
	}

	src := t.TempDir()
	for _, n := range []string{"vmlinux", "golden-rootfs.ext4", "agent-rootfs.ext4"} {
		os.WriteFile(filepath.Join(src, n), []byte("content of "+n), 0o644)
	}
	out, err = runCLI(t, "", "images", "push", "base", "--registry", "lab", "--platform", "linux-amd64", "--flavor", "buildroot", "--version", "v0.0.1", "--base-dir", src)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	if !strings.Contains(out, "progress vmlinux.bin") || !strings.Contains(out, "latest → v0.0.1") {
		t.Fatalf("push output lacks progress or result:\n%s", out)
	}
	dst := filepath.Join(t.TempDir(), "base", "current")
	out, err = runCLI(t, "", "images", "pull", "base", "--registry", "lab", "--platform", "linux-amd64", "--flavor", "buildroot", "--version", "latest", "--base-dir", dst)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	out, err = runCLI(t, "", "images", "ls", "--base-dir", dst, "--images-root", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"version linux-amd64/buildroot/v0.0.1", "golden-rootfs.ext4", "agent-rootfs.ext4", "vmlinux"} {
		if !strings.Contains(out, want) {
			t.Fatalf("images ls lacks %q:\n%s", want, out)
		}
	}
}
