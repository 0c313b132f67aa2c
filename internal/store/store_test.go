package store

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/lock"
	"github.com/mergenhq/mergen/internal/proc"
)

func newStore(t testing.TB) *Store {
	t.Helper()
	d := t.TempDir()
	s, err := Open(layout.Layout{ConfigRoot: filepath.Join(d, "vm.d"), RunRoot: filepath.Join(d, "run"), DataRoot: filepath.Join(d, "data")})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func files(id string) map[string][]byte {
	meta, _ := MarshalMeta(Meta{ID: id, GuestIP: "172.30.0.2"})
	return map[string][]byte{FileMeta: meta, FileVMConfig: []byte(`{}`), FileHooks: []byte(`{}`), FileEnv: []byte("A=1\n")}
}

func TestValidateIDAcceptsOnlyCanonicalUUIDs(t *testing.T) {
	good := "3f2a1c9e-8b7d-4e6f-9a0b-1c2d3e4f5a6b"
	if err := ValidateID(good); err != nil {
		t.Fatalf("valid id rejected: %v", err)
	}
	for _, bad := range []string{"", "..", "../etc", "a/b", "3F2A1C9E-8B7D-4E6F-9A0B-1C2D3E4F5A6B",
		"{3f2a1c9e-8b7d-4e6f-9a0b-1c2d3e4f5a6b}", "3f2a1c9e8b7d4e6f9a0b1c2d3e4f5a6b", "urn:uuid:" + good, good + "/.."} {
		if err := ValidateID(bad); !errdefs.IsInvalid(err) {
			t.Errorf("ValidateID(%q) = %v, want invalid", bad, err)
		}
	}
}

func TestCreateWritesAllFilesWithPrivatePermissions(t *testing.T) {
	s := newStore(t)
	id := NewID()
	if err := s.Create(id, files(id)); err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{FileMeta: 0o600, FileVMConfig: 0o600, FileHooks: 0o600, FileEnv: 0o600}
	for name, perm := range want {
		st, err := os.Stat(filepath.Join(s.Layout.ConfigRoot, id, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if st.Mode().Perm() != perm {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), perm)
		}
	}
	m, err := s.ReadMeta(id)
	if err != nil || m.ID != id {
		t.Fatalf("ReadMeta = %+v, %v", m, err)
	}
	if err := s.Create(id, files(id)); !errdefs.IsConflict(err) {
		t.Fatalf("second create: %v, want conflict", err)
	}
}

func TestCreateLeavesNothingWhenItFails(t *testing.T) {
	s := newStore(t)
	id := NewID()
	f := files(id)
	f["../escape"] = []byte("x")
	if err := s.Create(id, f); !errdefs.IsInvalid(err) {
		t.Fatalf("create with a file name outside the VM directory: %v, want invalid", err)
	}
	if _, err := os.Stat(filepath.Join(s.Layout.ConfigRoot, "escape")); !os.IsNotExist(err) {
		t.Fatal("a file was written outside the VM directory")
	}
	entries, _ := os.ReadDir(s.Layout.ConfigRoot)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") || strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	if s.Exists(id) {
		t.Fatal("VM exists after a failed create")
	}
}

func TestInterruptedWorkIsInvisibleAndSwept(t *testing.T) {
	s := newStore(t)
	id := NewID()
	// What a crash in the middle of Create or Delete leaves.
	for _, n := range []string{layout.StagingPrefix + id + "-123", layout.TrashPrefix + id + "-456"} {
		if err := os.MkdirAll(filepath.Join(s.Layout.ConfigRoot, n), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(s.Layout.ConfigRoot, n, FileMeta), []byte(`{"id":"`+id+`"}`), 0o644)
	}
	// A torn atomic write of the generation file and of a VM's meta.json.
	os.WriteFile(filepath.Join(s.Layout.ConfigRoot, "..generation.tmp-42"), []byte("7"), 0o644)
	live := NewID()
	if err := s.Create(live, files(live)); err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(s.Layout.ConfigRoot, live, ".meta.json.tmp-99")
	os.WriteFile(torn, []byte("{"), 0o644)
	ids, err := s.IDs()
	if err != nil || len(ids) != 1 || ids[0] != live {
		t.Fatalf("IDs() = %v, %v; hidden directories must not be VMs", ids, err)
	}
	if err := s.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(s.Layout.ConfigRoot)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && e.Name() != filepath.Base(s.Layout.Generation()) && e.Name() != filepath.Base(s.Layout.AllocLock()) {
			t.Errorf("not swept: %s", e.Name())
		}
	}
	if _, err := os.Stat(torn); !os.IsNotExist(err) {
		t.Errorf("torn write inside the VM directory not swept")
	}
	if !s.Exists(live) {
		t.Errorf("sweep removed a live VM")
	}
}

// A delete killed after the record went leaves the VM's run and data
// directories and its lock files: the sweep removes them, keeps those of
// live VMs, and leaves alone an orphan still in use (a lock held, a VMM
// alive), saying so.
func TestSweepRemovesWhatAKilledDeleteLeft(t *testing.T) {
	s := newStore(t)
	live := NewID()
	if err := s.Create(live, files(live)); err != nil {
		t.Fatal(err)
	}
	leave := func(id string) layout.VM {
		p := s.Paths(id)
		os.MkdirAll(p.RunDir, 0o700)
		os.MkdirAll(p.DataDir, 0o700)
		os.WriteFile(p.ConsoleLog, []byte("boot"), 0o600)
		os.WriteFile(p.SupervisorLog, []byte("log"), 0o644)
		os.WriteFile(p.Lock, nil, 0o644)
		os.WriteFile(p.StageLock, nil, 0o644)
		return p
	}
	livePaths := leave(live)
	gone := leave(NewID())
	onlyData := s.Paths(NewID())
	os.MkdirAll(onlyData.DataDir, 0o700)
	onlyLock := s.Paths(NewID())
	os.WriteFile(onlyLock.Lock, nil, 0o644)
	busy := leave(NewID())
	held, err := lock.Acquire(context.Background(), busy.Lock)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	running := leave(NewID())
	if err := proc.WritePIDFile(running.PIDFile, proc.Self()); err != nil {
		t.Fatal(err)
	}
	// Not VMs: foreign names under the roots stay.
	foreign := []string{filepath.Join(s.Layout.RunRoot, "mergen.sock"), filepath.Join(s.Layout.VMsDataDir(), "notes"), filepath.Join(s.Layout.LocksDir(), "other.lock")}
	for _, f := range foreign {
		os.MkdirAll(filepath.Dir(f), 0o755)
		os.WriteFile(f, nil, 0o644)
	}

	err = s.Sweep(context.Background())
	if err == nil || !strings.Contains(err.Error(), busy.ID) || !strings.Contains(err.Error(), running.ID) || !strings.Contains(err.Error(), "still runs") {
		t.Errorf("sweep error %v, want one naming the busy and the running orphans", err)
	}
	for _, p := range []string{gone.RunDir, gone.DataDir, gone.Lock, gone.StageLock, onlyData.DataDir, onlyLock.Lock} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("not swept: %s (%v)", p, err)
		}
	}
	for _, p := range append([]string{livePaths.RunDir, livePaths.ConsoleLog, livePaths.Lock, livePaths.StageLock,
		busy.RunDir, busy.ConsoleLog, busy.Lock, running.RunDir, running.ConsoleLog, running.Lock}, foreign...) {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("swept but should stay: %s (%v)", p, err)
		}
	}
	// Once nothing uses it, the next sweep takes the busy orphan.
	held.Release()
	s.Sweep(context.Background())
	if _, err := os.Lstat(busy.RunDir); !os.IsNotExist(err) {
		t.Errorf("a released orphan is not swept: %v", err)
	}
}

// The sweep waits for the allocation lock: a create or delete in progress
// finishes first.
func TestSweepWaitsForTheAllocationLock(t *testing.T) {
	s := newStore(t)
	unlock, err := s.LockAlloc(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	orphan := s.Paths(NewID())
	os.MkdirAll(orphan.DataDir, 0o700)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Sweep(ctx); !errdefs.IsConflict(err) {
		t.Fatalf("sweep under a held allocation lock: %v, want busy", err)
	}
	if _, err := os.Stat(orphan.DataDir); err != nil {
		t.Fatalf("swept without the allocation lock: %v", err)
	}
}

func TestDeleteRemovesConfigRunAndDataDirectories(t *testing.T) {
	s := newStore(t)
	id := NewID()
	if err := s.Create(id, files(id)); err != nil {
		t.Fatal(err)
	}
	p := s.Paths(id)
	os.MkdirAll(p.RunDir, 0o700)
	os.MkdirAll(p.DataDir, 0o700)
	os.WriteFile(p.ConsoleLog, []byte("boot"), 0o600)
	if err := s.Delete(id); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{p.ConfigDir, p.RunDir, p.DataDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s still exists (%v)", d, err)
		}
	}
	if err := s.Delete(id); !errdefs.IsNotFound(err) {
		t.Fatalf("second delete: %v, want not found", err)
	}
}

func TestWriteFileRefusesUnknownNamesAndUnknownVMs(t *testing.T) {
	s := newStore(t)
	id := NewID()
	if err := s.WriteFile(id, FileMeta, []byte("{}")); !errdefs.IsNotFound(err) {
		t.Fatalf("write to unknown vm: %v, want not found", err)
	}
	s.Create(id, files(id))
	if err := s.WriteFile(id, "../../etc/passwd", []byte("x")); !errdefs.IsInvalid(err) {
		t.Fatalf("write of a foreign name: %v, want invalid", err)
	}
	if _, err := s.ReadFile(id, "/etc/shadow"); !errdefs.IsInvalid(err) {
		t.Fatalf("read of a foreign name: %v, want invalid", err)
	}
}

func TestGenerationAdvances(t *testing.T) {
	s := newStore(t)
	g0, _ := s.Generation()
	g1, err := s.BumpGeneration()
	if err != nil || g1 != g0+1 {
		t.Fatalf("bump: %d, %v (from %d)", g1, err, g0)
	}
	if g, _ := s.Generation(); g != g1 {
		t.Fatalf("generation %d, want %d", g, g1)
	}
}

// TestLockExcludesOtherProcesses takes the lock in a child process (flock
// from util-linux) and shows this process cannot take it until the child
// exits.
func TestLockExcludesOtherProcesses(t *testing.T) {
	flockBin, err := exec.LookPath("flock")
	if err != nil {
		t.Fatalf("flock(1) from util-linux is required: %v", err)
	}
	s := newStore(t)
	id := NewID()
	lock := s.Paths(id).Lock
	child := exec.Command(flockBin, lock, "sleep", "1")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the child holds it.
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		unlock, err := s.Lock(ctx, id)
		cancel()
		if err != nil {
			if !errdefs.IsConflict(err) {
				t.Fatalf("lock error %v, want conflict (busy)", err)
			}
			break
		}
		unlock()
		if i > 200 {
			t.Fatal("child never took the lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	child.Wait()
	unlock, err := s.Lock(context.Background(), id)
	if err != nil {
		t.Fatalf("lock after the child exited: %v", err)
	}
	unlock()
	if err := s.RemoveLock(id); err != nil {
		t.Fatal(err)
	}
}
