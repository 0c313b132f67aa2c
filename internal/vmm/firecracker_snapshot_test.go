package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	"github.com/mergenhq/mergen/internal/testenv"
)

// jailIDs are the jail's uid/gid for tests that lay out a chroot without
// running the jailer: the VM's test ids as root, this user's own
// otherwise (an unprivileged user can give files only to itself).
func jailIDs() (int, int) {
	if os.Geteuid() == 0 {
		return testVMMUID, testVMMUID
	}
	return os.Getuid(), os.Getgid()
}

// fakeJailedVM is a spec with its chroot's /run in place, as jail leaves
// it, and a fake Firecracker serving its API socket that sees that chroot
// as its root and runs as the jail's ids.
func fakeJailedVM(t *testing.T) (*firecracker, Spec, *fakeFirecracker, string) {
	t.Helper()
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.MemMiB = 128
	s.UID, s.GID = jailIDs()
	d := &firecracker{jailer: true, vsock: true}
	root, err := d.jailRoot(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, jailRunDir), 0o755); err != nil {
		t.Fatal(err)
	}
	fake, socket := startFakeFirecracker(t)
	fake.jailed(root, s.UID, s.GID, s.MemMiB)
	s.SocketPath = socket
	return d, s, fake, root
}

// bootFake takes the fake to Running, as a boot from vm.json does.
func bootFake(t *testing.T, socket string) {
	t.Helper()
	c := newFCClient(socket)
	ctx := context.Background()
	if err := c.do(ctx, "PUT", "/boot-source", map[string]string{"kernel_image_path": "/kernel"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.action(ctx, "InstanceStart"); err != nil {
		t.Fatal(err)
	}
}

func snapshotDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "snap")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkSnapshotFiles checks that dir holds exactly the files Snapshot
// returned, regular, this user's (root's), mode 0600, the memory file as
// long as the guest's memory.
func checkSnapshotFiles(t *testing.T, dir string, names []string, memMiB int) {
	t.Helper()
	if !slices.Equal(names, []string{"vmstate", "memory"}) {
		t.Errorf("Snapshot returned %q, want vmstate and memory", names)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != len(names) {
		t.Errorf("%s holds %d entries, want %d", dir, len(entries), len(names))
	}
	for _, name := range names {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid() || st.Nlink != 1 {
			t.Errorf("%s: mode %v, owner %d:%d, %d links; want a regular 0600 file of %d:%d with one name", name, fi.Mode(), st.Uid, st.Gid, st.Nlink, os.Geteuid(), os.Getegid())
		}
		if name == "memory" && fi.Size() != int64(memMiB)<<20 {
			t.Errorf("memory is %d bytes, want %d MiB", fi.Size(), memMiB)
		}
	}
}

// TestFirecrackerSnapshotTakesTheFilesOutOfTheJail: the paused guest's
// snapshot is written by Firecracker in its chroot (the documented body,
// Full, paths in the chroot) and ends up in the caller's directory as
// root's 0600 files; the chroot keeps nothing and the guest stays paused.
// A running guest is refused before Firecracker is asked.
func TestFirecrackerSnapshotTakesTheFilesOutOfTheJail(t *testing.T) {
	d, s, fake, root := fakeJailedVM(t)
	ctx := context.Background()
	bootFake(t, s.SocketPath)
	dir := snapshotDir(t)

	if _, err := d.Snapshot(ctx, s, dir); err == nil || !strings.Contains(err.Error(), "not paused") || !strings.Contains(err.Error(), s.ID) {
		t.Errorf("Snapshot of a running guest = %v, want a refusal naming the VM", err)
	}
	if err := d.Pause(ctx, s.SocketPath); err != nil {
		t.Fatal(err)
	}
	names, err := d.Snapshot(ctx, s, dir)
	if err != nil {
		t.Fatal(err)
	}
	checkSnapshotFiles(t, dir, names, s.MemMiB)
	if b, _ := os.ReadFile(filepath.Join(dir, "vmstate")); string(b) != fakeVMState {
		t.Errorf("vmstate holds %q, not what Firecracker wrote", b)
	}
	creates, _ := fake.Snapshots()
	want := `{"snapshot_type":"Full","snapshot_path":"/snapshot/vmstate","mem_file_path":"/snapshot/memory"}`
	if !slices.Equal(creates, []string{want}) {
		t.Errorf("PUT /snapshot/create bodies %q, want %s", creates, want)
	}
	if _, err := os.Lstat(filepath.Join(root, "snapshot")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the chroot's snapshot directory is still there: %v", err)
	}
	if st, err := d.Status(ctx, s.SocketPath); err != nil || !st.Paused {
		t.Errorf("after Snapshot: %+v, %v; want the guest still paused", st, err)
	}
	// The caller's directory must exist (and be a directory).
	if _, err := d.Snapshot(ctx, s, filepath.Join(dir, "vmstate")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Snapshot into a file = %v, want a refusal", err)
	}
}

// TestFirecrackerSnapshotAcrossFileSystems: with the chroot on another file
// system than the snapshot's directory, the files are copied out (and the
// copies are root's 0600 files of the right length).
func TestFirecrackerSnapshotAcrossFileSystems(t *testing.T) {
	base, err := os.MkdirTemp("/dev/shm", "mergen-jail-")
	if err != nil {
		t.Skipf("SKIPPED: no /dev/shm to put the chroot on another file system: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	dir := snapshotDir(t)
	if devOf(t, dir) == devOf(t, base) {
		t.Skipf("SKIPPED: %s and %s are on the same file system", dir, base)
	}
	s := testSpec(t, t.TempDir())
	s.MemMiB = 128
	s.UID, s.GID = jailIDs()
	d := &firecracker{jailer: true, chrootBase: base}
	root, _ := d.jailRoot(s)
	os.MkdirAll(filepath.Join(root, jailRunDir), 0o755)
	fake, socket := startFakeFirecracker(t)
	fake.jailed(root, s.UID, s.GID, s.MemMiB)
	s.SocketPath = socket
	bootFake(t, socket)
	ctx := context.Background()
	if err := d.Pause(ctx, socket); err != nil {
		t.Fatal(err)
	}
	names, err := d.Snapshot(ctx, s, dir)
	if err != nil {
		t.Fatal(err)
	}
	checkSnapshotFiles(t, dir, names, s.MemMiB)
	if b, _ := os.ReadFile(filepath.Join(dir, "vmstate")); string(b) != fakeVMState {
		t.Errorf("copied vmstate holds %q", b)
	}
}

// TestFirecrackerSnapshotRefusesWhatTheJailUserPutInstead: the jail user
// owns the directory Firecracker writes the snapshot in, so a hostile VMM
// can leave a link there (symbolic, or hard to a file of its own such as
// the VM's data disk) instead of a file; the driver takes neither, changes
// no owner through them, and leaves the caller's directory empty.
func TestFirecrackerSnapshotRefusesWhatTheJailUserPutInstead(t *testing.T) {
	for _, tc := range []struct {
		name string
		swap func(t *testing.T, mem, victim string)
		want string
	}{
		{"symlink", func(t *testing.T, mem, victim string) {
			os.Remove(mem)
			if err := os.Symlink(victim, mem); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"hard link", func(t *testing.T, mem, victim string) {
			os.Remove(mem)
			if err := os.Link(victim, mem); err != nil {
				t.Fatal(err)
			}
		}, "names"},
		{"wrong size", func(t *testing.T, mem, _ string) { os.Truncate(mem, 4096) }, "bytes"},
		{"directory swapped for a link", func(t *testing.T, mem, _ string) {
			// The jail user owns the chroot's root, where the directory is.
			d := filepath.Dir(mem)
			if err := os.Rename(d, d+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Base(d)+".real", d); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, s, fake, _ := fakeJailedVM(t)
			// The victim: a file the jail user owns, as it owns the data disk.
			victim := s.Drives[2].Path
			if err := os.Chown(victim, s.UID, s.GID); err != nil {
				t.Fatal(err)
			}
			fake.snapshotHook = func(_, mem string) { tc.swap(t, mem, victim) }
			bootFake(t, s.SocketPath)
			ctx := context.Background()
			d.Pause(ctx, s.SocketPath)
			dir := snapshotDir(t)
			_, err := d.Snapshot(ctx, s, dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), s.ID) {
				t.Fatalf("Snapshot = %v, want a refusal (%s) naming the VM", err, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("the refused snapshot left %d files in the caller's directory", len(entries))
			}
			fi, _ := os.Stat(victim)
			if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != s.UID || fi.Mode().Perm() != 0o644 {
				t.Errorf("the link's target changed: owner %d, mode %v", st.Uid, fi.Mode())
			}
		})
	}
}

// TestFirecrackerSnapshotNeedsTheJailer: without the jailer neither a
// snapshot nor a restore is attempted; the error says why and names
// MGR_JAILER.
func TestFirecrackerSnapshotNeedsTheJailer(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	d := &firecracker{bin: fakeExecutable(t, dir, "firecracker")}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "MGR_JAILER") || !strings.Contains(err.Error(), s.ID) {
			t.Errorf("%s without the jailer = %v, want ErrUnavailable naming MGR_JAILER and the VM", what, err)
		}
	}
	_, err := d.Snapshot(context.Background(), s, snapshotDir(t))
	check("Snapshot", err)
	b, _ := d.Config(s)
	cfg := filepath.Join(dir, "vm.json")
	os.WriteFile(cfg, b, 0o600)
	s.Restore = &Restore{Dir: dir}
	_, err = d.Command(s, cfg)
	check("Command with Restore", err)
	check("Restored", d.Restored(context.Background(), s))
}

// restoreDir holds a snapshot's files as the caller gives them to a VM: its
// own hard links, root's 0600.
func restoreDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "restore")
	os.Mkdir(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "vmstate"), []byte(fakeVMState), 0o600)
	os.WriteFile(filepath.Join(dir, "memory"), make([]byte, 4096), 0o600)
	return dir
}

// TestFirecrackerRestoreLaysOutTheChrootAndLoads: a start from a snapshot
// gives Firecracker its API socket only (no --config-file: a configured
// Firecracker cannot load), the disks at the chroot paths the snapshot
// names and the snapshot's files; Restored then sends the documented load
// body with resume_vm and returns with the guest Running. A second call
// loads nothing.
func TestFirecrackerRestoreLaysOutTheChrootAndLoads(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.UID, s.GID = jailIDs()
	bin := fakeExecutable(t, dir, "firecracker")
	d := &firecracker{bin: bin, jailer: true, jailerBin: fakeExecutable(t, dir, "jailer"), vsock: true}
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "vm.json")
	os.WriteFile(cfg, b, 0o600)

	rs := s
	rs.Restore = &Restore{Dir: "relative/dir"}
	if _, err := d.Command(rs, cfg); err == nil || !strings.Contains(err.Error(), "not an absolute path") {
		t.Errorf("Command with a relative snapshot directory = %v", err)
	}
	rs.Restore = &Restore{Dir: restoreDir(t)}
	os.Remove(filepath.Join(rs.Restore.Dir, "memory"))
	if _, err := d.Command(rs, cfg); err == nil || !strings.Contains(err.Error(), "snapshot memory") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Command with the memory file missing = %v, want an error naming it", err)
	}
	rs.Restore = &Restore{Dir: restoreDir(t)}
	l, err := d.Command(rs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := d.jailRoot(s)
	tail := []string{"--", "--api-sock", "/run/firecracker.socket"}
	if !slices.Equal(l.Argv[len(l.Argv)-len(tail):], tail) || slices.Contains(l.Argv, "--config-file") {
		t.Errorf("argv %q: want the API socket only after --", l.Argv)
	}
	for _, absent := range []string{"kernel", "initrd", "vm.json"} {
		if _, err := os.Lstat(filepath.Join(root, absent)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("/%s is in a restoring VM's chroot: %v", absent, err)
		}
	}
	for _, dr := range s.Drives {
		if !sameFile(t, filepath.Join(root, "drive-"+dr.ID), dr.Path) {
			t.Errorf("drive %s is not at /drive-%s in the chroot", dr.ID, dr.ID)
		}
	}
	for _, name := range []string{"vmstate", "memory"} {
		// root's 0600 files are not the jail user's to read: as root
		// they are copied for it; as that user, linked.
		p := filepath.Join(root, "restore", name)
		got, err := os.ReadFile(p)
		want, _ := os.ReadFile(filepath.Join(rs.Restore.Dir, name))
		if err != nil || string(got) != string(want) {
			t.Errorf("/restore/%s in the chroot: %v, same content: %v", name, err, string(got) == string(want))
		}
		if fi, err := os.Stat(p); err != nil || !readableBy(fi, s.UID, s.GID) {
			t.Errorf("/restore/%s is not readable by the jail's uid %d: %v", name, s.UID, err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(root, "restore")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
		t.Errorf("/restore is not root's: %v", err)
	}

	// Restored, against a Firecracker chrooted there.
	fake, socket := startFakeFirecracker(t)
	fake.jailed(root, s.UID, s.GID, 128)
	rs.SocketPath = socket
	ctx := context.Background()
	for range 2 {
		if err := d.Restored(ctx, rs); err != nil {
			t.Fatal(err)
		}
	}
	_, loads := fake.Snapshots()
	want := `{"snapshot_path":"/restore/vmstate","mem_file_path":"/restore/memory","enable_diff_snapshots":false,"resume_vm":true}`
	if !slices.Equal(loads, []string{want}) {
		t.Errorf("PUT /snapshot/load bodies %q, want once %s", loads, want)
	}
	if st, err := d.Status(ctx, socket); err != nil || !st.Running {
		t.Errorf("after Restored: %+v, %v; want Running", st, err)
	}
	if err := d.Restored(ctx, s); err == nil || !strings.Contains(err.Error(), "not started from a snapshot") {
		t.Errorf("Restored without Spec.Restore = %v", err)
	}

	// A Firecracker that was configured (started with --config-file)
	// cannot load; its refusal is the error.
	_, socket = startFakeFirecracker(t)
	if err := newFCClient(socket).do(ctx, "PUT", "/boot-source", map[string]string{"kernel_image_path": "/kernel"}, nil); err != nil {
		t.Fatal(err)
	}
	rs.SocketPath = socket
	if err := d.Restored(ctx, rs); err == nil || !strings.Contains(err.Error(), "not allowed after configuring") || !strings.Contains(err.Error(), s.ID) {
		t.Errorf("Restored on a configured Firecracker = %v, want its refusal naming the VM", err)
	}
}

// fakeVsock listens on a unix socket and answers each connection as
// Firecracker's hybrid vsock would, with answer (written after the
// CONNECT line has been read); the guest then sends "hello".
func fakeVsock(t *testing.T, path, answer string) <-chan string {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan string, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := readAnswer(c)
				if err != nil {
					return
				}
				got <- string(line)
				switch answer {
				case "close":
					return
				case "silent":
					io.Copy(io.Discard, c)
					return
				}
				io.WriteString(c, answer+"hello")
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return got
}

// TestFirecrackerAgentHandshake: Agent dials the vsock socket (in the
// chroot with the jailer, however long its path), writes CONNECT 1024 and
// hands over the connection after the OK line, with nothing of the guest's
// stream consumed; any other answer, a closed connection, an overlong line
// or a context that ends is an error naming the VM.
func TestFirecrackerAgentHandshake(t *testing.T) {
	ctx := context.Background()
	s := testSpec(t, t.TempDir())
	d := &firecracker{vsock: true}
	path := filepath.Join(s.WorkDir, vsockSocket)
	got := fakeVsock(t, path, "OK 1073741824\n")
	conn, err := d.Agent(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if line := <-got; line != "CONNECT 1024" {
		t.Errorf("handshake line %q, want CONNECT 1024", line)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(conn, b); err != nil || string(b) != "hello" {
		t.Errorf("after the handshake the stream starts with %q, %v; want the guest's hello", b, err)
	}
	conn.Close()

	for _, tc := range []struct{ answer, want string }{
		{"ERR\n", `answered "ERR"`},
		{"OK\n", `answered "OK"`},
		{"OK 99999999999\n", `answered "OK 99999999999"`},
		{"HTTP/1.1 400 Bad Request\r\n", "answered"},
		{strings.Repeat("A", 4096), "longer than 32 bytes"},
		{"close", "closed the connection"},
	} {
		dir := t.TempDir()
		s := testSpec(t, dir)
		fakeVsock(t, filepath.Join(dir, vsockSocket), tc.answer)
		conn, err := d.Agent(ctx, s)
		if err == nil {
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), s.ID) || !strings.Contains(err.Error(), "vsock port 1024") {
			t.Errorf("answer %.20q: Agent = %v, want an error with %q naming the VM", tc.answer, err, tc.want)
		}
	}

	// No answer: the caller's context bounds the wait.
	dir := t.TempDir()
	s = testSpec(t, dir)
	fakeVsock(t, filepath.Join(dir, vsockSocket), "silent")
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := d.Agent(tctx, s); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Agent with no answer = %v, want the context's deadline", err)
	}

	// A link in the socket's place is not followed, even to a socket.
	dir = t.TempDir()
	s = testSpec(t, dir)
	other := filepath.Join(dir, "other.sock")
	fakeVsock(t, other, "OK 1\n")
	os.Symlink(other, filepath.Join(dir, vsockSocket))
	if _, err := d.Agent(ctx, s); !errors.Is(err, beneath.ErrLink) {
		t.Errorf("Agent through a link = %v, want a refusal", err)
	}
	// Nor is anything but a socket dialled.
	os.Remove(filepath.Join(dir, vsockSocket))
	os.WriteFile(filepath.Join(dir, vsockSocket), nil, 0o600)
	if _, err := d.Agent(ctx, s); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Agent on a regular file = %v, want a refusal", err)
	}

	// No vsock device: nothing to dial.
	if _, err := (&firecracker{}).Agent(ctx, s); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "MGR_VSOCK=0") {
		t.Errorf("Agent of a VM without vsock = %v, want ErrUnavailable naming MGR_VSOCK", err)
	}
	if _, err := d.Agent(ctx, testSpec(t, t.TempDir())); err == nil || !strings.Contains(err.Error(), "vsock.sock") {
		t.Errorf("Agent with no socket = %v, want an error naming it", err)
	}

	// With the jailer the socket is in the chroot, whose path is longer
	// than a unix socket address holds: bound under a short name in the
	// same file system and moved there.
	jd := &firecracker{jailer: true, vsock: true}
	s = testSpec(t, t.TempDir())
	root, _ := jd.jailRoot(s)
	os.MkdirAll(filepath.Join(root, jailRunDir), 0o755)
	jailed := filepath.Join(root, jailVsock)
	short := filepath.Join(s.WorkDir, "v.sock")
	got = fakeVsock(t, short, "OK 7\n")
	if err := os.Rename(short, jailed); err != nil {
		t.Fatal(err)
	}
	t.Logf("jailed vsock socket: %d bytes: %s", len(jailed), jailed)
	conn, err = jd.Agent(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if line := <-got; line != "CONNECT 1024" {
		t.Errorf("handshake line %q", line)
	}
	// The jail user owns the chroot's root and /run: a /run that leads
	// elsewhere (to another VM's socket, say) is not followed.
	os.Rename(filepath.Join(root, "run"), filepath.Join(root, "elsewhere"))
	os.Symlink("elsewhere", filepath.Join(root, "run"))
	if _, err := jd.Agent(ctx, s); !errors.Is(err, beneath.ErrLink) {
		t.Errorf("Agent with the chroot's /run a link = %v, want a refusal", err)
	}
}

// TestFirecrackerVersion: the first line of --version, asked of the binary
// once while it is unchanged and again when it is replaced; output that
// is not a Firecracker version is an error (and not remembered), a missing
// binary is ErrUnavailable.
func TestFirecrackerVersion(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "firecracker")
	runs := filepath.Join(dir, "runs")
	write := func(out string) {
		script := fmt.Sprintf("#!/bin/sh\necho run >>%s\nprintf '%%s' '%s'\n", runs, out)
		tmp := bin + ".tmp"
		if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, bin); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int { b, _ := os.ReadFile(runs); return strings.Count(string(b), "run") }
	ctx := context.Background()
	d := &firecracker{bin: bin}

	write("Firecracker v1.0.0-44-gc73a27cb\n\nSupported snapshot data format versions: v0.23.0, v0.24.0, v0.25.0, v1.0.0\n")
	for range 3 {
		v, err := d.Version(ctx)
		if err != nil || v != "Firecracker v1.0.0-44-gc73a27cb" {
			t.Fatalf("Version = %q, %v", v, err)
		}
	}
	if n := count(); n != 1 {
		t.Errorf("--version ran %d times for three calls on an unchanged binary, want 1", n)
	}
	write("Firecracker v1.7.0\n")
	if v, err := d.Version(ctx); err != nil || v != "Firecracker v1.7.0" {
		t.Errorf("Version after the binary was replaced = %q, %v", v, err)
	}
	if n := count(); n != 2 {
		t.Errorf("--version ran %d times, want 2", n)
	}
	for _, out := range []string{"", "qemu-system-x86_64 version 7.2\n", "Firecracker\n", strings.Repeat("x", 10000)} {
		write(out)
		before := count()
		for range 2 {
			if v, err := d.Version(ctx); err == nil || !strings.Contains(err.Error(), bin) || !strings.Contains(err.Error(), "--version") {
				t.Errorf("Version of %.20q = %q, %v; want an error naming the binary", out, v, err)
			}
		}
		if count() != before+2 {
			t.Errorf("a failed --version was remembered")
		}
	}
	missing := &firecracker{bin: filepath.Join(dir, "absent")}
	if _, err := missing.Version(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Version of a missing binary = %v, want ErrUnavailable", err)
	}
}

// TestFirecrackerShape: what a snapshot's VM and a restored one must share
// is in the shape; what differs between two VMs of one snapshot (id, paths,
// tap, MAC) is not.
func TestFirecrackerShape(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir)
	d := &firecracker{vsock: true}
	shape, err := d.Shape(s)
	if err != nil {
		t.Fatal(err)
	}
	if want := "firecracker: 2 vCPU, 512 MiB, drives agent(ro) rootfs(ro,root) data(rw), net, vsock"; shape != want {
		t.Errorf("Shape = %q\nwant    %q", shape, want)
	}
	same := s
	same.ID = "7c1d9e30-3333-4333-8333-333333333333"
	same.NIC = &NIC{TapName: "tap-other", MAC: "02:fc:00:00:00:09"}
	same.SocketPath, same.WorkDir = filepath.Join(dir, "other.sock"), filepath.Join(dir, "other")
	same.Drives = slices.Clone(s.Drives)
	same.Drives[2].Path = filepath.Join(dir, "rootfs.ext4")
	same.BootArgs = "console=ttyS0"
	if got, _ := d.Shape(same); got != shape {
		t.Errorf("another VM of the same shape: %q, want %q", got, shape)
	}
	for name, tc := range map[string]struct {
		d      *firecracker
		mutate func(*Spec)
	}{
		"vcpu":      {d, func(s *Spec) { s.VCPU = 1 }},
		"memory":    {d, func(s *Spec) { s.MemMiB = 256 }},
		"order":     {d, func(s *Spec) { s.Drives[0], s.Drives[1] = s.Drives[1], s.Drives[0] }},
		"read-only": {d, func(s *Spec) { s.Drives[2].ReadOnly = true }},
		"root":      {d, func(s *Spec) { s.Drives[1].Root = false }},
		"drive id":  {d, func(s *Spec) { s.Drives[2].ID = "data2" }},
		"no drive":  {d, func(s *Spec) { s.Drives = s.Drives[:2] }},
		"no nic":    {d, func(s *Spec) { s.NIC = nil }},
		"no vsock":  {&firecracker{}, func(*Spec) {}},
		"entropy":   {&firecracker{vsock: true, entropy: true}, func(*Spec) {}},
	} {
		o := s
		o.Drives = slices.Clone(s.Drives)
		tc.mutate(&o)
		got, err := tc.d.Shape(o)
		if err != nil || got == shape {
			t.Errorf("%s: Shape = %q, %v; want a shape other than %q", name, got, err, shape)
		}
	}
	bad := s
	bad.VCPU = 0
	if _, err := d.Shape(bad); err == nil || !strings.Contains(err.Error(), "vcpu") {
		t.Errorf("Shape of an invalid spec = %v", err)
	}
}

// launched is a VMM process started by a test, which stop kills and
// waits for.
type launched struct {
	proc *os.Process
	done chan struct{}
}

func (l *launched) stop() {
	l.proc.Kill()
	<-l.done
}

// launchIn runs a Launch in the network namespace ns (as the start stage
// runs it in the VM's), its output to logPath; the test's end stops it.
func launchIn(t *testing.T, ns netns.NsHandle, l Launch, logPath string) *launched {
	t.Helper()
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := execCmd(l)
	cmd.Stdout, cmd.Stderr = log, log
	err = func() error {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			return err
		}
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		return cmd.Start()
	}()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	p := &launched{proc: cmd.Process, done: make(chan struct{})}
	go func() { cmd.Wait(); log.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s output:\n%s", filepath.Base(logPath), b)
		}
	})
	return p
}

// newNetnsWithTap makes a network namespace holding only a tap called
// tap, owned by uid/gid, as pre-start makes a VM's.
func newNetnsWithTap(t *testing.T, tap string, uid, gid int) netns.NsHandle {
	t.Helper()
	ip := testenv.Tool(t, "ip")
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
	out, err := exec.Command(ip, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr", "user", strconv.Itoa(uid), "group", strconv.Itoa(gid)).CombinedOutput()
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("return to the original network namespace: %v", serr)
	}
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("ip tuntap add: %v\n%s", err, out)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// TestRealFirecrackerSnapshotRestore takes a snapshot of a real, jailed
// Firecracker and restores it in a second one: boot to Running, pause,
// Snapshot into a fresh directory, kill; then Command with Spec.Restore
// (the VM's own hard links of the files, as the daemon makes them), which
// must start without --config-file, Restored, and GET / reports Running.
// Both run as the VM's uid in one network namespace with the VM's tap
// (the restored VM gets the tap name the snapshot names), with a vsock
// device. The guest need not work: it panics without a root file system
// and stays up, which is enough for the VMM. Needs root,
// MERGEN_FIRECRACKER_BIN, MERGEN_JAILER_BIN and MERGEN_FIRECRACKER_KERNEL
// (an uncompressed vmlinux), and a working /dev/kvm.
func TestRealFirecrackerSnapshotRestore(t *testing.T) {
	bin, jailer, kernel := realJailedFirecracker(t)
	d := &firecracker{bin: bin, jailer: true, jailerBin: jailer, vsock: true}
	if err := d.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	version, err := d.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := testSpec(t, dir)
	s.Kernel, s.KernelBeneath = kernel, filepath.Dir(kernel)
	s.MemMiB = 128
	s.BootArgs = "console=ttyS0 reboot=k"
	for _, dr := range s.Drives {
		if err := os.Truncate(dr.Path, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	s.UID, s.GID = testVMMUID, testVMMUID
	t.Cleanup(func() { d.Release(s) })
	b, err := d.Config(s)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "vm.json")
	os.WriteFile(cfg, b, 0o600)
	ns := newNetnsWithTap(t, s.NIC.TapName, s.UID, s.GID)

	l, err := d.Command(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	first := launchIn(t, ns, l, filepath.Join(dir, "first.log"))
	waitStatus(ctx, t, d, s.SocketPath, func(st State) bool { return st.Running })
	if err := d.Pause(ctx, s.SocketPath); err != nil {
		t.Fatal(err)
	}
	snap := snapshotDir(t)
	names, err := d.Snapshot(ctx, s, snap)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	checkSnapshotFiles(t, snap, names, s.MemMiB)
	if st, err := d.Status(ctx, s.SocketPath); err != nil || !st.Paused {
		t.Errorf("after Snapshot: %+v, %v; want the guest still paused", st, err)
	}
	first.stop()

	// The VM's own hard links of the snapshot's files.
	own := filepath.Join(t.TempDir(), "restore")
	os.Mkdir(own, 0o700)
	for _, name := range names {
		if err := os.Link(filepath.Join(snap, name), filepath.Join(own, name)); err != nil {
			t.Fatal(err)
		}
	}
	rs := s
	rs.Restore = &Restore{Dir: own}
	l, err = d.Command(rs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(l.Argv, "--config-file") {
		t.Fatalf("restore argv %q has --config-file", l.Argv)
	}
	launchIn(t, ns, l, filepath.Join(dir, "second.log"))
	if st := waitStatus(ctx, t, d, rs.SocketPath, func(State) bool { return true }); st.State != "Not started" {
		t.Fatalf("restoring Firecracker reports %q before the load, want Not started", st.State)
	}
	if err := d.Restored(ctx, rs); err != nil {
		t.Fatal(err)
	}
	st, err := d.Status(ctx, rs.SocketPath)
	if err != nil || !st.Running || st.State != "Running" {
		t.Fatalf("after Restored: %+v, %v; want Running", st, err)
	}
	root, _ := d.jailRoot(s)
	if fi, err := os.Lstat(filepath.Join(root, jailVsock)); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("the restored VM's vsock socket %s: %v", jailVsock, err)
	}
	t.Logf("%s: boot, pause and snapshot of %d MiB in %v; restored to %s", version, s.MemMiB, took.Round(time.Millisecond), st.State)

	// Nothing listens in this guest, which never answers: the handshake
	// fails, and says so, when the context ends.
	actx, acancel := context.WithTimeout(ctx, 2*time.Second)
	defer acancel()
	if conn, err := d.Agent(actx, rs); err == nil {
		conn.Close()
		t.Error("Agent connected to a guest without an agent")
	} else {
		t.Logf("Agent on a guest without an agent: %v", err)
	}
}
