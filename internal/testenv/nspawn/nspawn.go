// Package nspawn boots a real systemd for tests: a Debian bookworm root file
// system, extracted fresh from the tarball scripts/deps.d/40-nspawn.sh
// builds, run by systemd-nspawn as a container whose PID 1 is systemd.
//
// The test gets the container's system bus (for D-Bus clients on the host,
// such as go-systemd), Exec to run commands inside with nsenter, and the
// container's root directory to write files into. Host paths listed in
// Config.Binds appear at the same path inside, so a test binary or a
// temporary directory means the same thing on both sides.
//
// Everything is torn down when the test ends, also when it fails: the
// container is shut down (killed if it does not stop), its cgroups and its
// root directory removed.
package nspawn

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
)

// Config says what the container needs from the host.
type Config struct {
	// Binds are host paths bound read-write at the same path inside.
	Binds []string
	// ReadOnlyBinds are host paths bound read-only at the same path inside
	// (base assets, binaries).
	ReadOnlyBinds []string
}

// Container is a booted systemd container.
type Container struct {
	Name string // machine name, also the container's host name
	// Root is the container's root directory as seen from the host.
	Root string
	// Leader is the host pid of the container's PID 1 (systemd).
	Leader int
	// BusAddress is the container's system bus for clients on the host,
	// a value for DBUS_SYSTEM_BUS_ADDRESS.
	BusAddress string

	work    string
	console string
	nspawn  *exec.Cmd
	exited  chan struct{}
	cgroups []string
}

// Tarball is the cached root file system built by scripts/deps.d/40-nspawn.sh.
func Tarball(t testing.TB) string {
	t.Helper()
	p := filepath.Join(testenv.RepoRoot(t), ".build", "cache", "nspawn-bookworm.tar")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("nspawn: root file system tarball missing (%v): run `make deps` as root (scripts/deps.d/40-nspawn.sh)", err)
	}
	return p
}

// Boot starts a container and waits until its systemd reports the system
// running. It needs root; without it, or in -short mode, the test is
// skipped.
func Boot(t testing.TB, cfg Config) *Container {
	t.Helper()
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skipf("SKIPPED in -short mode: %s boots a systemd container", t.Name())
	}
	nspawnBin := testenv.Tool(t, "systemd-nspawn")
	testenv.Tool(t, "nsenter")
	tarBin := testenv.Tool(t, "tar")
	tarball := Tarball(t)

	suffix := make([]byte, 4)
	rand.Read(suffix)
	c := &Container{Name: "mergen-test-" + hex.EncodeToString(suffix), exited: make(chan struct{})}
	work, err := os.MkdirTemp("", "mergen-nspawn-")
	if err != nil {
		t.Fatal(err)
	}
	c.work = work
	t.Cleanup(func() { c.teardown(t) })

	c.Root = filepath.Join(work, "root")
	busDir := filepath.Join(work, "dbus")
	c.console = filepath.Join(work, "console.log")
	for _, d := range []string{c.Root, busDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(tarBin, "-x", "-p", "--numeric-owner", "-f", tarball, "-C", c.Root).CombinedOutput(); err != nil {
		t.Fatalf("nspawn: extract %s: %v\n%s", tarball, err, out)
	}

	// The container's systemd takes over the cgroup it starts in; on a host
	// with hybrid hierarchies that must be a cgroup of its own in both the
	// named systemd hierarchy and the unified one, or it refuses to boot.
	for _, h := range []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(h); err != nil {
			continue
		}
		d := filepath.Join(h, c.Name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("nspawn: cgroup: %v", err)
		}
		c.cgroups = append(c.cgroups, d)
	}

	args := []string{
		"-q", "-D", c.Root, "--machine=" + c.Name, "--boot",
		// Not registered with (the absent) machined, and not moved into a
		// scope unit of a host systemd: both are required here.
		"--register=no", "--keep-unit",
		"--console=passive", "--capability=all", "--private-network",
		"--bind=" + busDir + ":/run/dbus",
	}
	bound := map[string]bool{}
	for _, dev := range []string{"/dev/kvm", "/dev/net/tun"} {
		if _, err := os.Stat(dev); err == nil {
			args = append(args, "--bind="+dev)
			bound[dev] = true
		}
	}
	for _, b := range append(append([]string{}, cfg.Binds...), cfg.ReadOnlyBinds...) {
		if !filepath.IsAbs(b) || strings.ContainsAny(b, ":,") {
			t.Fatalf("nspawn: bind %q: want an absolute path without ':' or ','", b)
		}
	}
	// A path asked for twice is bound once.
	for _, b := range cfg.Binds {
		if !bound[filepath.Clean(b)] {
			args = append(args, "--bind="+b)
			bound[filepath.Clean(b)] = true
		}
	}
	for _, b := range cfg.ReadOnlyBinds {
		if !bound[filepath.Clean(b)] {
			args = append(args, "--bind-ro="+b)
			bound[filepath.Clean(b)] = true
		}
	}
	// A shell moves itself into the new cgroups, then becomes nspawn.
	script := `for d in $MERGEN_NSPAWN_CGROUPS; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$@"`
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh", nspawnBin}, args...)...)
	cmd.Env = append(os.Environ(), "MERGEN_NSPAWN_CGROUPS="+strings.Join(c.cgroups, " "))
	logf, err := os.Create(c.console)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a signal for the test process is not one for
	// the container. Pdeathsig: a test binary killed before its clean-up
	// (go test's timeout) still takes the container down with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("nspawn: start: %v", err)
	}
	logf.Close()
	c.nspawn = cmd
	go func() {
		cmd.Wait()
		close(c.exited)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.waitRunning(ctx); err != nil {
		t.Fatalf("nspawn: %s did not boot: %v\nconsole:\n%s", c.Name, err, c.consoleTail(40))
	}
	sock := filepath.Join(busDir, "system_bus_socket")
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("nspawn: no system bus socket at %s", sock)
		case <-time.After(50 * time.Millisecond):
		}
	}
	c.BusAddress = "unix:path=" + sock
	return c
}

// waitRunning finds the container's systemd and waits until
// `systemctl is-system-running` says running (or degraded: some unit of the
// minimal image failed, which does not concern the tests).
func (c *Container) waitRunning(ctx context.Context) error {
	last := ""
	for {
		select {
		case <-c.exited:
			return fmt.Errorf("systemd-nspawn exited (%v)", c.nspawn.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("%w (last state %q)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
		if c.Leader == 0 {
			c.Leader = childNamed(c.nspawn.Process.Pid, "systemd")
			if c.Leader == 0 {
				continue
			}
		}
		out, _ := c.Exec(ctx, "systemctl", "is-system-running")
		last = strings.TrimSpace(string(out))
		if last == "running" || last == "degraded" {
			return nil
		}
	}
}

// childNamed returns the pid of a child of parent whose comm is name, or 0.
func childNamed(parent int, name string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(parent) && s[open+1:close] == name {
			return pid
		}
	}
	return 0
}

// Exec runs a command inside the container (all its namespaces) and returns
// its combined output. The process keeps the caller's capabilities.
func (c *Container) Exec(ctx context.Context, args ...string) ([]byte, error) {
	if c.Leader == 0 {
		return nil, fmt.Errorf("nspawn: %s has no leader yet", c.Name)
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.Leader), "-a", "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("nspawn exec %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// UseBus points this test process's system bus clients at the container
// (DBUS_SYSTEM_BUS_ADDRESS, restored when the test ends).
func (c *Container) UseBus(t testing.TB) {
	t.Helper()
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", c.BusAddress)
}

// Journal returns the container's journal for unit (all of it when unit is
// empty), for failure messages.
func (c *Container) Journal(unit string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := []string{"journalctl", "--no-pager", "-n", "60"}
	if unit != "" {
		args = append(args, "-u", unit)
	}
	out, _ := c.Exec(ctx, args...)
	return string(out)
}

func (c *Container) consoleTail(n int) string {
	b, _ := os.ReadFile(c.console)
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// teardown stops the container and removes what Boot made. It runs even
// when Boot failed half-way.
func (c *Container) teardown(t testing.TB) {
	if c.nspawn != nil && c.nspawn.Process != nil {
		// SIGTERM makes nspawn ask the container's systemd to power off.
		c.nspawn.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(20 * time.Second):
			t.Logf("nspawn: %s did not shut down, killing it", c.Name)
			syscall.Kill(-c.nspawn.Process.Pid, syscall.SIGKILL)
			if c.Leader != 0 {
				syscall.Kill(c.Leader, syscall.SIGKILL)
			}
			<-c.exited
		}
	}
	for _, d := range c.cgroups {
		removeCgroup(d)
	}
	if c.work == "" {
		return
	}
	// Never delete through a mount point: a bind still mounted would
	// take host files with it.
	if m := mountsUnder(c.work); len(m) > 0 {
		t.Errorf("nspawn: not removing %s, still mounted: %v", c.work, m)
		return
	}
	if err := os.RemoveAll(c.work); err != nil {
		t.Errorf("nspawn: remove %s: %v", c.work, err)
	}
}

// removeCgroup removes a cgroup directory and the ones the container's
// systemd made below it, deepest first.
func removeCgroup(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeCgroup(filepath.Join(dir, e.Name()))
		}
	}
	os.Remove(dir)
}

func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}
