package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

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
			"-smp", "2", "-m", "512", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot"}
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
	qmp := []string{"-qmp", "unix:" + dir + "/vmm.sock,server=on,wait=off"}
	boot := []string{"-readconfig", dir + "/qemu-boot.cfg"}
	bootFile := func(lines ...string) string {
		return "# The kernel and its command line, read by QEMU (-readconfig); written by mergen from vm.json.\n[machine]\n" +
			strings.Join(lines, "\n") + "\n"
	}
	kernel := `kernel = "` + dir + `/vmlinux"`
	defaultBoot := bootFile(kernel, `append = "`+s.BootArgs+` root=/dev/vda ro"`)

	cases := []struct {
		name   string
		driver qemu
		mutate func(*Spec)
		want   [][]string
		boot   string
	}{
		{"q35 without kvm falls back to tcg", qemu{kvmProbe: probe(false)}, nil,
			[][]string{common("q35", "tcg", "max"), boot, disks("pci"), nic("pci"), qmp}, defaultBoot},
		{"q35 with trusted kvm", qemu{kvmProbe: probe(true)}, nil,
			[][]string{common("q35", "kvm", "host"), boot, disks("pci"), nic("pci"), qmp}, defaultBoot},
		{"tcg forced over kvm", qemu{accel: "tcg", kvmProbe: probe(true)}, nil,
			[][]string{common("q35", "tcg", "max"), boot, disks("pci"), nic("pci"), qmp}, defaultBoot},
		{"microvm uses virtio-mmio devices", qemu{machine: "microvm", kvmProbe: probe(false)}, nil,
			[][]string{common("microvm", "tcg", "max"), boot, disks("device"), nic("device"), qmp}, defaultBoot},
		{"initrd, entropy, own binary, caller's root=", qemu{bin: "/opt/qemu/bin/qemu-system-x86_64", entropy: true, kvmProbe: probe(false)},
			func(s *Spec) {
				s.Initrd = dir + "/initrd.img"
				s.BootArgs = "console=ttyS0,115200 root=LABEL=x rw " + secretEnv
			},
			[][]string{
				append([]string{"/opt/qemu/bin/qemu-system-x86_64"}, common("q35", "tcg", "max")[1:]...),
				boot,
				disks("pci"), nic("pci"),
				{"-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"},
				qmp,
			},
			bootFile(kernel, `initrd = "`+dir+`/initrd.img"`, `append = "console=ttyS0,115200 root=LABEL=x rw `+secretEnv+`"`)},
		{"no network, no disks", qemu{kvmProbe: probe(false)}, func(s *Spec) { s.NIC = nil; s.Drives = nil },
			[][]string{common("q35", "tcg", "max"), boot, qmp}, bootFile(kernel, `append = "`+s.BootArgs+`"`)},
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
	// "append" line: append = "<args root=/dev/vda ro>", at most 1023 bytes.
	fits := strings.Repeat("a", 1012-len(" root=/dev/vda ro"))
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
	argv, err := d.Command(s, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(argv, cfg.Argv) {
		t.Errorf("Command = %q\nvm.json argv %q", argv, cfg.Argv)
	}
	assertNoBootArgs(t, argv, cfg.BootArgs)
	checkBootFile(t, bootPath, cfg)
	if got := readFile(elsewhere); string(got) != "untouched" {
		t.Errorf("the link's target was written: %q", got)
	}

	other := s
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
	argv, err := d.Command(s, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(argv, cur.Argv) {
		t.Errorf("Command = %q\nwant  %q", argv, cur.Argv)
	}
	assertNoBootArgs(t, argv, cur.BootArgs)
	checkBootFile(t, filepath.Join(dir, qemuBootFile), cur)
}

// checkBootFile: the boot file holds what cfg says, is a regular file of
// the process's own user (root, when the lifecycle runs it), mode 0600.
func checkBootFile(t *testing.T, path string, cfg qemuConfig) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %s, want a regular file with mode 0600", path, fi.Mode())
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Geteuid() {
		t.Errorf("%s: owned by uid %d, want %d", path, uid, os.Geteuid())
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

// TestQMPAgainstRealQEMU: handshake, status, Ctrl-Alt-Del on q35, the ACPI
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
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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
