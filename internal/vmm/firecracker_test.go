package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
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

	"github.com/mergenhq/mergen/internal/beneath"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name after replacing the test's
// temporary directory by $DIR, or rewrites the file with -update.
func golden(t *testing.T, name, dir string, got []byte) {
	t.Helper()
	got = []byte(strings.ReplaceAll(string(got), dir, "$DIR"))
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestFirecrackerConfigGolden(t *testing.T) {
	cases := []struct {
		golden string
		driver firecracker
		mutate func(*Spec)
	}{
		{"firecracker.json", firecracker{}, func(*Spec) {}},
		{"firecracker-initrd-entropy-vsock.json", firecracker{entropy: true, vsock: true}, func(s *Spec) {
			s.Initrd = filepath.Join(s.WorkDir, "initrd.img")
			s.BootArgs += " pci=off"
		}},
		{"firecracker-no-nic.json", firecracker{}, func(s *Spec) { s.NIC = nil; s.Drives = s.Drives[1:2] }},
		{"firecracker-jailed.json", firecracker{jailer: true, vsock: true}, func(s *Spec) { s.Initrd = filepath.Join(s.WorkDir, "initrd.img") }},
	}
	for _, tc := range cases {
		t.Run(tc.golden, func(t *testing.T) {
			dir := t.TempDir()
			s := testSpec(t, dir)
			tc.mutate(&s)
			b, err := tc.driver.Config(s)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.golden, dir, b)
		})
	}
}

// checkFirecrackerContract is what the driver relies on from a Firecracker
// that has not booted yet, run against the fake and, when one is given,
// against a real binary (TestRealFirecrackerAPI):
//   - GET / reports the instance "Not started", which Status maps to not
//     running;
//   - Ctrl-Alt-Del before boot is refused and the fault message reaches the
//     caller;
//   - unknown paths and actions are refused with a fault message;
//   - each section of vm.json is the body of the pre-boot request it stands
//     for (a --config-file is those bodies keyed by resource name), and is
//     accepted.
func checkFirecrackerContract(t *testing.T, socket string, d firecracker) {
	t.Helper()
	ctx := context.Background()
	c := newFCClient(socket)

	st, err := d.Status(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running || st.State != "Not started" {
		t.Errorf("before boot: Status = %+v, want not running, state \"Not started\"", st)
	}
	err = d.Shutdown(ctx, socket)
	if err == nil || !strings.Contains(err.Error(), "not supported before starting") {
		t.Errorf("Shutdown before boot = %v, want Firecracker's fault message", err)
	}
	if err := d.Pause(ctx, socket); err == nil || !strings.Contains(err.Error(), "PATCH /vm") {
		t.Errorf("Pause before boot = %v, want Firecracker's refusal of PATCH /vm", err)
	}
	if err := c.vmState(ctx, "Frozen"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("PATCH /vm with an unknown state = %v, want 400", err)
	}
	// Snapshots: create is refused before boot; bodies outside the
	// documented ones are refused (a load that fails would end a real
	// Firecracker, so only its body is checked).
	if err := c.createSnapshot(ctx, "/snapshot/vmstate", "/snapshot/memory"); err == nil || !strings.Contains(err.Error(), "not supported before starting") {
		t.Errorf("PUT /snapshot/create before boot = %v, want Firecracker's refusal", err)
	}
	for _, bad := range []struct{ method, path, body string }{
		{"PUT", "/snapshot/create", `{"snapshot_type":"Partial","snapshot_path":"a","mem_file_path":"b"}`},
		{"PUT", "/snapshot/create", `{"snapshot_path":"a"}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"a","mem_file_path":"b","resume":true}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"a","mem_file_path":"b","resume_vm":"yes"}`},
		{"PATCH", "/vm", `{"state":"Paused","now":true}`},
	} {
		if err := c.do(ctx, bad.method, bad.path, json.RawMessage(bad.body), nil); err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "deserializing") {
			t.Errorf("%s %s %s = %v, want 400", bad.method, bad.path, bad.body, err)
		}
	}
	err = c.do(ctx, "GET", "/no-such-thing", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "GET /no-such-thing") || !strings.Contains(err.Error(), "Invalid request method and/or path") {
		t.Errorf("unknown path: %v", err)
	}
	err = c.action(ctx, "Reboot")
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "Reboot") {
		t.Errorf("unknown action: %v", err)
	}

	dir := t.TempDir()
	s := testSpec(t, dir)
	s.Initrd = filepath.Join(dir, "initrd.img")
	s.WorkDir = dir
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for key, raw := range doc {
		if !slices.Contains(fcConfigFileKeys, key) {
			t.Errorf("vm.json has key %q, which is not a --config-file section", key)
			continue
		}
		switch key {
		case "drives", "network-interfaces":
			var items []map[string]any
			if err := json.Unmarshal(raw, &items); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			idField := map[string]string{"drives": "drive_id", "network-interfaces": "iface_id"}[key]
			for _, it := range items {
				if err := c.do(ctx, "PUT", "/"+key+"/"+it[idField].(string), it, nil); err != nil {
					t.Errorf("vm.json %s: %v", key, err)
				}
			}
		default:
			if err := c.do(ctx, "PUT", "/"+key, raw, nil); err != nil {
				t.Errorf("vm.json %s: %v", key, err)
			}
		}
	}
}

func TestFirecrackerDriverAgainstTheDocumentedAPI(t *testing.T) {
	for _, d := range []firecracker{{}, {entropy: true, vsock: true}} {
		fake, socket := startFakeFirecracker(t)
		checkFirecrackerContract(t, socket, d)

		// After boot: running, and Ctrl-Alt-Del is delivered.
		ctx := context.Background()
		if err := newFCClient(socket).action(ctx, "InstanceStart"); err != nil {
			t.Fatal(err)
		}
		st, err := d.Status(ctx, socket)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Running || st.Paused || st.State != "Running" {
			t.Errorf("after boot: Status = %+v, want running", st)
		}

		// Pause and resume, each twice: the second is a no-op.
		for range 2 {
			if err := d.Pause(ctx, socket); err != nil {
				t.Fatal(err)
			}
			if st, err := d.Status(ctx, socket); err != nil || st.Running || !st.Paused || st.State != "Paused" {
				t.Errorf("after Pause: Status = %+v, %v, want paused", st, err)
			}
		}
		for range 2 {
			if err := d.Resume(ctx, socket); err != nil {
				t.Fatal(err)
			}
			if st, err := d.Status(ctx, socket); err != nil || !st.Running || st.Paused || st.State != "Running" {
				t.Errorf("after Resume: Status = %+v, %v, want running", st, err)
			}
		}
		if got := fake.Patches(); !slices.Equal(got, []string{"Paused", "Resumed"}) {
			t.Errorf("PATCH /vm states = %v, want Paused then Resumed, once each", got)
		}
		if err := d.Shutdown(ctx, socket); err != nil {
			t.Fatal(err)
		}
		if got := fake.Actions(); !slices.Equal(got, []string{"InstanceStart", "SendCtrlAltDel"}) {
			t.Errorf("actions = %v, want InstanceStart then SendCtrlAltDel", got)
		}
	}
}

func TestFirecrackerStatusOnAMissingSocketNamesIt(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent.sock")
	_, err := (&firecracker{}).Status(context.Background(), absent)
	if err == nil || !strings.Contains(err.Error(), absent) {
		t.Errorf("Status on a missing socket = %v, want an error naming it", err)
	}
}

// TestFirecrackerCommand: Firecracker boots from a configuration written
// at start into the run directory, vm.json with every file named by a
// descriptor the start stage opened: the kernel, initrd and read-only disks
// read-only, the data disk writable, each the inode the record names.
func TestFirecrackerCommand(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.Initrd = filepath.Join(dir, "initrd.img")
	bin := fakeExecutable(t, dir, "firecracker")
	s.BootArgs += " " + secretEnv
	d := &firecracker{bin: bin}
	cfg := filepath.Join(dir, "config", "vm.json")
	os.Mkdir(filepath.Dir(cfg), 0o700)

	if _, err := d.Command(s, cfg); err == nil || !strings.Contains(err.Error(), "vm.json") {
		t.Errorf("Command without vm.json = %v, want an error naming it", err)
	}
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), secretEnv) {
		t.Fatalf("vm.json lacks the boot args:\n%s", b)
	}
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := d.Command(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	run := filepath.Join(dir, fcRunConfig)
	want := []string{bin, "--id", s.ID, "--api-sock", s.SocketPath, "--config-file", run}
	if !slices.Equal(l.Argv, want) {
		t.Errorf("argv = %q\nwant   %q", l.Argv, want)
	}
	// The kernel command line travels in the configuration only.
	assertNoBootArgs(t, l.Argv, s.BootArgs)
	if fi, err := os.Stat(run); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, want mode 0600", run, err)
	}
	runCfg, err := readFCConfig(run)
	if err != nil {
		t.Fatal(err)
	}
	var created fcConfig
	json.Unmarshal(b, &created)
	if runCfg.BootSource.BootArgs != created.BootSource.BootArgs || runCfg.MachineConfig != created.MachineConfig || !slices.Equal(runCfg.NetworkInterfaces, created.NetworkInterfaces) {
		t.Errorf("the run configuration differs from vm.json beyond its files:\n%+v\n%+v", runCfg, created)
	}
	checkFDPath(t, l, runCfg.BootSource.KernelImagePath, s.Kernel, false)
	checkFDPath(t, l, runCfg.BootSource.InitrdPath, s.Initrd, false)
	if len(runCfg.Drives) != len(s.Drives) {
		t.Fatalf("%d drives, want %d", len(runCfg.Drives), len(s.Drives))
	}
	for i, dr := range runCfg.Drives {
		if dr.DriveID != s.Drives[i].ID || dr.IsReadOnly != s.Drives[i].ReadOnly || dr.IsRootDevice != s.Drives[i].Root {
			t.Errorf("drive %d: %+v, want %+v", i, dr, s.Drives[i])
		}
		checkFDPath(t, l, dr.PathOnHost, s.Drives[i].Path, !s.Drives[i].ReadOnly)
	}
	if len(l.Files) != 2+len(s.Drives) {
		t.Errorf("%d files open, want %d", len(l.Files), 2+len(s.Drives))
	}
	if got, _ := os.ReadFile(cfg); string(got) != string(b) {
		t.Error("Command changed vm.json")
	}
	// A vsock socket left by a previous run would make Firecracker fail.
	stale := filepath.Join(dir, "vsock.sock")
	os.WriteFile(stale, nil, 0o600)
	vs := &firecracker{bin: bin, vsock: true}
	vb, _ := vs.Config(s)
	os.WriteFile(cfg, vb, 0o600)
	if l, err := vs.Command(s, cfg); err != nil {
		t.Fatal(err)
	} else {
		l.Close()
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("Command left the previous run's vsock socket in place")
	}
	os.WriteFile(cfg, b, 0o600)

	// The record, not vm.json, says which files the VM has.
	other := s
	other.Drives = slices.Clone(s.Drives)
	other.Drives[0].Path = filepath.Join(dir, "rootfs.ext4")
	if _, err := d.Command(other, cfg); err == nil || !strings.Contains(err.Error(), "are not the VM's") {
		t.Errorf("Command with a vm.json naming other files = %v, want a refusal", err)
	}
	// A disk removed since create, or swapped for a link, fails here,
	// naming the drive; the link's target is not opened.
	canary := filepath.Join(t.TempDir(), "canary")
	os.WriteFile(canary, []byte("canary"), 0o600)
	os.Remove(s.Drives[0].Path)
	if _, err := d.Command(s, cfg); err == nil || !strings.Contains(err.Error(), "drive agent") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Command with a missing disk = %v, want an error naming the drive", err)
	}
	os.Symlink(canary, s.Drives[0].Path)
	if _, err := d.Command(s, cfg); err == nil || !strings.Contains(err.Error(), "drive agent") || !errors.Is(err, beneath.ErrLink) {
		t.Errorf("Command with a disk swapped for a link = %v, want a refusal naming the drive", err)
	}
}

// TestFirecrackerJailLaysOutTheChroot checks what the jailer is given: every
// file the config names present at its chroot path as a hard link of the
// original, writable disks and the socket directory owned by the jail user,
// and the host socket path leading to the socket inside the chroot.
func TestFirecrackerJailLaysOutTheChroot(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.Initrd = filepath.Join(dir, "initrd.img")
	s.BootArgs += " " + secretEnv
	bin := fakeExecutable(t, dir, "firecracker")
	jailer := fakeExecutable(t, dir, "jailer")
	// No MGR_JAILER_UID/GID: the jail runs as the VM's own ids.
	d := &firecracker{bin: bin, jailer: true, jailerBin: jailer}
	s.UID, s.GID = 2000007, 2000008

	cfg := filepath.Join(dir, "vm.json")
	plain, err := (&firecracker{}).Config(s)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfg, plain, 0o600)
	if _, err := d.Command(s, cfg); err == nil || !strings.Contains(err.Error(), "rendered without the jailer") {
		t.Errorf("Command with an unjailed vm.json = %v, want a refusal", err)
	}

	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfg, b, 0o600)
	// A leftover from an earlier run must not survive.
	root := filepath.Join(dir, "jail", "firecracker", s.ID, "root")
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	os.WriteFile(filepath.Join(root, "dev", "kvm"), nil, 0o600)

	l, err := d.Command(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Files) != 0 {
		t.Errorf("%d files to inherit; the jailer closes them, the chroot has links", len(l.Files))
	}
	argv := l.Argv
	want := []string{jailer, "--id", s.ID, "--exec-file", bin, "--uid", "2000007", "--gid", "2000008",
		"--chroot-base-dir", filepath.Join(dir, "jail")}
	want = append(want, jailCgroup()...) // the VM's own cgroup
	want = append(want, "--", "--api-sock", "/run/firecracker.socket", "--config-file", "/vm.json")
	if !slices.Equal(argv, want) {
		t.Errorf("argv = %q\nwant   %q", argv, want)
	}
	for _, absent := range []string{"--daemonize", "--netns", "--new-pid-ns"} {
		// The start stage is already in the VM's namespace; the jailer stays
		// in the foreground as the unit's main process.
		if slices.Contains(argv, absent) {
			t.Errorf("argv has %s", absent)
		}
	}
	if i := slices.Index(argv, "--cgroup"); i < 0 || argv[i+1] != "pids.max=max" {
		t.Errorf("argv %q gives the VM no cgroup of its own", argv)
	}
	assertNoBootArgs(t, argv, s.BootArgs)
	if _, err := os.Stat(filepath.Join(root, "dev", "kvm")); err == nil {
		t.Error("the previous run's /dev/kvm is still in the chroot")
	}

	var jailed fcConfig
	if err := json.Unmarshal(b, &jailed); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{jailed.BootSource.KernelImagePath: s.Kernel, jailed.BootSource.InitrdPath: s.Initrd}
	for i, dr := range jailed.Drives {
		links[dr.PathOnHost] = s.Drives[i].Path
	}
	for inJail, host := range links {
		if !sameFile(t, filepath.Join(root, inJail), host) {
			t.Errorf("%s in the chroot is not a hard link of %s", inJail, host)
		}
	}
	owner := func(p string) (uint32, uint32) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid
	}
	if u, g := owner(filepath.Join(root, "/drive-data")); u != 2000007 || g != 2000008 {
		t.Errorf("writable disk owned by %d:%d, want 2000007:2000008", u, g)
	}
	// vm.json (mode 0600, root's) is not readable by the jail user as a
	// link, so the jail gets a copy that is.
	if got, err := os.ReadFile(filepath.Join(root, "vm.json")); err != nil || string(got) != string(b) {
		t.Errorf("vm.json in the chroot: %v, content equal: %v", err, string(got) == string(b))
	}
	if u, g := owner(filepath.Join(root, "/vm.json")); u != 2000007 || g != 2000008 {
		t.Errorf("vm.json in the chroot owned by %d:%d, want 2000007:2000008", u, g)
	}
	if u, g := owner(filepath.Join(root, "/run")); u != 2000007 || g != 2000008 {
		t.Errorf("/run in the chroot owned by %d:%d, want 2000007:2000008", u, g)
	}
	for p, want := range map[string]os.FileMode{"/vm.json": 0o600, "/run": os.ModeDir | 0o755} {
		if fi, err := os.Lstat(filepath.Join(root, p)); err != nil || fi.Mode() != want {
			t.Errorf("%s in the chroot: %v, want mode %v", p, err, want)
		}
	}
	if u, _ := owner(filepath.Join(root, "/drive-rootfs")); u != 0 {
		t.Errorf("read-only disk handed to uid %d; shared images must keep their owner", u)
	}
	target, err := os.Readlink(s.SocketPath)
	if err != nil || target != filepath.Join(root, "run", "firecracker.socket") {
		t.Errorf("host socket path %s -> %q (%v), want the chroot's API socket", s.SocketPath, target, err)
	}

	// A disk swapped for a link after create, the writable one above all
	// (it is given to the jail user), is refused: the link's target is
	// neither linked into the chroot nor handed to the jail user.
	canary := filepath.Join(t.TempDir(), "canary")
	os.WriteFile(canary, []byte("canary"), 0o600)
	for _, i := range []int{2, 1} {
		orig := s.Drives[i].Path
		os.Rename(orig, orig+".orig")
		os.Symlink(canary, orig)
		_, err := d.Command(s, cfg)
		if !errors.Is(err, beneath.ErrLink) || !strings.Contains(err.Error(), "drive "+s.Drives[i].ID) {
			t.Errorf("drive %s swapped for a link: Command = %v, want a refusal naming it", s.Drives[i].ID, err)
		}
		os.Remove(orig)
		os.Rename(orig+".orig", orig)
	}
	if u, g := owner(canary); u != 0 || g != 0 {
		t.Errorf("the link's target was given to %d:%d", u, g)
	}
	if fi, _ := os.Stat(canary); fi.Sys().(*syscall.Stat_t).Nlink != 1 {
		t.Error("the link's target was hard-linked somewhere")
	}
}

// MGR_JAILER unset means the jailer whenever its binary is found;
// MGR_JAILER=0 never; MGR_JAILER=1 always (a missing binary fails at start).
func TestResolveTurnsTheJailerOnWhenFound(t *testing.T) {
	dir := t.TempDir()
	jailer := fakeExecutable(t, dir, "jailer")
	missing := filepath.Join(dir, "no-jailer")
	for _, tc := range []struct {
		d    config.Driver
		want bool
	}{
		{config.Driver{JailerAuto: true, JailerBin: jailer}, true},
		{config.Driver{JailerAuto: true, JailerBin: missing}, false},
		{config.Driver{JailerBin: jailer}, false}, // MGR_JAILER=0
		{config.Driver{Jailer: true, JailerBin: missing}, true},
	} {
		if got := Resolve("firecracker", tc.d).Jailer; got != tc.want {
			t.Errorf("Resolve(%+v).Jailer = %v, want %v", tc.d, got, tc.want)
		}
	}
}

// The jail runs as the VM's own ids unless MGR_JAILER_UID/GID name others;
// never as root, and never with half an explicit pair.
func TestFirecrackerJailIDs(t *testing.T) {
	for _, d := range []firecracker{{jailerUID: "", jailerGID: "1"}, {jailerUID: "1", jailerGID: "staff"}, {jailerUID: "0", jailerGID: "0"}} {
		if _, _, err := d.ids(Spec{UID: 2000001, GID: 2000001}); err == nil || !strings.Contains(err.Error(), "MGR_JAILER_") {
			t.Errorf("ids(%q, %q) = %v, want an error naming the variable", d.jailerUID, d.jailerGID, err)
		}
	}
	if _, _, err := (&firecracker{}).ids(Spec{}); err == nil || !strings.Contains(err.Error(), "has none") {
		t.Errorf("ids of a record without its own ids = %v, want a refusal (never root)", err)
	}
	if u, g, err := (&firecracker{}).ids(Spec{UID: 2000001, GID: 2000001}); err != nil || u != 2000001 || g != 2000001 {
		t.Errorf("ids = %d, %d, %v; want the VM's own 2000001", u, g, err)
	}
	if u, g, err := (&firecracker{jailerUID: "1234", jailerGID: "2345"}).ids(Spec{UID: 2000001, GID: 2000001}); err != nil || u != 1234 || g != 2345 {
		t.Errorf("ids = %d, %d, %v; want the explicit 1234:2345", u, g, err)
	}
}

// realFirecracker is the binary named by MERGEN_FIRECRACKER_BIN, or a
// loud skip saying how to give one.
func realFirecracker(t *testing.T, needs string) string {
	bin := os.Getenv("MERGEN_FIRECRACKER_BIN")
	if bin == "" {
		t.Skipf("SKIPPED: no Firecracker binary on this machine; run with MERGEN_FIRECRACKER_BIN=/path/to/firecracker%s go test ./internal/vmm -run TestRealFirecracker", needs)
	}
	return bin
}

// realJailedFirecracker is the Firecracker, jailer and uncompressed kernel
// the MERGEN_FIRECRACKER_BIN, MERGEN_JAILER_BIN and
// MERGEN_FIRECRACKER_KERNEL name, for tests that boot a jailed VM as root;
// else a loud skip saying how to give them.
func realJailedFirecracker(t *testing.T) (bin, jailer, kernel string) {
	bin = realFirecracker(t, " MERGEN_JAILER_BIN=/path/to/jailer MERGEN_FIRECRACKER_KERNEL=/path/to/vmlinux (as root, on a KVM host)")
	jailer, kernel = os.Getenv("MERGEN_JAILER_BIN"), os.Getenv("MERGEN_FIRECRACKER_KERNEL")
	if jailer == "" || kernel == "" {
		t.Skip("SKIPPED: set MERGEN_JAILER_BIN and MERGEN_FIRECRACKER_KERNEL (an uncompressed vmlinux) with MERGEN_FIRECRACKER_BIN to run Firecracker under its jailer")
	}
	testenv.RequireRoot(t)
	return bin, jailer, kernel
}

// TestRealFirecrackerAPI holds a real Firecracker to the same contract as
// the fake. It needs no KVM: nothing boots.
func TestRealFirecrackerAPI(t *testing.T) {
	bin := realFirecracker(t, "")
	socket := filepath.Join(t.TempDir(), "fc.sock")
	startProcess(t, []string{bin, "--api-sock", socket}, filepath.Join(t.TempDir(), "firecracker.log"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := firecracker{bin: bin, vsock: true}
	waitStatus(ctx, t, &d, socket, func(State) bool { return true })
	checkFirecrackerContract(t, socket, d)
}

// TestRealFirecracker boots with a real Firecracker: vm.json accepted by
// --config-file, the guest reported Running through the API socket, and
// Ctrl-Alt-Del accepted. It needs a host where /dev/kvm works and an
// uncompressed kernel in MERGEN_FIRECRACKER_KERNEL.
func TestRealFirecracker(t *testing.T) {
	bin := realFirecracker(t, " MERGEN_FIRECRACKER_KERNEL=/path/to/vmlinux (on a KVM host)")
	kernel := os.Getenv("MERGEN_FIRECRACKER_KERNEL")
	if kernel == "" {
		t.Skip("SKIPPED: set MERGEN_FIRECRACKER_KERNEL to an uncompressed vmlinux to boot with MERGEN_FIRECRACKER_BIN")
	}
	d := &firecracker{bin: bin}
	if err := d.Check(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.Kernel, s.KernelBeneath = kernel, filepath.Dir(kernel)
	// The root file system is not one: the kernel panics and, without
	// panic=, stays up, which leaves the VMM running for the API calls.
	// The drives are still opened by Firecracker, through the descriptors
	// Command opened (/proc/self/fd/N).
	s.BootArgs = "console=ttyS0 reboot=k"
	for _, d := range s.Drives {
		if err := os.Truncate(d.Path, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	s.NIC = nil
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "vm.json")
	os.WriteFile(cfg, b, 0o600)
	l, err := d.Command(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	startLaunch(t, l, filepath.Join(dir, "console.log"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := waitStatus(ctx, t, d, s.SocketPath, func(st State) bool { return st.Running })
	if st.State != "Running" {
		t.Fatalf("state %q, want Running", st.State)
	}
	if err := d.Shutdown(ctx, s.SocketPath); err != nil {
		t.Fatal(err)
	}
}

// sameFile reports whether a and b are the same inode.
func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Stat(a)
	if err != nil {
		t.Error(err)
		return false
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Error(err)
		return false
	}
	return os.SameFile(fa, fb)
}

func fakeExecutable(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFirecrackerJailAcrossFileSystems: with the chroot on another file
// system, read-only files are copied in for the jail user, and a writable
// disk is refused rather than copied (the guest's writes would be lost).
func TestFirecrackerJailAcrossFileSystems(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	base, err := os.MkdirTemp("/dev/shm", "mergen-jail-")
	if err != nil {
		t.Skipf("SKIPPED: no /dev/shm to put the chroot on another file system: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if devOf(t, dir) == devOf(t, base) {
		t.Skipf("SKIPPED: %s and %s are on the same file system", dir, base)
	}
	s := testSpec(t, dir)
	d := &firecracker{bin: fakeExecutable(t, dir, "firecracker"), jailer: true, jailerBin: fakeExecutable(t, dir, "jailer"),
		jailerUID: "1234", jailerGID: "2345", chrootBase: base}
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "vm.json")
	os.WriteFile(cfg, b, 0o600)

	_, err = d.Command(s, cfg)
	if err == nil || !strings.Contains(err.Error(), "drive data") || !strings.Contains(err.Error(), "would lose the guest's writes") {
		t.Fatalf("Command with a writable disk on another file system = %v, want a refusal naming the drive", err)
	}
	if _, err := os.Stat(filepath.Join(base, "firecracker", s.ID)); err == nil {
		t.Error("the refused start left a half-made chroot")
	}

	s.Drives = s.Drives[:2] // read-only ones only
	b, _ = d.Config(s)
	os.WriteFile(cfg, b, 0o600)
	l, err := d.Command(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(l.Argv, base) {
		t.Errorf("argv %q does not name the chroot base %s", l.Argv, base)
	}
	copied := filepath.Join(base, "firecracker", s.ID, "root", "drive-rootfs")
	if sameFile(t, copied, s.Drives[1].Path) {
		t.Errorf("%s is a link across file systems?", copied)
	}
	if got, _ := os.ReadFile(copied); string(got) != "x" {
		t.Errorf("copied disk holds %q", got)
	}
	if fi, err := os.Stat(copied); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 1234 {
		t.Errorf("the copy is not the jail user's: %v", err)
	}
}

func devOf(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(fi.Sys().(*syscall.Stat_t).Dev)
}

// TestRealFirecrackerJailed runs a real Firecracker under its real jailer
// as a VM's own uid/gid, with a network interface backed by a tap that
// uid owns, in a network namespace of its own, to Running; then checks
// who the VMM is (/proc/<pid>/status) and that it sits in its own cgroup.
// Needs root, MERGEN_FIRECRACKER_BIN, MERGEN_JAILER_BIN and
// MERGEN_FIRECRACKER_KERNEL (an uncompressed vmlinux), and a working
// /dev/kvm.
func TestRealFirecrackerJailed(t *testing.T) {
	bin, jailer, kernel := realJailedFirecracker(t)
	d := &firecracker{bin: bin, jailer: true, jailerBin: jailer}
	if err := d.Check(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.Kernel, s.KernelBeneath = kernel, filepath.Dir(kernel)
	s.BootArgs = "console=ttyS0 reboot=k" // no root file system: the guest panics and stays up
	for _, dr := range s.Drives {
		if err := os.Truncate(dr.Path, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	s.UID, s.GID = testVMMUID, testVMMUID
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "vm.json")
	os.WriteFile(cfg, b, 0o600)
	l, err := d.Command(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("jailer argv: %q", l.Argv)

	// The tap, owned by the VM's ids, alone in a namespace of its own, as
	// pre-start makes it; the jailer starts in it as the start stage does.
	ip := testenv.Tool(t, "ip")
	t.Cleanup(func() {
		// The jailer leaves the VM's cgroup behind; empty once the VMM
		// is gone (startLaunch's clean-up, registered later and so run first, kills it).
		os.Remove(filepath.Join("/sys/fs/cgroup/pids/firecracker", s.ID))
		os.Remove(filepath.Join("/sys/fs/cgroup/firecracker", s.ID))
	})
	var proc *os.Process
	func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Fatal(err)
		}
		ns.Close()
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		id := strconv.Itoa(testVMMUID)
		if out, err := exec.Command(ip, "tuntap", "add", "dev", s.NIC.TapName, "mode", "tap", "vnet_hdr", "user", id, "group", id).CombinedOutput(); err != nil {
			t.Fatalf("ip tuntap add: %v\n%s", err, out)
		}
		proc = startLaunch(t, l, filepath.Join(dir, "console.log"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := waitStatus(ctx, t, d, s.SocketPath, func(st State) bool { return st.Running })
	if st.State != "Running" {
		t.Fatalf("state %q, want Running", st.State)
	}
	status := string(readFile(fmt.Sprintf("/proc/%d/status", proc.Pid)))
	id := strconv.Itoa(testVMMUID)
	if !strings.Contains(status, "Uid:\t"+id+"\t"+id+"\t"+id+"\t"+id+"\n") || !strings.Contains(status, "Gid:\t"+id+"\t"+id+"\t"+id+"\t"+id+"\n") {
		t.Errorf("Firecracker (pid %d) does not run as the VM's uid/gid %s:\n%s", proc.Pid, id, status)
	}
	cg := string(readFile(fmt.Sprintf("/proc/%d/cgroup", proc.Pid)))
	if !strings.Contains(cg, "firecracker/"+s.ID) {
		t.Errorf("Firecracker (pid %d) is not in its own cgroup (firecracker/%s):\n%s", proc.Pid, s.ID, cg)
	}
	t.Logf("Firecracker pid %d: Running as uid/gid %s with interface eth0 on %s; cgroups:\n%s", proc.Pid, id, s.NIC.TapName, cg)
	if err := d.Shutdown(ctx, s.SocketPath); err != nil {
		t.Fatal(err)
	}
}

// Release removes the VM's jail (its own directory under the chroot base)
// and nothing beside it; a VM without the jailer has nothing to release.
func TestReleaseRemovesOnlyTheVMsJail(t *testing.T) {
	base := t.TempDir()
	s := Spec{ID: "0b6f4a2e-1111-4111-8111-111111111111", WorkDir: t.TempDir()}
	other := filepath.Join(base, "firecracker", "7c1d9e30-3333-4333-8333-333333333333", "root")
	mine := filepath.Join(base, "firecracker", s.ID, "root")
	for _, d := range []string{other, mine} {
		if err := os.MkdirAll(filepath.Join(d, "run"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	outside := filepath.Join(t.TempDir(), "kept")
	os.WriteFile(outside, []byte("x"), 0o644)
	os.Symlink(outside, filepath.Join(mine, "link")) // removed as a link, never followed
	if err := (&firecracker{chrootBase: base}).Release(s); err != nil {
		t.Fatalf("Release without the jailer: %v", err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Fatal("Release without the jailer removed the jail")
	}
	if err := (&firecracker{jailer: true, chrootBase: base}).Release(s); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(mine)); !os.IsNotExist(err) {
		t.Errorf("the VM's jail is still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another VM's jail was removed: %v", err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("a link's target was removed: %v", err)
	}
}
