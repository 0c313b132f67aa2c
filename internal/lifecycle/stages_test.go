package lifecycle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/proc"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/vmnet"
)

// fixture is a runner over temporary roots with one VM that was created
// but never started: a record in bridge mode (no namespace, no nftables
// rules), so the teardown of its network needs no root.
type fixture struct {
	r   *Runner
	id  string
	out *bytes.Buffer
}

func newFixture(t *testing.T, env map[string]string) fixture {
	t.Helper()
	d := t.TempDir()
	vars := map[string]string{"MGR_CONFIG_ROOT": d + "/vm.d", "MGR_RUN_ROOT": d + "/run", "MGR_DATA_ROOT": d + "/data"}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.FromEnv(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(cfg.Layout())
	if err != nil {
		t.Fatal(err)
	}
	id := store.NewID()
	m := store.Meta{ID: id, VMM: "qemu", VCPU: 1, MemMiB: 128, GuestIP: "192.0.2.10", Gateway: "192.0.2.1", PrefixLen: 24,
		TapName: store.TapName(id), Bridge: &store.Bridge{Name: "br-test", Netmask: "255.255.255.0"}, Ports: []store.Port{}}
	b, err := store.MarshalMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Create(id, map[string][]byte{store.FileMeta: b}); err != nil {
		t.Fatal(err)
	}
	out := &bytes.Buffer{}
	return fixture{r: &Runner{Config: cfg, Store: st, Log: slog.New(slog.DiscardHandler), Out: out}, id: id, out: out}
}

func TestUnknownStagesAndBadIDsAreRefused(t *testing.T) {
	f := newFixture(t, nil)
	if err := f.r.Run(context.Background(), "reboot", f.id); !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), `"reboot"`) {
		t.Errorf("unknown stage: %v", err)
	}
	if err := f.r.Run(context.Background(), PreStart, "../../etc"); err == nil || !strings.Contains(err.Error(), "not a lowercase UUID") {
		t.Errorf("bad id: %v", err)
	}
	if err := f.r.Run(context.Background(), Status, store.NewID()); !errdefs.IsNotFound(err) {
		t.Errorf("unknown VM: %v", err)
	}
	// restart is a toolkit command that goes through the manager, not a
	// stage this runner accepts.
	for _, s := range Stages {
		if s == "restart" {
			t.Error("restart is listed as a stage")
		}
	}
}

func TestStatusOfAVMThatNeverRanReportsNoProcess(t *testing.T) {
	f := newFixture(t, nil)
	if err := f.r.Run(context.Background(), Status, f.id); err != nil {
		t.Fatal(err)
	}
	var rep StatusReport
	if err := json.Unmarshal(f.out.Bytes(), &rep); err != nil {
		t.Fatalf("status output %q: %v", f.out, err)
	}
	if rep.ID != f.id || rep.VMM != "qemu" || rep.PID != 0 || rep.Alive || rep.Running || rep.Error == "" {
		t.Fatalf("status %+v: want no pid, not alive, not running, and the socket error", rep)
	}
}

// The pid file names a process by pid and start time: a pid that now
// belongs to another process is not the VMM, so stop leaves it alone; the
// same pid with its own start time is the VMM, and stop asks it to power
// off (which fails here: there is no VMM socket, and stop says so).
func TestStopActsOnlyOnTheProcessThePIDFileNames(t *testing.T) {
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	live, err := proc.Of(sleeper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		recorded proc.Process
		asked    bool
	}{
		{"recycled pid", proc.Process{PID: live.PID, Start: live.Start + 1}, false},
		{"the VMM", live, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, map[string]string{"MGR_STOP_TIMEOUT_SECONDS": "1"})
			var logs bytes.Buffer
			f.r.Log = slog.New(slog.NewTextHandler(&logs, nil))
			p := f.r.Store.Paths(f.id)
			if err := os.MkdirAll(p.RunDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := proc.WritePIDFile(p.PIDFile, tc.recorded); err != nil {
				t.Fatal(err)
			}
			if err := f.r.Run(context.Background(), Stop, f.id); err != nil {
				t.Fatal(err)
			}
			asked := strings.Contains(logs.String(), "graceful shutdown request failed")
			if asked != tc.asked {
				t.Fatalf("stop asked the recorded process to power off: %v, want %v; log:\n%s", asked, tc.asked, logs.String())
			}
		})
	}
}

func TestDeleteRunsItsHooksInOrderAroundTheTeardown(t *testing.T) {
	testenv.RequireRoot(t) // teardown removes the VM's tap, which needs CAP_NET_ADMIN
	trace := filepath.Join(t.TempDir(), "trace")
	f := newFixture(t, map[string]string{
		"MGN_LIFECYCLE_PRE_DELETE_HOOKS":  "echo pre-delete >> " + trace,
		"MGN_LIFECYCLE_DELETE_HOOKS":      "echo delete ${VM_ID} >> " + trace,
		"MGN_LIFECYCLE_POST_DELETE_HOOKS": "echo post-delete >> " + trace,
	})
	if err := f.r.Run(context.Background(), DeleteStg, f.id); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(trace)
	if got, want := string(b), "pre-delete\ndelete "+f.id+"\npost-delete\n"; got != want {
		t.Fatalf("hooks ran as\n%s\nwant\n%s", got, want)
	}
}

func TestAFailingDeleteHookKeepsTheVM(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "trace")
	f := newFixture(t, map[string]string{
		"MGN_LIFECYCLE_PRE_DELETE_HOOKS":  "exit 3",
		"MGN_LIFECYCLE_POST_DELETE_HOOKS": "echo post-delete >> " + trace,
	})
	err := f.r.Run(context.Background(), DeleteStg, f.id)
	if err == nil || !strings.Contains(err.Error(), "preDelete hook of vm "+f.id) {
		t.Fatalf("delete with a failing preDelete hook: %v", err)
	}
	if _, err := os.Stat(trace); !os.IsNotExist(err) {
		t.Fatal("postDelete ran although the delete stopped at preDelete")
	}
	if !f.r.Store.Exists(f.id) {
		t.Fatal("the VM's record is gone")
	}
}

// The host's allow-list (MGR_GUEST_HOST_PORTS) reaches the VM's network
// when it is set up; the record does not carry it.
func TestNetConfigCarriesTheHostAllowList(t *testing.T) {
	f := newFixture(t, map[string]string{"MGR_GUEST_HOST_PORTS": "53/udp, 8443"})
	m, err := f.r.Store.ReadMeta(f.id)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := netConfig(m, f.r.Config)
	if err != nil {
		t.Fatal(err)
	}
	if want := []vmnet.HostPort{{Port: 53, Protocol: "udp"}, {Port: 8443, Protocol: "tcp"}}; !slices.Equal(nc.HostPorts, want) {
		t.Fatalf("host ports %v, want %v", nc.HostPorts, want)
	}
	f.r.Config.GuestHostPorts = nil
	if nc, _ := netConfig(m, f.r.Config); len(nc.HostPorts) != 0 {
		t.Fatalf("host ports %v without an allow-list", nc.HostPorts)
	}
}

// A disk checked at create and swapped for a link to a host file before
// start: the start stage opens every file below the root the record names,
// without following links, so it refuses to start (before it writes a pid
// file or execs anything) and never opens the link's target.
func TestStartRefusesADiskSwappedForALink(t *testing.T) {
	testenv.Tool(t, "qemu-system-x86_64")
	f := newFixture(t, nil)
	m, err := f.r.Store.ReadMeta(f.id)
	if err != nil {
		t.Fatal(err)
	}
	images := f.r.Config.ImagesRoot
	for _, name := range []string{"vmlinux", "rootfs.ext4"} {
		if err := os.MkdirAll(images, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(images, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m.Driver = config.Driver{QEMUAccel: "tcg"}
	m.MAC = "02:fc:00:00:00:02"
	m.Kernel, m.Disks.Rootfs = filepath.Join(images, "vmlinux"), filepath.Join(images, "rootfs.ext4")
	m.DiskRoots = map[string]string{"kernel": images, "rootfs": images}
	driver, err := vmm.New(m.VMM, m.Driver)
	if err != nil {
		t.Fatal(err)
	}
	p := f.r.Store.Paths(f.id)
	vmJSON, err := driver.Config(store.Spec(m, p))
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := store.MarshalMeta(m)
	for name, b := range map[string][]byte{store.FileMeta: meta, store.FileVMConfig: vmJSON} {
		if err := f.r.Store.WriteFile(f.id, name, b); err != nil {
			t.Fatal(err)
		}
	}
	canary := filepath.Join(t.TempDir(), "canary.key")
	if err := os.WriteFile(canary, []byte("a host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	opened := testenv.WatchOpens(t, canary)
	os.Remove(m.Disks.Rootfs)
	if err := os.Symlink(canary, m.Disks.Rootfs); err != nil {
		t.Fatal(err)
	}

	err = f.r.Run(context.Background(), Start, f.id)
	if !errors.Is(err, beneath.ErrLink) || !strings.Contains(err.Error(), "start vm "+f.id) || !strings.Contains(err.Error(), "drive rootfs") {
		t.Fatalf("start with the root disk swapped for a link: %v; want a refusal naming the drive", err)
	}
	if _, err := os.Stat(p.PIDFile); err == nil {
		t.Error("the refused start wrote a pid file")
	}
	if n := opened(); n != 0 {
		t.Errorf("the canary was opened %d times", n)
	}
}
