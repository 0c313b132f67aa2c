package doctor

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/testenv"
)

// assetsDir writes a complete, well-formed base assets directory (tiny
// stand-ins: the checks look at magic numbers and labels, not contents).
func assetsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	elf := []byte("\x7fELF\x02\x01\x01")
	for _, f := range []string{"vmlinux", "bin/sbin-init", "bin/mergen-agent"} {
		os.WriteFile(filepath.Join(dir, f), elf, 0o755)
	}
	os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("MZ"), 0o644)
	os.WriteFile(filepath.Join(dir, "initrd.img"), []byte("070701"), 0o644)
	for f, label := range map[string]string{"golden-rootfs.ext4": "mergen-root", "agent-rootfs.ext4": "mergen-agent", "env-rootfs.ext4": "mergen-env"} {
		mkfs(t, filepath.Join(dir, f), label)
	}
	return dir
}

func mkfs(t *testing.T, p, label string) {
	t.Helper()
	os.WriteFile(p, nil, 0o644)
	os.Truncate(p, 2<<20)
	if out, err := exec.Command(testenv.Tool(t, "mkfs.ext4"), "-q", "-F", "-L", label, p).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
}

func byName(checks []Check) map[string]Check {
	m := map[string]Check{}
	for _, c := range checks {
		m[c.Name] = c
	}
	return m
}

func TestBaseAssets(t *testing.T) {
	cases := []struct {
		name       string
		break_     func(dir string)
		check      string
		want       Status
		wantReason string
	}{
		{"complete", func(string) {}, "", Pass, ""},
		{"no vmlinux", func(d string) { os.Remove(filepath.Join(d, "vmlinux")) }, "vmlinux", Fail, "uncompressed kernel for Firecracker missing"},
		{"vmlinux is a bzImage", func(d string) { os.WriteFile(filepath.Join(d, "vmlinux"), []byte("MZ\x00\x00"), 0o644) }, "vmlinux", Fail, "is not an ELF file"},
		{"golden rootfs mislabelled", func(d string) { mkfs(t, filepath.Join(d, "golden-rootfs.ext4"), "rootfs") }, "golden-rootfs.ext4", Fail, `labelled "rootfs", want "mergen-root"`},
		{"agent disk not ext4", func(d string) { os.WriteFile(filepath.Join(d, "agent-rootfs.ext4"), make([]byte, 4096), 0o644) }, "agent-rootfs.ext4", Fail, "is not an ext4 file system"},
		{"no sbin-init", func(d string) { os.Remove(filepath.Join(d, "bin/sbin-init")) }, "bin/sbin-init", Fail, "mergen-init missing"},
		{"no env disk is only a warning", func(d string) { os.Remove(filepath.Join(d, "env-rootfs.ext4")) }, "env-rootfs.ext4", Warn, "missing"},
		{"no initrd is only a warning", func(d string) { os.Remove(filepath.Join(d, "initrd.img")) }, "initrd.img", Warn, "missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := assetsDir(t)
			c.break_(dir)
			checks := BaseAssets(dir)
			if len(checks) != 8 {
				t.Fatalf("%d checks, want 8", len(checks))
			}
			for _, got := range checks {
				want := Pass
				if got.Name == c.check {
					want = c.want
					if !strings.Contains(got.Reason, c.wantReason) || got.Fix == "" {
						t.Errorf("%s: reason %q fix %q, want reason with %q and a fix", got.Name, got.Reason, got.Fix, c.wantReason)
					}
				}
				if got.Status != want {
					t.Errorf("%s: %s (%s), want %s", got.Name, got.Status, got.Reason, want)
				}
			}
			if Failed(checks) != (c.want == Fail) {
				t.Errorf("Failed = %v", Failed(checks))
			}
		})
	}
}

func TestHostChecksAreComplete(t *testing.T) {
	checks := Host("", "")
	names := byName(checks)
	for _, n := range []string{"kvm", "firecracker binary", "qemu binary", "systemd", "nftables", "tun"} {
		c, ok := names[n]
		if !ok {
			t.Errorf("no %q check", n)
			continue
		}
		if c.Status != Pass && c.Status != Warn && c.Status != Fail || c.Reason == "" {
			t.Errorf("%s: status %q reason %q", n, c.Status, c.Reason)
		}
		if c.Status != Pass && c.Fix == "" {
			t.Errorf("%s: %s without a fix", n, c.Status)
		}
	}
}

func TestPrint(t *testing.T) {
	checks := []Check{
		{Name: "tun", Status: Pass, Reason: "/dev/net/tun opens"},
		{Name: "vmlinux", Status: Fail, Reason: "missing", Fix: "run make assets"},
	}
	var text bytes.Buffer
	if err := Print(&text, checks, false); err != nil {
		t.Fatal(err)
	}
	want := "PASS  tun      /dev/net/tun opens\nFAIL  vmlinux  missing\n               fix: run make assets\n"
	if text.String() != want {
		t.Fatalf("text:\n%q\nwant\n%q", text.String(), want)
	}
	var js bytes.Buffer
	if err := Print(&js, checks, true); err != nil {
		t.Fatal(err)
	}
	var back []Check
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back) != 2 || back[1].Fix != "run make assets" || back[1].Status != Fail {
		t.Fatalf("json %s: %v", js.String(), err)
	}
	js.Reset()
	Print(&js, nil, true)
	if strings.TrimSpace(js.String()) != "[]" {
		t.Fatalf("no checks as JSON = %q, want []", js.String())
	}
}

// The VMM binaries checked are the ones the caller configured; one of them
// is enough.
func TestHostChecksTheConfiguredBinaries(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	missing := filepath.Join(t.TempDir(), "no-such-vmm")
	c := byName(Host(sh, missing))
	if fc := c["firecracker binary"]; fc.Status != Pass || fc.Reason != sh {
		t.Errorf("configured firecracker %s: %+v", sh, fc)
	}
	if q := c["qemu binary"]; q.Status != Warn || !strings.Contains(q.Reason, missing) || !strings.Contains(q.Reason, "MGR_QEMU_BIN") {
		t.Errorf("missing configured qemu: %+v", q)
	}
}

// Software emulation is never silent: doctor warns when QEMU would run
// guests with TCG, and says why.
func TestDoctorWarnsWhenQEMURunsInSoftwareEmulation(t *testing.T) {
	c := byName(VMM("qemu", config.Driver{QEMUAccel: "tcg"}))["qemu accelerator"]
	if c.Status != Warn || !strings.Contains(c.Reason, "software emulation (TCG)") || !strings.Contains(c.Reason, "MGR_QEMU_ACCEL=tcg") {
		t.Fatalf("qemu accelerator check = %+v, want a warning naming TCG and why", c)
	}
}

// Firecracker without the jailer runs as root: doctor warns.
func TestDoctorWarnsWhenFirecrackerRunsWithoutTheJailer(t *testing.T) {
	c := byName(VMM("firecracker", config.Driver{JailerBin: filepath.Join(t.TempDir(), "no-jailer"), JailerAuto: true}))["firecracker jailer"]
	if c.Status != Warn || !strings.Contains(c.Reason, "without the jailer") {
		t.Fatalf("firecracker jailer check = %+v, want a warning", c)
	}
	c = byName(VMM("firecracker", config.Driver{JailerBin: "/bin/true", JailerAuto: true}))["firecracker jailer"]
	if c.Status != Pass {
		t.Fatalf("firecracker jailer check with a jailer found = %+v, want PASS", c)
	}
}
