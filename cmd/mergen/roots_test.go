package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/converter/imagetest"
	"github.com/mergenhq/mergen/internal/testenv"
)

// runHost runs host commands in-process with their configuration read from
// vars alone.
func runHost(t *testing.T, vars map[string]string, args ...string) (string, error) {
	t.Helper()
	getenv := config.Source(func(k string) string { return vars[k] })
	root := &cobra.Command{Use: "mergen", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(imagesCmd(getenv), doctorCmd(getenv), configCmd(getenv))
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// `mergen images ls` and `mergen doctor` look at the same base assets dir:
// the configured one, which follows MGR_DATA_ROOT when not set itself.
func TestImagesAndDoctorAgreeOnTheBaseDir(t *testing.T) {
	data := t.TempDir()
	base := filepath.Join(data, "base", "current")
	os.MkdirAll(base, 0o755)
	os.WriteFile(filepath.Join(base, "vmlinux"), []byte("\x7fELF\x02\x01\x01"), 0o644)
	vars := map[string]string{"MGR_DATA_ROOT": data}

	out, err := runHost(t, vars, "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "BASE ("+base+",") || !strings.Contains(out, "vmlinux") {
		t.Fatalf("images ls does not list %s:\n%s", base, out)
	}
	out, _ = runHost(t, vars, "doctor", "--json")
	var checks []struct{ Name, Status, Reason string }
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	found := false
	for _, c := range checks {
		if c.Name == "vmlinux" {
			found = c.Status == "PASS" && strings.HasPrefix(c.Reason, filepath.Join(base, "vmlinux"))
		}
		if c.Name == "configuration" && c.Status != "PASS" {
			t.Errorf("configuration check: %+v", c)
		}
	}
	if !found {
		t.Fatalf("doctor did not find the kernel in %s:\n%s", base, out)
	}

	// An invalid configuration is a failed check of its own, and refused
	// by the commands that read it.
	vars["MGR_PORT_START"] = "x"
	if out, _ = runHost(t, vars, "doctor"); !strings.Contains(out, "FAIL  configuration") || !strings.Contains(out, "MGR_PORT_START") {
		t.Fatalf("doctor with a bad MGR_PORT_START:\n%s", out)
	}
	vars["MGR_IMAGES_ROOT"] = "relative"
	if _, err := runHost(t, vars, "images", "ls"); err == nil || !strings.Contains(err.Error(), "MGR_IMAGES_ROOT") {
		t.Fatalf("images ls with a relative MGR_IMAGES_ROOT: %v", err)
	}
}

// What `mergen run` converts, `mergen images ls` lists, with the images root
// moved away from the data root; a second run reuses it.
func TestRunConvertsIntoTheListedImagesRoot(t *testing.T) {
	testenv.RequireRoot(t)
	work := t.TempDir()
	archive := filepath.Join(work, "img.tar")
	tag, _ := name.NewTag("example.com/listed:1")
	if err := tarball.WriteToFile(archive, tag, imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "bin/server", Body: "#!/bin/sh\n", Mode: 0o755}))); err != nil {
		t.Fatal(err)
	}
	src := "docker-archive:" + archive
	imgs := filepath.Join(work, "elsewhere")
	vars := map[string]string{"MGR_DATA_ROOT": filepath.Join(work, "data"), "MGR_IMAGES_ROOT": imgs}
	cfg, err := config.CLIFromEnv(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}

	conv, err := convertImage(context.Background(), io.Discard, cfg, src, "linux/amd64", false, false)
	if err != nil {
		t.Fatal(err)
	}
	if conv.cached || !strings.HasPrefix(conv.payload, imgs+"/") || conv.rt.HTTPPort != 80 {
		t.Fatalf("first conversion %+v", conv)
	}
	out, err := runHost(t, vars, "images", "ls", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var inv struct{ Images []struct{ Ref, Dir string } }
	if err := json.Unmarshal([]byte(out), &inv); err != nil || len(inv.Images) != 1 || inv.Images[0].Dir != conv.dir {
		t.Fatalf("images ls does not list %s: %v\n%s", conv.dir, err, out)
	}
	again, err := convertImage(context.Background(), io.Discard, cfg, src, "linux/amd64", false, false)
	if err != nil || !again.cached || again.payload != conv.payload {
		t.Fatalf("second run: %+v %v", again, err)
	}
}
