package vmm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
)

// testSpec returns a valid spec whose files exist under dir.
func testSpec(t testing.TB, dir string) Spec {
	t.Helper()
	for _, f := range []string{"vmlinux", "initrd.img", "rootfs.ext4", "agent.ext4", "data.ext4"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Spec{
		ID:            "0b6f4a2e-9c1d-4e8f-a0b1-3c5d7e9f1a2b",
		VCPU:          2,
		MemMiB:        512,
		Kernel:        filepath.Join(dir, "vmlinux"),
		KernelBeneath: dir,
		BootArgs:      "console=ttyS0 reboot=k panic=1 init=/sbin/init",
		Drives: []Drive{
			{ID: "agent", Path: filepath.Join(dir, "agent.ext4"), Beneath: dir, ReadOnly: true},
			{ID: "rootfs", Path: filepath.Join(dir, "rootfs.ext4"), Beneath: dir, ReadOnly: true, Root: true},
			{ID: "data", Path: filepath.Join(dir, "data.ext4"), Beneath: dir},
		},
		NIC:        &NIC{TapName: "tap-0b6f4a2e", MAC: "02:fc:0b:6f:4a:2e"},
		SocketPath: filepath.Join(dir, "vmm.sock"),
		WorkDir:    dir,
	}
}

func TestNewKnowsEachDriverAndListsThemOtherwise(t *testing.T) {
	for _, name := range Names {
		d, err := New(name, config.Driver{})
		if err != nil {
			t.Fatalf("New(%q): %v", name, err)
		}
		if d.Name() != name {
			t.Errorf("New(%q).Name() = %q", name, d.Name())
		}
	}
	_, err := New("cloud-hypervisor", config.Driver{})
	if err == nil {
		t.Fatal("New(cloud-hypervisor) succeeded")
	}
	for _, want := range []string{`"cloud-hypervisor"`, "firecracker", "qemu"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestDefaultNameIsFirecrackerOnlyWhenItsBinaryIsFound(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "firecracker")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := DefaultName(config.Driver{FirecrackerBin: bin}); got != "firecracker" {
		t.Errorf("with MGR_FIRECRACKER_BIN=%s: DefaultName() = %q, want firecracker", bin, got)
	}
	if got := DefaultName(config.Driver{FirecrackerBin: filepath.Join(dir, "absent")}); got != "qemu" {
		t.Errorf("with a missing firecracker binary: DefaultName() = %q, want qemu", got)
	}
}

func TestCheckReportsAMissingBinaryAsUnavailable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent")
	for _, d := range []Driver{&firecracker{bin: missing}, &qemu{bin: missing}} {
		err := d.Check()
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), missing) {
			t.Errorf("%s.Check() = %v, want ErrUnavailable naming %s", d.Name(), err, missing)
		}
	}
}

func TestValidateNamesTheFieldAndTheProblem(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(*Spec)
		want   string
	}{
		{"id with a slash", func(s *Spec) { s.ID = "a/b" }, "id:"},
		{"empty id", func(s *Spec) { s.ID = "" }, "id:"},
		{"no vcpu", func(s *Spec) { s.VCPU = 0 }, "vcpu: 0 is out of range 1..32"},
		{"too many vcpus", func(s *Spec) { s.VCPU = 33 }, "vcpu: 33 is out of range"},
		{"too little memory", func(s *Spec) { s.MemMiB = 64 }, "memMiB: 64 is below the minimum of 128"},
		{"missing kernel", func(s *Spec) { s.Kernel = filepath.Join(dir, "nope") }, "kernel:"},
		{"kernel is a directory", func(s *Spec) { s.Kernel = filepath.Join(dir, "adir") }, "kernel: " + filepath.Join(dir, "adir") + " is not a regular file"},
		{"missing initrd", func(s *Spec) { s.Initrd = filepath.Join(dir, "nope") }, "initrd:"},
		{"multi-line boot args", func(s *Spec) { s.BootArgs = "a\nb" }, "bootArgs: must be one line"},
		{"drive is a directory", func(s *Spec) { s.Drives[0].Path = filepath.Join(dir, "adir") }, "drives[0].path:"},
		{"missing drive", func(s *Spec) { s.Drives[2].Path = filepath.Join(dir, "gone.ext4") }, "drives[2].path:"},
		{"drive outside the root it was checked in", func(s *Spec) { s.Drives[1].Beneath = filepath.Join(dir, "adir") }, "drives[1].path: " + filepath.Join(dir, "rootfs.ext4") + " is not below"},
		{"kernel outside the root it was checked in", func(s *Spec) { s.KernelBeneath = "/srv" }, "kernel:"},
		{"relative drive path", func(s *Spec) { s.Drives[0].Path = "agent.ext4" }, "drives[0].path:"},
		{"duplicate drive id", func(s *Spec) { s.Drives[1].ID = "agent" }, `drives[1].id: "agent" is used twice`},
		{"bad drive id", func(s *Spec) { s.Drives[0].ID = "a b" }, "drives[0].id:"},
		{"two roots", func(s *Spec) { s.Drives[0].Root = true }, "drives: 2 drives are marked root"},
		{"empty tap", func(s *Spec) { s.NIC.TapName = "" }, "nic.tapName:"},
		{"long tap", func(s *Spec) { s.NIC.TapName = "tap-0123456789abcdef" }, "nic.tapName:"},
		{"bad mac", func(s *Spec) { s.NIC.MAC = "02:fc" }, "nic.mac:"},
		{"multicast mac", func(s *Spec) { s.NIC.MAC = "01:00:5e:00:00:01" }, "nic.mac: \"01:00:5e:00:00:01\" is a multicast address"},
		{"no socket", func(s *Spec) { s.SocketPath = "" }, "socketPath: empty"},
		{"socket path too long", func(s *Spec) { s.SocketPath = "/" + strings.Repeat("s", 120) }, "socketPath:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec(t, dir)
			tc.mutate(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		if err := testSpec(t, dir).Validate(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestAppendArgsKeepsWhatTheCallerSet(t *testing.T) {
	cases := []struct{ cmdline, add, want string }{
		{"console=ttyS0", "pci=off", "console=ttyS0 pci=off"},
		{"console=ttyS0 pci=on", "pci=off", "console=ttyS0 pci=on"},
		{"", "root=/dev/vda", "root=/dev/vda"},
		{"quiet ro", "ro", "quiet ro"},
		{"  spaced  ", "rw", "spaced rw"},
	}
	for _, tc := range cases {
		if got := appendArgs(tc.cmdline, tc.add); got != tc.want {
			t.Errorf("appendArgs(%q, %q) = %q, want %q", tc.cmdline, tc.add, got, tc.want)
		}
	}
}

// TestKVMProbeRefusesWhatIsNotKVM: a missing device and a device that does
// not answer KVM's ioctls are both unusable, and the reason says which.
func TestKVMProbeRefusesWhatIsNotKVM(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "kvm")
	if err := probeKVM(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("probeKVM(missing) = %v, want an error naming the path", err)
	}
	if err := probeKVM(os.DevNull); err == nil || !strings.Contains(err.Error(), "KVM_GET_API_VERSION") {
		t.Errorf("probeKVM(%s) = %v, want the API version query to fail", os.DevNull, err)
	}
}

// The KVM verdict is probed again only once it is kvmVerdictTTL old: the
// creates in between reuse it.
func TestKVMVerdictIsReusedForItsTTL(t *testing.T) {
	probes := 0
	m := &verdictMemo{probe: func() (bool, string) { probes++; return probes%2 == 1, fmt.Sprint("probe ", probes) }, ttl: time.Second}
	t0 := time.Now()
	for _, at := range []time.Duration{0, time.Millisecond, 999 * time.Millisecond} {
		if ok, why := m.get(t0.Add(at)); !ok || why != "probe 1" || probes != 1 {
			t.Fatalf("at +%v: %v %q after %d probes; want the first answer, probed once", at, ok, why, probes)
		}
	}
	if ok, why := m.get(t0.Add(time.Second)); ok || why != "probe 2" {
		t.Fatalf("after the TTL: %v %q; want a new probe's answer", ok, why)
	}
	// A clock that went back does not keep an answer forever.
	if _, why := m.get(t0); why != "probe 3" {
		t.Fatalf("after the clock went back: %q; want a new probe", why)
	}
}

func TestResolvePinsAbsoluteBinariesAndOnlyTheDriversOwnSettings(t *testing.T) {
	dir := t.TempDir()
	qemuBin := filepath.Join(dir, "qemu-system-x86_64")
	if err := os.WriteFile(qemuBin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	host := config.Driver{Jailer: true, JailerUID: "1000", FirecrackerBin: "/opt/fc", QEMUAccel: "tcg", Entropy: true}
	got := Resolve("qemu", host)
	want := config.Driver{QEMUBin: qemuBin, QEMUAccel: "tcg", Entropy: true}
	if got != want {
		t.Errorf("Resolve(qemu) = %+v, want %+v", got, want)
	}
	fc := Resolve("firecracker", host)
	if fc.QEMUAccel != "" || !fc.Jailer || fc.JailerUID != "1000" || fc.FirecrackerBin != "/opt/fc" || fc.JailerBin != "" {
		t.Errorf("Resolve(firecracker) = %+v: want jailer settings kept, qemu dropped, missing binaries as configured", fc)
	}
}

// execCmd is the command of a Launch as the start stage runs it: each open
// file inherited at its own descriptor number, so that the /proc/self/fd/N
// paths in its argv and configuration name them in the VMM.
func execCmd(l Launch) *exec.Cmd {
	cmd := exec.Command(l.Argv[0], l.Argv[1:]...)
	for _, f := range l.Files {
		n := int(f.Fd()) - 3
		for len(cmd.ExtraFiles) <= n {
			cmd.ExtraFiles = append(cmd.ExtraFiles, nil)
		}
		cmd.ExtraFiles[n] = f
	}
	if c := l.Cred; c != nil {
		// As the start stage does: the VMM runs as the VM's own ids.
		groups := make([]uint32, len(c.Groups))
		for i, g := range c.Groups {
			groups[i] = uint32(g)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(c.UID), Gid: uint32(c.GID), Groups: groups}}
	}
	return cmd
}

// checkFDPath checks that fdPath (/proc/self/fd/N) names one of the
// launch's files, that it is host's inode, and that it is open for writing
// exactly when writable.
func checkFDPath(t *testing.T, l Launch, fdPath, host string, writable bool) {
	t.Helper()
	var f *os.File
	for _, lf := range l.Files {
		if beneath.FDPath(lf) == fdPath {
			f = lf
		}
	}
	if f == nil {
		t.Errorf("%s (for %s) is none of the launch's files", fdPath, host)
		return
	}
	got, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.Stat(host)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(got, want) {
		t.Errorf("%s is not %s", fdPath, host)
	}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rw := fl&unix.O_ACCMODE == unix.O_RDWR; rw != writable {
		t.Errorf("%s (%s) open for writing: %t, want %t", fdPath, host, rw, writable)
	}
	if fd, _ := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); fd&unix.FD_CLOEXEC == 0 {
		t.Errorf("%s has close-on-exec cleared before the exec", fdPath)
	}
}
