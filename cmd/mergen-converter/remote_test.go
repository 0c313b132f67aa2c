package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/testenv"
)

func runRemoteCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd(config.Env())
	root.SilenceUsage, root.SilenceErrors = true, true
	var out bytes.Buffer
	root.SetArgs(longFlags(root, args))
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// A build machine publishes a converted image; another installs it.
func TestPayloadPushPullThroughS3Profile(t *testing.T) {
	endpoint := testenv.StartS3(t, "conv-access", "conv-secret-key", "payloads").Endpoint
	t.Setenv("MERGEN_CONFIG_FILE", filepath.Join(t.TempDir(), "config.json"))
	if _, err := runRemoteCLI(t, "", "init", "-registry", "ci", "--bucket", "payloads", "--endpoint", endpoint, "--path-style"); err != nil {
		t.Fatal(err)
	}
	out, err := runRemoteCLI(t, "conv-secret-key\n", "login", "--registry", "ci", "--username", "conv-access", "--password-stdin")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "conv-secret-key") {
		t.Fatalf("login printed the secret: %s", out)
	}
	ref := "ghcr.io/org/app:1.2.3"
	src := filepath.Join(t.TempDir(), "images")
	dir := filepath.Join(src, filepath.FromSlash(ref))
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "payload-rootfs.ext4"), bytes.Repeat([]byte{7}, 1<<20), 0o644)
	os.WriteFile(filepath.Join(dir, "image-meta.json"), []byte(`{"image":"`+ref+`"}`), 0o644)
	os.WriteFile(filepath.Join(dir, "mergen.runtime.json"), []byte(`{}`), 0o644)
	if out, err := runRemoteCLI(t, "", "push", "--registry", "ci", "--image", ref, "--images-root", src); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	dst := filepath.Join(t.TempDir(), "images")
	if out, err := runRemoteCLI(t, "", "pull", "--registry", "ci", "--image", ref, "--images-root", dst); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	for _, n := range []string{"payload-rootfs.ext4", "image-meta.json", "mergen.runtime.json"} {
		a, _ := os.ReadFile(filepath.Join(dir, n))
		b, err := os.ReadFile(filepath.Join(dst, filepath.FromSlash(ref), n))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s not installed intact: %v", n, err)
		}
	}
	if _, err := runRemoteCLI(t, "", "pull", "--registry", "ci", "--image", "../escape", "--images-root", dst); err == nil || !strings.Contains(err.Error(), `image "../escape"`) {
		t.Fatalf("pull of a path-like ref: %v", err)
	}
	if _, err := runRemoteCLI(t, "", "push", "--registry", "nope", "--image", ref); err == nil || !strings.Contains(err.Error(), `registry "nope": unknown profile`) {
		t.Fatalf("push to an unknown profile: %v", err)
	}
}
