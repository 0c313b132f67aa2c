package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/testenv"
)

func probe(ok bool) func() (bool, string) {
	return func() (bool, string) {
		if ok {
			return true, "/dev/kvm works"
		}
		return false, "no /dev/kvm"
	}
}

// secretEnv is a mergen.env= argument as the manager renders extraEnv:
// base64url of {"API_KEY":"s3cr3t-0b6f"}.
const secretEnv = "mergen.env=eyJBUElfS0VZIjoiczNjcjN0LTBiNmYifQ"

// TestQEMUArgv spells out the command line each configuration produces,
// and the boot file that carries the kernel, initrd and kernel command line
// instead of the command line.
func TestQEMUArgv(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.BootArgs += " " + secretEnv
	common := func(machine, accel, cpu string) []string {
		return []string{"qemu-system-x86_64", "-name", s.ID, "-M", machine, "-accel", accel, "-cpu", cpu,
			"-smp", "2", "-m", "512", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
			"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}
	}
	disks := func(bus string) []string {
		// The root drive comes first, whatever its place in the spec.
		return []string{
			"-drive", "file=" + dir + "/rootfs.ext4,if=none,id=disk-rootfs,format=raw,readonly=on", "-device", "virtio-blk-" + bus + ",drive=disk-rootfs",
			"-drive", "file=" + dir + "/agent.ext4,if=none,id=disk-agent,format=raw,readonly=on", "-device", "virtio-blk-" + bus + ",drive=disk-agent",
			"-drive", "file=" + dir + "/data.ext4,if=none,id=disk-data,format=raw", "-device", "virtio-blk-" + bus + ",drive=disk-data",
		}
	}
	nic := func(bus string) []string {
		return []string{"-netdev", "tap,id=n0,ifname=tap-0b6f4a2e,script=no,downscript=no", "-device", "virtio-net-" + bus + ",netdev=n0,mac=02:fc:0b:6f:4a:2e"}
	}
	agent := func(bus string) []string {
		return []string{"-device", "virtio-serial-" + bus + ",id=vser0", "-chardev", "socket,id=agent0,path=" + dir + "/agent.sock,server=on,wait=off",
			"-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.mergen.agent",
			"-chardev", "socket,id=console1,path=" + dir + "/console.sock,server=on,wait=off", "-serial", "chardev:console1"}
	}
	qmp := []string{"-qmp", "unix:" + dir + "/vmm.sock,server=on,wait=off"}
	// q35's exit device, and the kernel parameter that tells mergen-init.
	exitDev := []string{"-device", "isa-debug-exit,iobase=0xf4,iosize=1"}
	const exitArg = " mergen.exit_port=0xf4"
	boot := []string{"-readconfig", dir + "/qemu-boot.cfg"}
	bootFile := func(lines ...string) string {
		return "# The kernel and its command line, read by QEMU (-readconfig); written by mergen from vm.json.\n[machine]\n" +
			strings.Join(lines, "\n") + "\n"
	}
	kernel := `kernel = "` + dir + `/vmlinux"`
	defaultBoot := bootFile(kernel, `append = "`+s.BootArgs+` root=/dev/vda ro`+exitArg+`"`)
	microvmBoot := bootFile(kernel, `append = "`+s.BootArgs+` root=/dev/vda ro"`)

	cases := []struct {
		name   string
		driver qemu
		mutate func(*Spec)
		want   [][]string
		boot   string
	}{
		{"q35 without kvm falls back to tcg", qemu{kvmProbe: probe(false)}, nil,
			[][]string{common("q35", "tcg", "max"), boot, disks("pci"), nic("pci"), exitDev, agent("pci"), qmp}, defaultBoot},
		{"q35 with trusted kvm", qemu{kvmProbe: probe(true)}, nil,
			[][]string{common("q35", "kvm", "host"), boot, disks("pci"), nic("pci"), exitDev, agent("pci"), qmp}, defaultBoot},
		{"tcg forced over kvm", qemu{accel: "tcg", kvmProbe: probe(true)}, nil,
			[][]string{common("q35", "tcg", "max"), boot, disks("pci"), nic("pci"), exitDev, agent("pci"), qmp}, defaultBoot},
		{"microvm uses virtio-mmio devices, no exit device", qemu{machine: "microvm", kvmProbe: probe(false)}, nil,
			[][]string{common("microvm", "tcg", "max"), boot, disks("device"), nic("device"), agent("device"), qmp}, microvmBoot},
		{"initrd, entropy, own binary, caller's root=", qemu{bin: "/opt/qemu/bin/qemu-system-x86_64", entropy: true, kvmProbe: probe(false)},
			func(s *Spec) {
				s.Initrd = dir + "/initrd.img"
				s.BootArgs = "console=ttyS0,115200 root=LABEL=x rw " + secretEnv
			},
			[][]string{
				append([]string{"/opt/qemu/bin/qemu-system-x86_64"}, common("q35", "tcg", "max")[1:]...),
				boot,
				disks("pci"), nic("pci"), exitDev,
				{"-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"},
				agent("pci"), qmp,
			},
			bootFile(kernel, `initrd = "`+dir+`/initrd.img"`, `append = "console=ttyS0,115200 root=LABEL=x rw `+secretEnv+exitArg+`"`)},
		{"no network, no disks", qemu{kvmProbe: probe(false)}, func(s *Spec) { s.NIC = nil; s.Drives = nil },
			[][]string{common("q35", "tcg", "max"), boot, exitDev, agent("pci"), qmp}, bootFile(kernel, `append = "`+s.BootArgs+exitArg+`"`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := s
			s.Drives = slices.Clone(s.Drives)
			if tc.mutate != nil {
				tc.mutate(&s)
			}
			cfg, err := tc.driver.config(s)
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Concat(tc.want...)
			if !slices.Equal(cfg.Argv, want) {
				t.Errorf("argv:\n got %q\nwant %q", cfg.Argv, want)
			}
			assertNoBootArgs(t, cfg.Argv, cfg.BootArgs)
			b, err := cfg.bootFile()
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.boot {
				t.Errorf("boot file:\n got %q\nwant %q", b, tc.boot)
			}
		})
	}
}

// assertNoBootArgs checks that a VMM's argv shows neither the kernel command
// line nor any part of extraEnv: /proc/<pid>/cmdline is world-readable.
func assertNoBootArgs(t *testing.T, argv []string, bootArgs string) {
	t.Helper()
	if bootArgs == "" {
		t.Fatal("no boot args to look for")
	}
	for i, a := range argv {
		if strings.Contains(a, "mergen.env") || strings.Contains(a, bootArgs) {
			t.Errorf("argv[%d] = %q shows the kernel command line", i, a)
		}
	}
}

// TestQEMUBootFileRefusesWhatItCannotCarry: QEMU's configuration file has a
// line limit and no escapes; such boot args are refused at create, naming
// the field, instead of reaching QEMU cut or on its command line.
func TestQEMUBootFileRefusesWhatItCannotCarry(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	d := &qemu{kvmProbe: probe(false)}
	// "append" line: append = "<args root=/dev/vda ro mergen.exit_port=0xf4>",
	// at most 1023 bytes.
	fits := strings.Repeat("a", 1012-len(" root=/dev/vda ro mergen.exit_port=0xf4"))
	s.BootArgs = fits
	if _, err := d.Config(s); err != nil {
		t.Errorf("boot args of 1012 bytes: %v", err)
	}
	for _, args := range []string{fits + "b", `console=ttyS0 foo="a b"`} {
		s.BootArgs = args
		if _, err := d.Config(s); err == nil || !strings.Contains(err.Error(), "bootArgs") {
			t.Errorf("boot args %.40q…: %v, want an error naming bootArgs", args, err)
		}
	}
	// Too long, the line names every request field that goes into it.
	s.BootArgs = fits + "b"
	if _, err := d.Config(s); err == nil || !strings.Contains(err.Error(), "bootArgs, extraEnv and argv: the kernel command line: 1013 bytes, at most 1012") {
		t.Errorf("boot args of 1013 bytes: %v, want an error naming bootArgs, extraEnv and argv", err)
	}
	s.BootArgs = "console=ttyS0"
	s.WorkDir = ""
	if _, err := d.Config(s); err == nil || !strings.Contains(err.Error(), "workDir") {
		t.Errorf("no work dir: %v, want an error naming workDir", err)
	}
}

func TestQEMUConfigGolden(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	b, err := (&qemu{kvmProbe: probe(false)}).Config(s)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "qemu.json", dir, b)
}

func TestQEMUSettingsAreChecked(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	for _, d := range []qemu{{machine: "pc"}, {accel: "hvf"}} {
		_, err := d.Config(s)
		if err == nil || !strings.Contains(err.Error(), "MGR_QEMU_") {
			t.Errorf("Config with %+v = %v, want an error naming the variable", d, err)
		}
		err = (&qemu{bin: "/bin/sh", machine: d.machine, accel: d.accel}).Check()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("Check with %+v = %v, want ErrUnavailable", d, err)
		}
	}
}

func TestQEMUBootsTheBzImageNextToAVmlinux(t *testing.T) {
	dir := t.TempDir()
	vmlinux := filepath.Join(dir, "vmlinux")
	os.WriteFile(vmlinux, nil, 0o644)
	if got := bzImage(vmlinux); got != vmlinux {
		t.Errorf("without a sibling: %s, want the vmlinux itself", got)
	}
	vmlinuz := filepath.Join(dir, "vmlinuz")
	os.WriteFile(vmlinuz, nil, 0o644)
	if got := bzImage(vmlinux); got != vmlinuz {
		t.Errorf("with a sibling vmlinuz: %s, want %s", got, vmlinuz)
	}
	bin := filepath.Join(dir, "vmlinux.bin")
	os.WriteFile(bin, nil, 0o644)
	if got := bzImage(bin); got != vmlinuz {
		t.Errorf("vmlinux.bin with a sibling vmlinuz: %s, want %s", got, vmlinuz)
	}
	other := filepath.Join(dir, "bzImage")
	if got := bzImage(other); got != other {
		t.Errorf("a kernel not named vmlinux: %s, want it unchanged", got)
	}
}

// TestQEMUCommandRunsTheStoredArgv: vm.json is the record of what runs;
// Command writes the boot file it names, private to its owner.
func TestQEMUCommandRunsTheStoredArgv(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.Initrd = filepath.Join(dir, "initrd.img")
	s.BootArgs += " " + secretEnv
	d := &qemu{bin: "/bin/true", kvmProbe: probe(false)}
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "vm.json")
	os.WriteFile(cfgPath, b, 0o600)
	var cfg qemuConfig
	json.Unmarshal(b, &cfg)
	bootPath := filepath.Join(dir, qemuBootFile)
	// A file left by an earlier run, even a link elsewhere, is replaced,
	// never written through.
	elsewhere := filepath.Join(dir, "elsewhere")
	os.WriteFile(elsewhere, []byte("untouched"), 0o644)
	if err := os.Symlink(elsewhere, bootPath); err != nil {
		t.Fatal(err)
	}
	l, err := d.Command(s, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkQEMULaunch(t, l, s, cfg, bootPath)
	if got := readFile(elsewhere); string(got) != "untouched" {
		t.Errorf("the link's target was written: %q", got)
	}
	if len(l.Files) != 2+len(s.Drives) {
		t.Errorf("%d files open, want %d", len(l.Files), 2+len(s.Drives))
	}

	// The record, not vm.json, says which files the VM has: a vm.json
	// naming another drive is refused. A disk removed since create, or
	// swapped for a link, fails here naming the drive; the link's target
	// is not opened.
	other := s
	other.Drives = slices.Clone(s.Drives)
	other.Drives[0].Path = filepath.Join(dir, "initrd.img")
	if _, err := d.Command(other, cfgPath); err == nil || !strings.Contains(err.Error(), "not one of the VM's") {
		t.Errorf("Command with a vm.json naming other files = %v, want a refusal", err)
	}
	canary := filepath.Join(t.TempDir(), "canary")
	os.WriteFile(canary, []byte("canary"), 0o600)
	os.Rename(s.Drives[2].Path, s.Drives[2].Path+".orig")
	if _, err := d.Command(s, cfgPath); err == nil || !strings.Contains(err.Error(), "drive data") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Command with a missing disk = %v, want an error naming the drive", err)
	}
	os.Symlink(canary, s.Drives[2].Path)
	if _, err := d.Command(s, cfgPath); err == nil || !strings.Contains(err.Error(), "drive data") || !errors.Is(err, beneath.ErrLink) {
		t.Errorf("Command with a disk swapped for a link = %v, want a refusal naming the drive", err)
	}
	os.Remove(s.Drives[2].Path)
	os.Rename(s.Drives[2].Path+".orig", s.Drives[2].Path)
	os.Rename(s.Kernel, s.Kernel+".orig")
	os.Symlink(canary, s.Kernel)
	if _, err := d.Command(s, cfgPath); err == nil || !strings.Contains(err.Error(), "kernel") || !errors.Is(err, beneath.ErrLink) {
		t.Errorf("Command with the kernel swapped for a link = %v, want a refusal naming it", err)
	}
	os.Remove(s.Kernel)
	os.Rename(s.Kernel+".orig", s.Kernel)

	other = s
	other.SocketPath = filepath.Join(dir, "other.sock")
	if _, err := d.Command(other, cfgPath); err == nil || !strings.Contains(err.Error(), "QMP socket") {
		t.Errorf("Command with a different socket = %v, want a mismatch error", err)
	}
	other = s
	other.WorkDir = filepath.Join(dir, "elsewhere.d")
	if _, err := d.Command(other, cfgPath); err == nil || !strings.Contains(err.Error(), "boot configuration") {
		t.Errorf("Command with a different run directory = %v, want a mismatch error", err)
	}
	fc, _ := (&firecracker{}).Config(s)
	os.WriteFile(cfgPath, fc, 0o600)
	if _, err := d.Command(s, cfgPath); err == nil || !strings.Contains(err.Error(), "not a qemu configuration") {
		t.Errorf("Command on a Firecracker vm.json = %v, want a refusal", err)
	}
	// A hand-edited argv that puts the command line back is refused.
	edited := cfg
	edited.Argv = append(slices.Clone(cfg.Argv), "-append", cfg.BootArgs)
	eb, _ := json.Marshal(edited)
	os.WriteFile(cfgPath, eb, 0o600)
	if _, err := d.Command(s, cfgPath); err == nil || !strings.Contains(err.Error(), "-append") {
		t.Errorf("Command on an argv with -append = %v, want a refusal", err)
	}
}

// TestQEMUCommandKeepsAnOlderVMJSONsBootArgsOffArgv: a vm.json rendered
// before the boot file carried -kernel, -initrd and -append in its argv.
// Command runs it with -readconfig in their place and the same boot file
// as a new one.
func TestQEMUCommandKeepsAnOlderVMJSONsBootArgsOffArgv(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.Initrd = filepath.Join(dir, "initrd.img")
	s.BootArgs += " " + secretEnv
	d := &qemu{bin: "/bin/true", kvmProbe: probe(false)}
	cur, err := d.config(s)
	if err != nil {
		t.Fatal(err)
	}
	old := cur
	old.BootConfig = ""
	i := slices.Index(cur.Argv, "-readconfig")
	old.Argv = slices.Concat(cur.Argv[:i],
		[]string{"-kernel", cur.Kernel, "-initrd", cur.Initrd, "-append", cur.BootArgs}, cur.Argv[i+2:])
	b, _ := json.Marshal(old)
	cfgPath := filepath.Join(dir, "vm.json")
	os.WriteFile(cfgPath, b, 0o600)
	l, err := d.Command(s, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkQEMULaunch(t, l, s, cur, filepath.Join(dir, qemuBootFile))
}

// checkQEMULaunch checks a launch against the vm.json it ran: the stored
// argv, but each -drive's file= a descriptor of the launch open on the
// drive's inode (writable only for a writable drive), and the boot file
// naming the kernel and initrd by descriptors open on them.
func checkQEMULaunch(t *testing.T, l Launch, s Spec, cfg qemuConfig, bootPath string) {
	t.Helper()
	if len(l.Argv) != len(cfg.Argv) {
		t.Fatalf("Command = %q\nvm.json argv %q", l.Argv, cfg.Argv)
	}
	drives := map[string]Drive{}
	for _, d := range s.Drives {
		drives["disk-"+d.ID] = d
	}
	for i, a := range l.Argv {
		if i == 0 {
			// The binary as found on PATH when vm.json names it bare.
			if filepath.Base(a) != filepath.Base(cfg.Argv[0]) {
				t.Errorf("argv[0] = %q, vm.json has %q", a, cfg.Argv[0])
			}
			continue
		}
		if l.Argv[i-1] == "-netdev" && s.NIC != nil && s.NIC.File != nil {
			// The tap handed over open, in place of its name.
			if want := "tap,id=n0,fd=" + strconv.Itoa(int(s.NIC.File.Fd())); a != want || !slices.Contains(l.Files, s.NIC.File) {
				t.Errorf("argv[%d] = %q, want %q with the tap among the launch's files", i, a, want)
			}
			continue
		}
		if l.Argv[i-1] != "-drive" {
			if a != cfg.Argv[i] {
				t.Errorf("argv[%d] = %q, vm.json has %q", i, a, cfg.Argv[i])
			}
			continue
		}
		fdPath, rest, _ := strings.Cut(strings.TrimPrefix(a, "file="), ",")
		_, wantRest, _ := strings.Cut(cfg.Argv[i], ",")
		if rest != wantRest || !strings.HasPrefix(fdPath, "/proc/self/fd/") {
			t.Errorf("argv[%d] = %q, want vm.json's %q with file=/proc/self/fd/N", i, a, cfg.Argv[i])
			continue
		}
		id := ""
		for _, opt := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(opt, "id="); ok {
				id = v
			}
		}
		d, ok := drives[id]
		if !ok {
			t.Errorf("argv[%d] = %q: no drive %s", i, a, id)
			continue
		}
		checkFDPath(t, l, fdPath, d.Path, !d.ReadOnly)
	}
	assertNoBootArgs(t, l.Argv, cfg.BootArgs)
	boot := string(readFile(bootPath))
	value := func(key string) string {
		for _, line := range strings.Split(boot, "\n") {
			if v, ok := strings.CutPrefix(line, key+` = "`); ok {
				return strings.TrimSuffix(v, `"`)
			}
		}
		return ""
	}
	want := cfg
	want.Kernel, want.Initrd = value("kernel"), value("initrd")
	checkFDPath(t, l, want.Kernel, cfg.Kernel, false)
	if cfg.Initrd != "" {
		checkFDPath(t, l, want.Initrd, cfg.Initrd, false)
	}
	owner := os.Geteuid()
	if s.UID != 0 {
		owner = s.UID
	}
	checkBootFile(t, bootPath, want, owner)
}

// checkBootFile: the boot file holds what cfg says, is a regular file of
// owner (the VM's uid, which QEMU runs as, or the process's own user for
// records without one), mode 0600.
func checkBootFile(t *testing.T, path string, cfg qemuConfig, owner int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %s, want a regular file with mode 0600", path, fi.Mode())
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; int(uid) != owner {
		t.Errorf("%s: owned by uid %d, want %d", path, uid, owner)
	}
	want, err := cfg.bootFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(path); string(got) != string(want) {
		t.Errorf("%s:\n%s\nwant\n%s", path, got, want)
	}
}

// startQEMU starts a real, paused QEMU with no guest and two QMP sockets:
// one for the driver, one for the test to watch with (a QMP socket serves
// one client at a time).
func startQEMU(t *testing.T, machine string) (socket, watch string) {
	t.Helper()
	bin := testenv.Tool(t, qemuDefaultBin)
	dir := t.TempDir()
	socket, watch = filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "watch.sock")
	startProcess(t, []string{bin, "-M", machine, "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-qmp", "unix:" + socket + ",server=on,wait=off", "-qmp", "unix:" + watch + ",server=on,wait=off"},
		filepath.Join(dir, "qemu.log"))
	return socket, watch
}

// TestQMPAgainstRealQEMU: handshake, status, pause and resume, Ctrl-Alt-Del on q35, the ACPI
// power button on microvm (which has no keyboard), all on a real QEMU.
func TestQMPAgainstRealQEMU(t *testing.T) {
	d := &qemu{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, machine := range []string{"q35", "microvm"} {
		t.Run(machine, func(t *testing.T) {
			socket, watch := startQEMU(t, machine)
			st := waitStatus(ctx, t, d, socket, func(State) bool { return true })
			if st.Running || st.State != "prelaunch" {
				t.Errorf("paused QEMU: Status = %+v, want not running, prelaunch", st)
			}

			c, err := dialQMP(ctx, watch)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.execute("cont", nil, nil); err != nil {
				t.Fatal(err)
			}
			st, err = d.Status(ctx, socket)
			if err != nil {
				t.Fatal(err)
			}
			if !st.Running || st.State != "running" {
				t.Errorf("after cont: Status = %+v, want running", st)
			}

			// Pause and resume, each twice: QMP's stop on a stopped
			// machine and cont on a running one succeed.
			for range 2 {
				if err := d.Pause(ctx, socket); err != nil {
					t.Fatal(err)
				}
				if st, err := d.Status(ctx, socket); err != nil || st.Running || !st.Paused || st.State != "paused" {
					t.Errorf("after Pause: Status = %+v, %v, want paused", st, err)
				}
			}
			for range 2 {
				if err := d.Resume(ctx, socket); err != nil {
					t.Fatal(err)
				}
				if st, err := d.Status(ctx, socket); err != nil || !st.Running || st.Paused || st.State != "running" {
					t.Errorf("after Resume: Status = %+v, %v, want running", st, err)
				}
			}

			if err := d.Shutdown(ctx, socket); err != nil {
				t.Fatal(err)
			}
			// Events go to every QMP client: the watcher sees the power
			// button press on microvm. On q35 the key press leaves no event;
			// a POWERDOWN would mean the key press was not used.
			// Ask QEMU to quit without execute, which would skip the
			// events, and read everything up to the end of the session.
			if _, err := c.conn.Write([]byte(`{"execute": "quit"}` + "\n")); err != nil {
				t.Fatal(err)
			}
			events := readEvents(c)
			wantPowerdown := machine == "microvm"
			if slices.Contains(events, "POWERDOWN") != wantPowerdown {
				t.Errorf("events after Shutdown on %s: %v (POWERDOWN expected: %v)", machine, events, wantPowerdown)
			}
		})
	}
}

// readEvents drains the events a connection has received until QEMU closes
// it.
func readEvents(c *qmpConn) []string {
	var events []string
	for {
		var m qmpMessage
		if err := c.dec.Decode(&m); err != nil {
			return events
		}
		if m.Event != "" {
			events = append(events, m.Event)
		}
	}
}

func TestQMPErrorsNameTheSocket(t *testing.T) {
	ctx := context.Background()
	absent := filepath.Join(t.TempDir(), "absent.sock")
	if _, err := (&qemu{}).Status(ctx, absent); err == nil || !strings.Contains(err.Error(), absent) {
		t.Errorf("Status on a missing socket = %v, want an error naming it", err)
	}
	socket, _ := startQEMU(t, "q35")
	waitStatus(ctx, t, &qemu{}, socket, func(State) bool { return true })
	c, err := dialQMP(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.execute("no-such-command", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "CommandNotFound") || !strings.Contains(err.Error(), "no-such-command") {
		t.Errorf("unknown command: %v", err)
	}
	// The connection stays usable after an error answer.
	if err := c.execute("query-status", nil, nil); err != nil {
		t.Error(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := (&qemu{}).Status(cctx, socket); !errors.Is(err, context.Canceled) {
		t.Errorf("Status with a cancelled context = %v, want context.Canceled", err)
	}
}

// startProcess runs argv with output to logPath and kills it when the test
// ends.
func startProcess(t *testing.T, argv []string, logPath string) *os.Process {
	t.Helper()
	return startLaunch(t, Launch{Argv: argv}, logPath)
}

// startLaunch runs a Launch as the start stage does, its files inherited,
// with output to logPath, and kills it when the test ends.
func startLaunch(t *testing.T, l Launch, logPath string) *os.Process {
	t.Helper()
	argv := l.Argv
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := execCmd(l)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.Close() // the VMM has them now
	done := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s output:\n%s", filepath.Base(argv[0]), b)
		}
	})
	return cmd.Process
}

// waitStatus polls Status until ok accepts the answer or ctx ends; the VMM
// needs a moment to create its socket.
func waitStatus(ctx context.Context, t *testing.T, d Driver, socket string, ok func(State) bool) State {
	t.Helper()
	var last error
	for {
		st, err := d.Status(ctx, socket)
		if err == nil && ok(st) {
			return st
		}
		if err == nil {
			err = errors.New("state " + st.State)
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("%s did not answer as expected: %v", d.Name(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// The VM document reports the accelerator vm.json was rendered with, and
// why for TCG.
func TestAcceleratorIsReadFromVMJSON(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	b, err := newQEMU(config.Driver{QEMUAccel: "tcg"}).Config(s)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "vm.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if a, note := Accelerator("qemu", p); a != "tcg" || note != "MGR_QEMU_ACCEL=tcg" {
		t.Errorf("Accelerator(qemu) = %q, %q; want tcg with its reason", a, note)
	}
	if a, _ := Accelerator("firecracker", p); a != "kvm" {
		t.Errorf("Accelerator(firecracker) = %q, want kvm", a)
	}
	// Rendered again (replaced by rename, as the store writes it): the
	// answer follows the file, not what was read before.
	b, err = newQEMU(config.Driver{QEMUAccel: "kvm"}).Config(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if a, note := Accelerator("qemu", p); a != "kvm" || note != "" {
		t.Errorf("Accelerator(qemu) after a re-render = %q, %q; want kvm", a, note)
	}
	if a, _ := Accelerator("qemu", filepath.Join(dir, "missing.json")); a != "" {
		t.Errorf("Accelerator of a missing vm.json = %q, want empty", a)
	}
}

// The accelerator is read from the top of vm.json: a document without it
// (rendered before it was recorded) or not a JSON object says nothing, and
// one whose fields come in another order still says what they say.
func TestAcceleratorOfOtherVMJSONs(t *testing.T) {
	dir := t.TempDir()
	for i, c := range []struct{ doc, accel, note string }{
		{`{"vmm":"qemu","machine":"q35","argv":["qemu"]}`, "", ""},
		{`{"argv":["a","b"],"drives":[{"id":"x"}],"accelReason":"no /dev/kvm","accel":"tcg"}`, "tcg", "no /dev/kvm"},
		{`{"vmm":"qemu","accel":"kvm","accelReason":""}`, "kvm", ""},
		{`["accel","tcg"]`, "", ""},
		{`{"accel":`, "", ""},
	} {
		p := filepath.Join(dir, fmt.Sprintf("vm%d.json", i))
		if err := os.WriteFile(p, []byte(c.doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if a, note := Accelerator("qemu", p); a != c.accel || note != c.note {
			t.Errorf("Accelerator of %s = %q, %q; want %q, %q", c.doc, a, note, c.accel, c.note)
		}
	}
}
