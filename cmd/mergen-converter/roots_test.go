package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/converter"
	"github.com/mergenhq/mergen/internal/converter/imagetest"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/images"
	"github.com/mergenhq/mergen/internal/testenv"
)

// runWith runs the program in-process with its configuration read from vars
// alone.
func runWith(t *testing.T, vars map[string]string, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd(func(k string) string { return vars[k] })
	root.SilenceUsage, root.SilenceErrors = true, true
	var out bytes.Buffer
	root.SetArgs(longFlags(root, args))
	root.SetOut(&out)
	root.SetErr(&out)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// The converter writes where the daemon and `mergen images ls` look: the
// images root and the base assets dir as configured, not paths of its own
// under the data root.
func TestConversionsGoWhereTheConfigurationSays(t *testing.T) {
	testenv.RequireRoot(t)
	work := t.TempDir()
	archive := filepath.Join(work, "img.tar")
	tag, _ := name.NewTag("example.com/roots:1")
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "bin/server", Body: "#!/bin/sh\n", Mode: 0o755}))
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	src := "docker-archive:" + archive
	data, imgs, base := filepath.Join(work, "data"), filepath.Join(work, "images"), filepath.Join(work, "base")
	vars := map[string]string{"MGR_DATA_ROOT": data, "MGR_IMAGES_ROOT": imgs, "MGR_BASE_ASSETS_DIR": base, "DOCKER_CONFIG": work}

	if out, err := runWith(t, vars, "--quiet", "--no-tar", "--platform", "linux/amd64", src); err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	dir, err := converter.OutputDir(imgs, src)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := imagemeta.Complete(dir); !ok {
		t.Fatalf("no finished conversion in %s", dir)
	}
	if _, err := os.Stat(filepath.Join(data, "images")); !os.IsNotExist(err) {
		t.Errorf("the converter wrote under the data root although MGR_IMAGES_ROOT is set (%v)", err)
	}
	cfg, err := config.CLIFromEnv(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	inv, err := images.List(cfg.BaseAssetsDir, cfg.ImagesRoot)
	if err != nil || len(inv.Images) != 1 || inv.Images[0].Dir != dir {
		t.Fatalf("the inventory does not list the conversion: %+v %v", inv.Images, err)
	}
	var req map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, imagemeta.SuggestedVMRequest))
	if json.Unmarshal(b, &req); req["kernel"] != filepath.Join(base, "vmlinux") {
		t.Errorf("suggested request kernel %v, want it in %s", req["kernel"], base)
	}

	// The env disk goes to the base assets dir by default.
	os.MkdirAll(base, 0o755)
	if out, err := runWith(t, vars, "--env-rootfs", "--runtime", filepath.Join(dir, imagemeta.RuntimeFile), "--env-var", "A=1"); err != nil || !strings.Contains(out, filepath.Join(base, "env-rootfs.ext4")) {
		t.Fatalf("env disk: %v\n%s", err, out)
	}

	// --data-root stands for MGR_DATA_ROOT: without MGR_IMAGES_ROOT the
	// images follow it.
	delete(vars, "MGR_IMAGES_ROOT")
	other := filepath.Join(work, "other")
	if out, err := runWith(t, vars, "--quiet", "--no-tar", "--data-root", other, "--platform", "linux/amd64", src); err != nil {
		t.Fatalf("convert with --data-root: %v\n%s", err, out)
	}
	dir, _ = converter.OutputDir(filepath.Join(other, "images"), src)
	if _, ok := imagemeta.Complete(dir); !ok {
		t.Fatalf("--data-root %s: no conversion in %s", other, dir)
	}
}

func TestDoctorChecksTheConfiguredImagesRoot(t *testing.T) {
	imgs := filepath.Join(t.TempDir(), "imgs")
	out, _ := runWith(t, map[string]string{"MGR_IMAGES_ROOT": imgs}, "doctor", "--json", "--assets", t.TempDir())
	var checks []struct{ Name, Reason string }
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	for _, c := range checks {
		if c.Name == "images dir" && strings.Contains(c.Reason, imgs) {
			return
		}
	}
	t.Fatalf("the images dir check does not name %s:\n%s", imgs, out)
}

// A configuration the program cannot use is refused, naming the variable.
func TestInvalidConfigurationIsRefused(t *testing.T) {
	_, err := runWith(t, map[string]string{"MGR_IMAGES_ROOT": "relative"}, "--quiet", "nginx:alpine")
	if err == nil || !strings.Contains(err.Error(), "MGR_IMAGES_ROOT") {
		t.Fatalf("err = %v, want MGR_IMAGES_ROOT named", err)
	}
}
