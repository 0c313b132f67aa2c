package converter

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/testenv"

	"github.com/mergenhq/mergen/internal/converter/imagetest"
)

func TestEnvDiskLaysVarsOverTheImageEnvironment(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	rtFile := filepath.Join(dir, imagemeta.RuntimeFile)
	os.WriteFile(rtFile, []byte(`{"version":1,"image":"x","argv":["/bin/app"],"env":["PATH=/bin","MODE=dev"]}`), 0o644)
	out := filepath.Join(dir, "env.ext4")
	if err := EnvDisk(context.Background(), rtFile, []string{"MODE=prod", "TOKEN=a=b c"}, out); err != nil {
		t.Fatal(err)
	}
	if got := imagetest.Debugfs(t, out, "cat /"+imagemeta.EnvFile); got != "PATH=/bin\nMODE=prod\nTOKEN=a=b c\n" {
		t.Errorf("env file = %q", got)
	}
	if got := imagetest.Debugfs(t, out, "cat /"+imagemeta.EnvDiskRuntimeCopy); !strings.Contains(got, `"MODE=prod"`) || !strings.Contains(got, `"/bin/app"`) {
		t.Errorf("runtime copy = %s", got)
	}
	if got := imagetest.Debugfs(t, out, "stats"); !regexp.MustCompile(`Filesystem volume name:\s+mergen-env\n`).MatchString(got) {
		t.Errorf("label not mergen-env:\n%s", got)
	}
}

func TestEnvDiskRefusesBadVars(t *testing.T) {
	for _, kv := range []string{"NOEQUALS", "=v", "1X=v", "A-B=v", "A=line\nbreak"} {
		out := filepath.Join(t.TempDir(), "env.ext4")
		err := EnvDisk(context.Background(), "", []string{kv}, out)
		if err == nil || !strings.Contains(err.Error(), "env var") {
			t.Errorf("%q: err = %v, want an env var error", kv, err)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("%q: disk written despite the error", kv)
		}
	}
}

func TestAgentDiskIsReadOnlyAndHoldsBin(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "agent"), []byte("#!/bin/sh\n"), 0o755)
	out := filepath.Join(dir, "agent-rootfs.ext4")
	if err := AgentDisk(context.Background(), bin, out, 0); err != nil {
		t.Fatal(err)
	}
	stats := imagetest.Debugfs(t, out, "stats")
	if !regexp.MustCompile(`Filesystem volume name:\s+mergen-agent\n`).MatchString(stats) || !regexp.MustCompile(`features:.*read-only`).MatchString(stats) {
		t.Errorf("want label mergen-agent and the read-only feature:\n%s", stats)
	}
	if got := imagetest.Debugfs(t, out, "stat /bin/agent"); !regexp.MustCompile(`Mode:\s+0755`).MatchString(got) {
		t.Errorf("/bin/agent:\n%s", got)
	}
	if err := AgentDisk(context.Background(), filepath.Join(dir, "missing"), filepath.Join(dir, "a2.ext4"), 0); err == nil {
		t.Error("missing bin dir accepted")
	}
}
