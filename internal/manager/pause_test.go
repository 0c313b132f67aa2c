package manager_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// A VM that is not running cannot be paused or resumed: conflict, naming
// the VM and its state; its document says stopped. Unknown ids are not
// found, malformed ones invalid.
func TestPauseAndResumeNeedARunningVM(t *testing.T) {
	h := newHost(t, nil)
	ctx := context.Background()
	vm, err := h.mgr.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != wire.StateStopped || vm.VMMState.State != "" {
		t.Errorf("a created VM: state %q, vmmState.state %q; want stopped and none", vm.State, vm.VMMState.State)
	}
	ops := map[string]func(context.Context, string) error{"pause": h.mgr.Pause, "resume": h.mgr.Resume}
	for name, op := range ops {
		err := op(ctx, vm.ID)
		if !errdefs.IsConflict(err) || !contains(err.Error(), name+" vm "+vm.ID, "the VM is stopped") {
			t.Errorf("%s of a stopped VM = %v; want conflict naming the VM and its state", name, err)
		}
		if err := op(ctx, store.NewID()); !errdefs.IsNotFound(err) {
			t.Errorf("%s of an unknown VM = %v; want not found", name, err)
		}
		if err := op(ctx, "../../etc"); !errdefs.IsInvalid(err) {
			t.Errorf("%s of a malformed id = %v; want invalid", name, err)
		}
	}
}

// Pause and resume reach the VMM on the VM's socket and the document
// follows: a real QEMU (no guest, nothing to boot) listens on the VM's
// QMP socket.
func TestPauseAndResumeAreIdempotentAndShowInTheDocument(t *testing.T) {
	bin := testenv.Tool(t, "qemu-system-x86_64")
	h := newHost(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := h.mgr.Create(ctx, wire.CreateRequest{VMM: "qemu"})
	if err != nil {
		t.Fatal(err)
	}
	socket := vm.Paths.Socket
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-M", "q35", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none",
		"-qmp", "unix:"+socket+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	get := func() wire.VM {
		t.Helper()
		v, err := h.mgr.Get(ctx, vm.ID)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for get().VMMState.State != wire.StateRunning {
		select {
		case <-ctx.Done():
			t.Fatalf("QEMU did not answer on %s: %+v", socket, get().VMMState)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if v := get(); v.State != wire.StateRunning {
		t.Fatalf("state = %q, want running", v.State)
	}
	for range 2 {
		if err := h.mgr.Pause(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		if v := get(); v.State != wire.StatePaused || v.VMMState.State != wire.StatePaused {
			t.Errorf("after pause: state %q, vmmState.state %q; want paused", v.State, v.VMMState.State)
		}
		// Lists read the marker instead of asking the VMM.
		if _, err := os.Stat(h.store.Paths(vm.ID).Paused); err != nil {
			t.Errorf("after pause: marker: %v", err)
		}
	}
	for range 2 {
		if err := h.mgr.Resume(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		if v := get(); v.State != wire.StateRunning || v.VMMState.State != wire.StateRunning {
			t.Errorf("after resume: state %q, vmmState.state %q; want running", v.State, v.VMMState.State)
		}
		if _, err := os.Stat(h.store.Paths(vm.ID).Paused); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after resume: marker still there (%v)", err)
		}
	}
}
