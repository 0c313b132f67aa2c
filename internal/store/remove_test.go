package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
)

// startRemove calls Remove in the background and waits until it is queued.
func (h *groupHost) startRemove(ctx context.Context, id string, drop Drop) <-chan error {
	h.t.Helper()
	out := make(chan error, 1)
	h.queued("removal", func() { out <- h.c.Remove(ctx, id, drop) })
	return out
}

// stored creates VM id with its run and data directories, as a started VM
// has them.
func (h *groupHost) stored(id string) {
	h.t.Helper()
	if err := h.s.Create(id, files(id)); err != nil {
		h.t.Fatal(err)
	}
	p := h.s.Paths(id)
	for _, d := range []string{p.RunDir, p.DataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			h.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "f"), []byte("x"), 0o644); err != nil {
			h.t.Fatal(err)
		}
	}
}

// gone fails unless nothing of VM id is left: no config, run or data
// directory, no trash.
func (h *groupHost) gone(id string) {
	h.t.Helper()
	p := h.s.Paths(id)
	for _, d := range []string{p.ConfigDir, p.RunDir, p.DataDir} {
		if _, err := os.Lstat(d); !errors.Is(err, os.ErrNotExist) {
			h.t.Errorf("vm %s: %s still there (%v)", id, d, err)
		}
	}
}

// Removals and creates that arrive together are committed as one group:
// one generation bump, the drops and plans run in the order of the calls,
// and each removed VM is gone whole (config, run and data directories)
// when its Remove returns.
func TestRemovalsAndCreatesThatArriveTogetherAreOneGroup(t *testing.T) {
	h := newGroupHost(t)
	old1, old2 := NewID(), NewID()
	h.stored(old1)
	h.stored(old2)
	gen0, _ := h.s.Generation()
	var order []string
	drop := func(name string) Drop {
		return func(uint64) error { order = append(order, name); return nil }
	}
	release := h.hold()
	r1 := h.startRemove(context.Background(), old1, drop("remove 1"))
	fresh := NewID()
	created := h.start(context.Background(), func(uint64) (string, map[string][]byte, error) {
		order = append(order, "create")
		return fresh, files(fresh), nil
	})
	r2 := h.startRemove(context.Background(), old2, drop("remove 2"))
	release()
	for i, out := range []<-chan error{r1, r2} {
		if err := <-out; err != nil {
			t.Fatalf("removal %d: %v", i+1, err)
		}
	}
	if r := <-created; r.err != nil || r.id != fresh {
		t.Fatalf("create = %q, %v", r.id, r.err)
	}
	if fmt.Sprint(order) != "[remove 1 create remove 2]" {
		t.Errorf("ran %v; want the order of the calls", order)
	}
	h.gone(old1)
	h.gone(old2)
	if ids, _ := h.s.IDs(); len(ids) != 1 || ids[0] != fresh {
		t.Errorf("stored %v; want only %s", ids, fresh)
	}
	if ends := h.ends(); len(ends) != 1 || ends[0] != (groupEnd{gen0 + 1, true}) {
		t.Errorf("groups committed: %+v; want one, complete, at generation %d", ends, gen0+1)
	}
	if left := hidden(t, h.s); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// A removal fails alone: an unknown VM is not found, a drop that refuses
// or panics keeps its VM (with the drop's error), and the others of the
// group are removed.
func TestARemovalsFailureIsItsOwn(t *testing.T) {
	h := newGroupHost(t)
	kept1, kept2, removed := NewID(), NewID(), NewID()
	for _, id := range []string{kept1, kept2, removed} {
		h.stored(id)
	}
	release := h.hold()
	unknown := h.startRemove(context.Background(), NewID(), nil)
	refused := h.startRemove(context.Background(), kept1, func(uint64) error { return errdefs.Conflict("vm %s is busy", kept1) })
	panicked := h.startRemove(context.Background(), kept2, func(uint64) error { panic("a bug") })
	ok := h.startRemove(context.Background(), removed, nil)
	release()
	if err := <-unknown; !errdefs.IsNotFound(err) {
		t.Errorf("removal of an unknown VM: %v; want not found", err)
	}
	if err := <-refused; !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "busy") {
		t.Errorf("refused drop: %v; want its own conflict", err)
	}
	if err := <-panicked; err == nil || !strings.Contains(err.Error(), "a bug") || !strings.Contains(err.Error(), kept2) {
		t.Errorf("panicking drop: %v; want an error naming the VM and the panic", err)
	}
	if err := <-ok; err != nil {
		t.Errorf("removal beside the failed ones: %v", err)
	}
	h.gone(removed)
	ids, _ := h.s.IDs()
	if len(ids) != 2 || !h.s.Exists(kept1) || !h.s.Exists(kept2) {
		t.Errorf("stored %v; want the two VMs whose drop failed", ids)
	}
	if ends := h.ends(); len(ends) != 1 || ends[0].complete {
		t.Errorf("groups: %+v; want one, not complete (a removal planned was not made)", ends)
	}
}

// When the config root cannot be synced after a removal's rename, the
// removal fails, naming the cause and where the VM's directory was left:
// the VM is out of the store, its directories are not deleted (after a
// power failure the rename may be undone), and the start-up sweep removes
// what is left.
func TestARemovalWhoseRenameIsNotDurableFailsAndLeavesItToTheSweep(t *testing.T) {
	h := newGroupHost(t)
	id := NewID()
	h.stored(id)
	h.c.syncRoot = func() error { return errors.New("input/output error") }
	err := h.c.Remove(context.Background(), id, nil)
	if err == nil || !strings.Contains(err.Error(), "sync the config root: input/output error") || !strings.Contains(err.Error(), id) {
		t.Fatalf("Remove = %v; want an error naming the VM and the failed sync", err)
	}
	if h.s.Exists(id) {
		t.Error("the VM is still in the store")
	}
	if left := hidden(t, h.s); len(left) != 1 || !strings.HasPrefix(left[0], ".trash-") {
		t.Fatalf("hidden entries %v; want the VM's directory in the trash", left)
	}
	if _, err := os.Stat(h.s.Paths(id).DataDir); err != nil {
		t.Errorf("data directory deleted before the removal was durable: %v", err)
	}
	if err := h.s.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.gone(id)
	if left := hidden(t, h.s); len(left) != 0 {
		t.Errorf("after the sweep: %v", left)
	}
}

// A caller that gives up while its removal waits for the allocation lock
// gets a conflict naming the VM; its drop never runs and the VM stays.
func TestARemovalGivenUpBeforeItsDropKeepsTheVM(t *testing.T) {
	h := newGroupHost(t)
	id := NewID()
	h.stored(id)
	release := h.hold()
	ctx, cancel := context.WithCancel(context.Background())
	ran := false
	out := h.startRemove(ctx, id, func(uint64) error { ran = true; return nil })
	cancel()
	err := <-out
	if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "allocation is busy") || !strings.Contains(err.Error(), id) {
		t.Fatalf("given-up removal = %v; want a conflict naming the VM and the busy allocation", err)
	}
	release()
	if ran {
		t.Error("the drop of a removal given up before it ran was run")
	}
	if !h.s.Exists(id) {
		t.Error("the VM was removed")
	}
}
