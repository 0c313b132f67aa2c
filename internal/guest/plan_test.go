package guest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/testenv"
	"golang.org/x/sys/unix"
)

func TestResolveCommandLooksInsideTheImage(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"bin", "usr/bin", "opt/app"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "bin/busybox"), []byte("x"), 0o755)
	os.WriteFile(filepath.Join(root, "opt/app/data"), []byte("x"), 0o644)
	os.Symlink("busybox", filepath.Join(root, "bin/sh"))
	// An absolute link resolves within the image, not on the guest's root.
	os.Symlink("/bin/busybox", filepath.Join(root, "usr/bin/env"))
	os.Symlink("/usr/bin/true", filepath.Join(root, "usr/bin/escape")) // exists on the host, not in the image
	cases := []struct {
		argv0, path, want, wantErr string
	}{
		{"sh", "/usr/bin:/bin", "/bin/sh", ""},
		{"env", "/usr/bin:/bin", "/usr/bin/env", ""},
		{"/bin/sh", "", "/bin/sh", ""},
		{"escape", "/usr/bin", "", "not found in the image's PATH"},
		{"missing", "/bin", "", `"missing" not found in the image's PATH /bin`},
		{"/opt/app/data", "", "", "does not exist in the image or is not executable"},
		{"./run", "", "", "relative paths"},
	}
	for _, c := range cases {
		t.Run(c.argv0, func(t *testing.T) {
			got, err := ResolveCommand(root, c.argv0, c.path)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]unix.Signal{"SIGTERM": unix.SIGTERM, "quit": unix.SIGQUIT, "9": unix.SIGKILL, " SIGWINCH ": unix.SIGWINCH} {
		if got, ok := ParseSignal(in); !ok || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, bad := range []string{"", "SIGNOPE", "0", "99"} {
		if _, ok := ParseSignal(bad); ok {
			t.Errorf("ParseSignal(%q) accepted", bad)
		}
	}
}

func TestSpecFrom(t *testing.T) {
	meta := imagemeta.ImageMeta{Entrypoint: []string{"/docker-entrypoint.sh"}, Cmd: []string{"nginx"},
		Env: []string{"A=1"}, WorkingDir: "/srv", User: "nginx", StopSignal: "SIGQUIT"}
	s, err := SpecFrom(meta, imagemeta.Runtime{Version: 1})
	if err != nil || strings.Join(s.Argv, " ") != "/docker-entrypoint.sh nginx" || s.User != "nginx" || s.WorkingDir != "/srv" || s.StopSignal != "SIGQUIT" {
		t.Fatalf("image fallback: %+v, %v", s, err)
	}
	s, err = SpecFrom(meta, imagemeta.Runtime{Argv: []string{"/x"}, Env: []string{"B=2"}, User: "1"})
	if err != nil || s.Argv[0] != "/x" || s.Env[0] != "B=2" || s.User != "1" {
		t.Fatalf("runtime wins: %+v, %v", s, err)
	}
	for name, bad := range map[string]struct {
		m   imagemeta.ImageMeta
		err string
	}{
		"no argv":      {imagemeta.ImageMeta{}, "argv is empty"},
		"bad env":      {imagemeta.ImageMeta{Cmd: []string{"x"}, Env: []string{"NOEQUALS"}}, `env[0] "NOEQUALS" is not KEY=VALUE`},
		"relative dir": {imagemeta.ImageMeta{Cmd: []string{"x"}, WorkingDir: "srv"}, `workingDir "srv" is not absolute`},
	} {
		if _, err := SpecFrom(bad.m, imagemeta.Runtime{}); err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("%s: error = %v, want %q", name, err, bad.err)
		}
	}
}

func TestMountPlan(t *testing.T) {
	if got := OverlayOptions("/mergen/payload", "/mergen/data/upper", "/mergen/data/work"); got != "lowerdir=/mergen/payload,upperdir=/mergen/data/upper,workdir=/mergen/data/work" {
		t.Fatalf("overlay options %q", got)
	}
	var targets []string
	for _, m := range ChrootMounts("/mergen/root") {
		targets = append(targets, m.Target)
	}
	if strings.Join(targets, " ") != "/mergen/root/proc /mergen/root/sys /mergen/root/dev /mergen/root/run" {
		t.Fatalf("chroot mounts %q", targets)
	}
}

func TestNetFiles(t *testing.T) {
	hosts, resolv := NetFiles("web", &Net{Addr: net.IPv4(172, 16, 0, 2), Hostname: "web", DNS: []net.IP{net.ParseIP("172.16.0.1")}})
	if !strings.Contains(hosts, "172.16.0.2\tweb\n") || resolv != "nameserver 172.16.0.1\n" {
		t.Fatalf("hosts %q resolv %q", hosts, resolv)
	}
	hosts, resolv = NetFiles("mergen", nil)
	if !strings.Contains(hosts, "127.0.1.1\tmergen\n") || resolv != "" {
		t.Fatalf("no network: hosts %q resolv %q", hosts, resolv)
	}
}

func TestDisksByLabelReadsExt4Superblocks(t *testing.T) {
	mkfs := testenv.Tool(t, "mkfs.ext4")
	dev, sys := t.TempDir(), t.TempDir()
	for name, label := range map[string]string{"vda": "mergen-root", "vdb": "", "vdc": "mergen-payload"} {
		p := filepath.Join(dev, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Truncate(p, 4<<20)
		args := []string{"-q", "-F", p}
		if label != "" {
			args = append([]string{"-L", label}, args...)
		}
		if out, err := exec.Command(mkfs, args...).CombinedOutput(); err != nil {
			t.Fatalf("mkfs: %v %s", err, out)
		}
		os.Mkdir(filepath.Join(sys, name), 0o755)
	}
	// Not a file system at all, and a listed device with no node.
	os.WriteFile(filepath.Join(dev, "vdd"), make([]byte, 8192), 0o644)
	os.Mkdir(filepath.Join(sys, "vdd"), 0o755)
	os.Mkdir(filepath.Join(sys, "loop0"), 0o755)

	got, err := DisksByLabel(sys, dev)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"mergen-root": filepath.Join(dev, "vda"), "mergen-payload": filepath.Join(dev, "vdc")}
	if len(got) != len(want) || got["mergen-root"] != want["mergen-root"] || got["mergen-payload"] != want["mergen-payload"] {
		t.Fatalf("got %v, want %v", got, want)
	}
}
