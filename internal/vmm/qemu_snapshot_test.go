package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
)

// A snapshot of a real (empty, firmware-only) QEMU guest: Snapshot refuses
// a guest that is not paused, writes the migration stream of a paused one
// through the descriptor it hands QEMU, leaves the guest paused; a second
// QEMU started from the file (-incoming fd:N, as Command gives it) loads it
// and Restored continues it.
func TestQEMUSnapshotAndRestoreAgainstRealQEMU(t *testing.T) {
	bin := testenv.Tool(t, qemuDefaultBin)
	d := &qemu{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	machine := []string{bin, "-M", "q35", "-accel", "tcg", "-m", "128", "-nodefaults", "-no-user-config", "-display", "none"}
	src := Spec{ID: "src", SocketPath: filepath.Join(dir, "src.sock")}
	startProcess(t, append(machine, "-qmp", "unix:"+src.SocketPath+",server=on,wait=off"), filepath.Join(dir, "src.log"))
	waitStatus(ctx, t, d, src.SocketPath, func(s State) bool { return s.Running })

	snapDir := filepath.Join(dir, "snap")
	os.Mkdir(snapDir, 0o700)
	if _, err := d.Snapshot(ctx, src, snapDir); err == nil || !strings.Contains(err.Error(), "must be paused") {
		t.Fatalf("Snapshot of a running guest = %v; want it refused", err)
	}
	if entries, _ := os.ReadDir(snapDir); len(entries) != 0 {
		t.Fatalf("the refused snapshot left %v", entries)
	}
	if err := d.Pause(ctx, src.SocketPath); err != nil {
		t.Fatal(err)
	}
	files, err := d.Snapshot(ctx, src, snapDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0] != qemuMemoryFile {
		t.Fatalf("files %v", files)
	}
	fi, err := os.Stat(filepath.Join(snapDir, qemuMemoryFile))
	if err != nil || fi.Size() < 4096 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("memory file: %v, %v", fi, err)
	}
	if st, err := d.Status(ctx, src.SocketPath); err != nil || st.Running {
		t.Fatalf("after Snapshot the source runs again: %+v, %v", st, err)
	}

	dst := Spec{ID: "dst", SocketPath: filepath.Join(dir, "dst.sock"), Restore: &Restore{Dir: snapDir}}
	f, args, err := openRestore(dst)
	if err != nil {
		t.Fatal(err)
	}
	l := Launch{Argv: append(append(machine, "-qmp", "unix:"+dst.SocketPath+",server=on,wait=off"), args...), Files: []*os.File{f}}
	startLaunch(t, l, filepath.Join(dir, "dst.log"))
	if err := d.Restored(ctx, dst); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Status(ctx, dst.SocketPath); err != nil || !st.Running {
		t.Fatalf("restored guest: %+v, %v; want running", st, err)
	}
}

// A stream QEMU cannot load ends the restoring QEMU, and Restored says so
// instead of waiting for ever.
func TestQEMURestoreOfAGarbageStreamFails(t *testing.T) {
	bin := testenv.Tool(t, qemuDefaultBin)
	d := &qemu{}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, qemuMemoryFile), []byte("not a migration stream"), 0o600)
	dst := Spec{ID: "dst", SocketPath: filepath.Join(dir, "dst.sock"), Restore: &Restore{Dir: dir}}
	f, args, err := openRestore(dst)
	if err != nil {
		t.Fatal(err)
	}
	l := Launch{Argv: append([]string{bin, "-M", "q35", "-accel", "tcg", "-m", "128", "-nodefaults", "-no-user-config", "-display", "none",
		"-qmp", "unix:" + dst.SocketPath + ",server=on,wait=off"}, args...), Files: []*os.File{f}}
	startLaunch(t, l, filepath.Join(dir, "dst.log"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Restored(ctx, dst); err == nil || !strings.Contains(err.Error(), "exited while loading") {
		t.Fatalf("Restored of a garbage stream = %v; want it to say QEMU exited", err)
	}
}

// The shape names what a restore must match and leaves out what differs
// between VMs.
func TestQEMUShape(t *testing.T) {
	dir := t.TempDir()
	d := &qemu{accel: "tcg", kvmProbe: probe(false)}
	a := testSpec(t, dir)
	b := a
	b.ID = "1b6f4a2e-9c1d-4e8f-a0b1-3c5d7e9f1a2b"
	b.NIC = &NIC{TapName: "tap-1b6f4a2e", MAC: "02:fc:1b:6f:4a:2e"}
	b.SocketPath = filepath.Join(dir, "other.sock")
	sa, err := d.Shape(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := d.Shape(b)
	if sa != sb {
		t.Fatalf("VMs differing only in id, tap, MAC and socket have shapes\n%s\n%s", sa, sb)
	}
	for _, want := range []string{"q35", "tcg", "cpu max", "2 vCPU", "512 MiB", "rootfs:ro", "data:rw", "virtio-net-pci", "virtserialport"} {
		if !strings.Contains(sa, want) {
			t.Errorf("shape %q lacks %q", sa, want)
		}
	}
	c := a
	c.MemMiB = 1024
	if sc, _ := d.Shape(c); sc == sa {
		t.Error("another memory size has the same shape")
	}
	e := &qemu{accel: "tcg", entropy: true, kvmProbe: probe(false)}
	if se, _ := e.Shape(a); se == sa {
		t.Error("an added entropy device leaves the shape the same")
	}
}

func TestQEMUVersion(t *testing.T) {
	testenv.Tool(t, qemuDefaultBin)
	v, err := (&qemu{}).Version(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v == "" || strings.HasPrefix(v, "QEMU emulator version") || !strings.ContainsAny(v, "0123456789") {
		t.Fatalf("Version = %q", v)
	}
	again, _ := (&qemu{}).Version(context.Background())
	if again != v {
		t.Fatalf("second Version = %q, first %q", again, v)
	}
	if _, err := (&qemu{bin: "/nonexistent/qemu"}).Version(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Version of a missing binary = %v", err)
	}
}
