package config

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestCLIDefaultsFollowTheirRoots(t *testing.T) {
	c, err := CLIFromEnv(env(map[string]string{"HOME": "/home/op"}))
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]string{
		"API":           {c.API, ""},
		"APISocket":     {c.APISocket, "/run/mergen/mergen.sock"},
		"APITokenFile":  {c.APITokenFile, "/etc/mergen/api-token"},
		"DataRoot":      {c.DataRoot, "/var/lib/mergen"},
		"BaseAssetsDir": {c.BaseAssetsDir, "/var/lib/mergen/base/current"},
		"ImagesRoot":    {c.ImagesRoot, "/var/lib/mergen/images"},
		"BasePlatform":  {c.BasePlatform, "linux-" + runtime.GOARCH},
		"BaseFlavor":    {c.BaseFlavor, "buildroot"},
		"HTTPSAddr":     {c.HTTPSAddr, ":443"},
		"Domain":        {c.Domain, "localhost"},
		"ConfigFile":    {c.ConfigFile, "/home/op/.config/mergen/config.json"},
		"DockerConfig":  {c.DockerConfig, "/home/op/.docker"},
	}
	for name, got := range checks {
		if got[0] != got[1] {
			t.Errorf("%s = %q, want %q", name, got[0], got[1])
		}
	}
	if c.ProgressEvery != 250*time.Millisecond {
		t.Errorf("ProgressEvery = %v, want 250ms", c.ProgressEvery)
	}

	c, err = CLIFromEnv(env(map[string]string{"MGR_DATA_ROOT": "/srv/m", "MGR_PROGRESS_EVERY_MILLISECONDS": "40"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.ImagesRoot != "/srv/m/images" || c.BaseAssetsDir != "/srv/m/base/current" || c.ProgressEvery != 40*time.Millisecond {
		t.Fatalf("not derived from MGR_DATA_ROOT: %+v", c)
	}
}

func TestCLIRefusesBadValuesNamingThem(t *testing.T) {
	for v, want := range map[string]string{
		"MGR_PROGRESS_EVERY_MILLISECONDS=soon": `MGR_PROGRESS_EVERY_MILLISECONDS: "soon" is not an integer`,
		"MGR_PROGRESS_EVERY_MILLISECONDS=-3":   "MGR_PROGRESS_EVERY_MILLISECONDS: -3 is out of range",
		"MGR_IMAGES_ROOT=images":               `MGR_IMAGES_ROOT: "images" must be an absolute path`,
		"MERGEN_CONFIG_FILE=cfg.json":          "MERGEN_CONFIG_FILE",
	} {
		k, val, _ := strings.Cut(v, "=")
		_, err := CLIFromEnv(env(map[string]string{k: val}))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to contain %q", v, err, want)
		}
	}
}

func TestCLICarriesTheS3OverridesThatAreSet(t *testing.T) {
	c, err := CLIFromEnv(env(map[string]string{"MGR_CONFIG_S3_BUCKET": " b ", "MGR_CONFIG_S3_REGION": "", "MGR_CONFIG_S3": "x"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.S3) != 1 || c.S3["MGR_CONFIG_S3_BUCKET"] != "b" {
		t.Fatalf("S3 = %v, want only the bucket", c.S3)
	}
}

// A flag that stands for a variable moves what derives from it, and an
// explicit variable still wins over the derivation.
func TestSourceWithOverridesOneName(t *testing.T) {
	src := Source(env(map[string]string{"MGR_DATA_ROOT": "/srv/m"})).With("MGR_DATA_ROOT", "/flag")
	c, err := CLIFromEnv(src)
	if err != nil || c.DataRoot != "/flag" || c.ImagesRoot != "/flag/images" {
		t.Fatalf("with --data-root: %+v %v", c, err)
	}
	src = Source(env(map[string]string{"MGR_IMAGES_ROOT": "/imgs"})).With("MGR_DATA_ROOT", "/flag")
	if c, _ := CLIFromEnv(src); c.ImagesRoot != "/imgs" || c.BaseAssetsDir != "/flag/base/current" {
		t.Fatalf("explicit MGR_IMAGES_ROOT lost: %+v", c)
	}
	if got := Source(nil).With("A", "")("A"); got != "" {
		t.Fatalf("empty value overrode: %q", got)
	}
	if got := Source(nil).With("A", "1")("B"); got != "" {
		t.Fatalf("nil source: %q", got)
	}
}

// The printed URLs name the domain the forwarder serves, in either of its
// spellings.
func TestCLIDomainIsTheForwarders(t *testing.T) {
	for want, vars := range map[string]map[string]string{
		"vm.example.com":   {"FWD_DOMAIN": "VM.example.com.", "FWD_DOMAIN_SUFFIX": "ignored"},
		"apps.example.org": {"FWD_DOMAIN_PREFIX": "apps", "FWD_DOMAIN_SUFFIX": "example.org"},
		"localhost":        {},
		"dev.localhost":    {"FWD_DOMAIN_PREFIX": "dev"},
	} {
		c, err := CLIFromEnv(env(vars))
		if err != nil || c.Domain != want {
			t.Errorf("%v: domain %q (%v), want %q", vars, c.Domain, err, want)
		}
	}
}
