package vmm

import (
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/testenv"
)

// TestQEMUBootsARealKernelAndStopsOnCtrlAltDel runs the driver's own
// Config and Command with a real kernel under TCG: QEMU accepts the disks
// (read-only and writable) and, as root, the tap in a network namespace the
// test made; the guest's console reaches the VMM's stdout, QMP reports it
// running, and Shutdown's Ctrl-Alt-Del makes the guest reset, which ends
// QEMU (-no-reboot). The guest is a small initramfs (busybox) that prints
// its /proc/cmdline and a line, and waits, so the kernel's own Ctrl-Alt-Del
// handling (an immediate restart while no init has claimed it) does the
// power-off. The guest configures no network and sends nothing.
//
// The boot args carry a secret as extraEnv does (mergen.env=), padded to
// the longest command line the driver accepts: the guest receives all of
// it, while the running QEMU's /proc/<pid>/cmdline, which every local user
// can read, shows none of it.
func TestQEMUBootsARealKernelAndStopsOnCtrlAltDel(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel under emulation; skipped with -short")
	}
	kernel := filepath.Join(testenv.Assets(t), "vmlinuz")
	testenv.Tool(t, qemuDefaultBin)
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.cpio")
	writeInitramfs(t, initrd, testenv.Tool(t, "busybox"))

	for _, disk := range []string{"root.img", "data.img"} {
		if err := os.WriteFile(filepath.Join(dir, disk), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	secret := make([]byte, 16)
	rand.Read(secret)
	env, _ := json.Marshal(map[string]string{"API_KEY": hex.EncodeToString(secret)})
	secretArg := "mergen.env=" + base64.RawURLEncoding.EncodeToString(env)
	s := Spec{
		ID: "bootcheck", VCPU: 1, MemMiB: 256,
		Kernel: kernel, Initrd: initrd,
		BootArgs: "console=ttyS0,115200 panic=-1 quiet " + secretArg,
		Drives: []Drive{
			{ID: "data", Path: filepath.Join(dir, "data.img")},
			{ID: "rootfs", Path: filepath.Join(dir, "root.img"), ReadOnly: true, Root: true},
		},
		SocketPath: filepath.Join(dir, "qmp.sock"),
		WorkDir:    dir,
	}
	withTap := os.Geteuid() == 0
	if withTap {
		s.NIC = &NIC{TapName: "tap-vmmtest", MAC: "02:fc:00:00:00:01"}
		// As root, QEMU runs as a VM's own ids, as the start stage runs
		// it; it must reach its socket directory.
		s.UID, s.GID = testVMMUID, testVMMUID
		if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Log("not root: booting without a network interface, as this user")
	}
	d := newQEMU(config.Driver{QEMUAccel: "tcg"})
	// Pad the command line, as the driver completes it (root=), to the
	// longest that QEMU's configuration file carries.
	c, err := d.config(s)
	if err != nil {
		t.Fatal(err)
	}
	pad := " mergen.test.pad="
	s.BootArgs += pad + strings.Repeat("p", qemuConfigLineMax-len(`append = ""`)-len(c.BootArgs)-len(pad))
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	var rendered qemuConfig
	if err := json.Unmarshal(b, &rendered); err != nil {
		t.Fatal(err)
	}
	if n := len(rendered.BootArgs); n != 1012 {
		t.Fatalf("padded boot args are %d bytes, want 1012", n)
	}
	cfg := filepath.Join(dir, "vm.json")
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if withTap {
		// The tap in a namespace of its own, attached to as the start
		// stage does for an unprivileged QEMU; QEMU starts in it below.
		s.NIC.File = enterNewNetnsWithTap(t, s.NIC.TapName, s.UID, s.GID)
	}
	l, err := d.Command(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkQEMULaunch(t, l, s, rendered, filepath.Join(dir, qemuBootFile))
	argv := l.Argv

	console := filepath.Join(dir, "console.log")
	log, err := os.Create(console)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := execCmd(l)
	cmd.Stdout, cmd.Stderr = log, log
	err = cmd.Start()
	if withTap {
		leaveNetns(t)
	}
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			out, _ := os.ReadFile(console)
			t.Logf("console:\n%s", out)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for !bytes.Contains(readFile(console), []byte(guestMarker)) {
		select {
		case err := <-exited:
			t.Fatalf("QEMU exited before the guest came up: %v", err)
		case <-ctx.Done():
			t.Fatal("the guest did not print its marker on the console")
		case <-time.After(50 * time.Millisecond):
		}
	}
	// What every local user sees of the running VMM.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	procArgv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	if !slices.Equal(procArgv, argv) {
		t.Fatalf("/proc/%d/cmdline = %q, want the driver's argv %q", cmd.Process.Pid, procArgv, argv)
	}
	for _, leak := range []string{hex.EncodeToString(secret), secretArg, "mergen.env", "mergen.test.pad", rendered.BootArgs} {
		if bytes.Contains(cmdline, []byte(leak)) {
			t.Errorf("QEMU's /proc/%d/cmdline shows %.40q", cmd.Process.Pid, leak)
		}
	}
	// What the guest got: the whole command line.
	guestCmdline := ""
	for _, line := range strings.Split(string(readFile(console)), "\n") {
		if after, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), guestCmdlinePrefix); ok {
			guestCmdline = strings.TrimSpace(after)
		}
	}
	if guestCmdline != rendered.BootArgs {
		t.Errorf("the guest's /proc/cmdline:\n%q\nwant the boot args\n%q", guestCmdline, rendered.BootArgs)
	}
	if withTap {
		// Who the VMM is: the VM's uid and gid, no other group, and
		// QEMU's seccomp filter (-sandbox) on.
		status := string(readFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)))
		id := strconv.Itoa(testVMMUID)
		for _, want := range []string{
			"Uid:\t" + id + "\t" + id + "\t" + id + "\t" + id + "\n",
			"Gid:\t" + id + "\t" + id + "\t" + id + "\t" + id + "\n",
			"Groups:\t" + id + " \n",
			"Seccomp:\t2\n",
			"CapEff:\t0000000000000000\n",
		} {
			if !strings.Contains(status, want) {
				t.Errorf("/proc/%d/status lacks %q:\n%s", cmd.Process.Pid, want, status)
			}
		}
		t.Logf("QEMU runs as uid/gid %d, seccomp mode 2 (filter)", testVMMUID)
	}
	t.Logf("QEMU pid %d argv: %q", cmd.Process.Pid, procArgv)
	t.Logf("guest /proc/cmdline: %d bytes, the boot args with %s=<%d bytes> in them", len(guestCmdline), "mergen.env", len(secretArg)-len("mergen.env="))

	st, err := d.Status(ctx, s.SocketPath)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running {
		t.Errorf("Status = %+v, want running", st)
	}
	if err := d.Shutdown(ctx, s.SocketPath); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("QEMU ended with %v after the guest reset, want a clean exit", err)
		}
	case <-ctx.Done():
		t.Fatal("QEMU still runs after Ctrl-Alt-Del")
	}
}

// enterNewNetnsWithTap moves this goroutine, locked to its thread, into a
// fresh, unnamed network namespace holding only a tap called tap, owned by
// uid/gid, and returns the tap attached to, as the start stage hands it to
// an unprivileged QEMU. leaveNetns returns. The namespace goes away with
// the last process in it.
func enterNewNetnsWithTap(t *testing.T, tap string, uid, gid int) *os.File {
	t.Helper()
	ip := testenv.Tool(t, "ip")
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	origNetns = orig
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	ns.Close()
	if out, err := exec.Command(ip, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr", "one_queue", "user", strconv.Itoa(uid), "group", strconv.Itoa(gid)).CombinedOutput(); err != nil {
		leaveNetns(t)
		t.Fatalf("ip tuntap add %s: %v\n%s", tap, err, out)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := unix.NewIfreq(tap)
	req.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_ONE_QUEUE)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, req); err != nil {
		t.Fatalf("attach to tap %s: %v", tap, err)
	}
	return os.NewFile(uintptr(fd), "tap")
}

var origNetns netns.NsHandle

func leaveNetns(t *testing.T) {
	// A thread that cannot go back stays locked, and Go discards it when
	// the test's goroutine ends.
	if err := netns.Set(origNetns); err != nil {
		t.Errorf("return to the original network namespace: %v", err)
		return
	}
	origNetns.Close()
	runtime.UnlockOSThread()
}

// testVMMUID is the VM uid/gid the boot tests run QEMU as.
const testVMMUID = 2000123

const (
	guestMarker        = "mergen-vmm-test: guest up"
	guestCmdlinePrefix = "mergen-vmm-test: cmdline: "
)

func readFile(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

// writeInitramfs writes an uncompressed newc cpio archive holding a static
// busybox and an /init that prints its kernel command line, announces
// itself and waits. /dev/console is in the archive because nothing mounts
// devtmpfs before /init runs.
func writeInitramfs(t *testing.T, path, busybox string) {
	t.Helper()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := elf.NewFile(bytes.NewReader(bb))
	if err != nil {
		t.Fatalf("%s: %v", busybox, err)
	}
	for _, p := range exe.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked; the test needs busybox-static (make deps)", busybox)
		}
	}
	init := "#!/bin/busybox sh\n" +
		"/bin/busybox mount -t proc proc /proc\n" +
		"/bin/busybox echo \"" + guestCmdlinePrefix + "$(/bin/busybox cat /proc/cmdline)\"\n" +
		"/bin/busybox echo '" + guestMarker + "'\n" +
		"while :; do /bin/busybox sleep 1; done\n"
	var a cpioWriter
	a.add("dev", 0o040755, nil, 0, 0)
	a.add("dev/console", 0o020600, nil, 5, 1)
	a.add("proc", 0o040755, nil, 0, 0)
	a.add("bin", 0o040755, nil, 0, 0)
	a.add("bin/busybox", 0o100755, bb, 0, 0)
	a.add("init", 0o100755, []byte(init), 0, 0)
	a.add("TRAILER!!!", 0, nil, 0, 0)
	if err := os.WriteFile(path, a.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cpioWriter builds a "newc" (070701) archive, the format the kernel
// unpacks as an initramfs.
type cpioWriter struct {
	bytes.Buffer
	ino int
}

func (w *cpioWriter) add(name string, mode uint32, data []byte, rmajor, rminor int) {
	w.ino++
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	w.WriteString(name + "\x00")
	w.pad()
	w.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	w.WriteString(strings.Repeat("\x00", (4-w.Len()%4)%4))
}

// TestQEMUGetsTheValidatedDiskNotALinkSwappedIn replays the attack on the
// gap between create, which checks a VM's disks, and start, where the VMM
// (as root) opens them: whoever can write in a disk root swaps a checked
// disk for a symbolic link to a file of the host (the canary).
//
//   - Swapped after create, before start: Command, which the start stage
//     runs before it execs the VMM, refuses to start.
//   - Swapped after Command opened the disk, before QEMU runs (the widest
//     window the start stage leaves): QEMU opens /proc/self/fd/N, the
//     descriptor it inherited, so it gets the original inode; none of the
//     running QEMU's descriptors (/proc/<pid>/fd) is the canary.
//
// An inotify watch on the canary for the whole test shows that nothing
// opened it at all.
func TestQEMUGetsTheValidatedDiskNotALinkSwappedIn(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel under emulation; skipped with -short")
	}
	assets := testenv.Assets(t)
	testenv.Tool(t, qemuDefaultBin)
	dir := t.TempDir()
	root := filepath.Join(dir, "volumes") // an allowed disk root
	os.Mkdir(root, 0o755)
	initrd := filepath.Join(root, "initrd.cpio")
	writeInitramfs(t, initrd, testenv.Tool(t, "busybox"))
	canary := filepath.Join(dir, "canary.key")
	if err := os.WriteFile(canary, []byte("a host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	watch := testenv.WatchOpens(t, canary)
	data := filepath.Join(root, "data.img")
	for _, disk := range []string{"root.img", "data.img"} {
		if err := os.WriteFile(filepath.Join(root, disk), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := Spec{
		ID: "swapcheck", VCPU: 1, MemMiB: 256,
		Kernel: filepath.Join(assets, "vmlinuz"), KernelBeneath: assets,
		Initrd: initrd, InitrdBeneath: root,
		BootArgs: "console=ttyS0,115200 panic=-1 quiet",
		Drives: []Drive{
			{ID: "rootfs", Path: filepath.Join(root, "root.img"), Beneath: root, ReadOnly: true, Root: true},
			{ID: "data", Path: data, Beneath: root},
		},
		SocketPath: filepath.Join(dir, "qmp.sock"),
		WorkDir:    dir,
	}
	d := newQEMU(config.Driver{QEMUAccel: "tcg"})
	// Create: the disks are checked and vm.json rendered.
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "vm.json")
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	swap := func() {
		t.Helper()
		if err := os.Rename(data, data+".validated"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(canary, data); err != nil {
			t.Fatal(err)
		}
	}
	unswap := func() {
		t.Helper()
		os.Remove(data)
		if err := os.Rename(data+".validated", data); err != nil {
			t.Fatal(err)
		}
	}

	// Swapped before start: refused.
	swap()
	if l, err := d.Command(s, cfg); !errors.Is(err, beneath.ErrLink) || !strings.Contains(err.Error(), "drive data") {
		l.Close()
		t.Fatalf("start with the data disk swapped for a link: %v; want a refusal naming the drive", err)
	} else {
		t.Logf("swapped before start: refused: %v", err)
	}
	unswap()

	// Swapped after the start stage opened the disks, before QEMU runs.
	validated, err := os.Stat(data)
	if err != nil {
		t.Fatal(err)
	}
	l, err := d.Command(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	swap()
	console := filepath.Join(dir, "console.log")
	log, err := os.Create(console)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := execCmd(l)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("console:\n%s", readFile(console))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The guest is up: QEMU has opened its drives.
	for !bytes.Contains(readFile(console), []byte(guestMarker)) {
		select {
		case <-exited:
			t.Fatalf("QEMU exited before the guest came up: %v", cmd.ProcessState)
		case <-ctx.Done():
			t.Fatal("the guest did not print its marker on the console")
		case <-time.After(50 * time.Millisecond):
		}
	}
	canaryFI, err := os.Stat(canary)
	if err != nil {
		t.Fatal(err)
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid)
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	var report []string
	holdsValidated := false
	for _, e := range entries {
		p := filepath.Join(fdDir, e.Name())
		target, _ := os.Readlink(p)
		report = append(report, e.Name()+" -> "+target)
		fi, err := os.Stat(p)
		if err != nil {
			continue // gone meanwhile
		}
		if os.SameFile(fi, canaryFI) || target == canary {
			t.Errorf("QEMU's descriptor %s is the canary (%s)", e.Name(), target)
		}
		if os.SameFile(fi, validated) {
			holdsValidated = true
		}
	}
	t.Logf("QEMU pid %d, %s:\n  %s", cmd.Process.Pid, fdDir, strings.Join(report, "\n  "))
	if !holdsValidated {
		t.Errorf("no descriptor of QEMU is the validated data disk (inode %d)", validated.Sys().(*syscall.Stat_t).Ino)
	}
	if err := d.Shutdown(ctx, s.SocketPath); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-ctx.Done():
		t.Fatal("QEMU still runs after Ctrl-Alt-Del")
	}
	if n := watch(); n > 0 {
		t.Errorf("the canary was opened or read %d times", n)
	} else {
		t.Log("inotify: the canary was never opened")
	}
}
