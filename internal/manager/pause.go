package manager

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/wire"
)

// statusTimeout bounds the question a VM document asks the VMM. The
// document (every GET, and every VM of a list) asks only when the VMM's
// socket is present, and a live VMM answers on it in milliseconds; a VMM
// that hangs must not hold a listing up, so after this long the document
// says nothing about the VMM's state rather than wait.
const statusTimeout = time.Second

// opTimeout bounds a pause or resume request to the VMM: both take effect
// at once (QEMU's stop/cont, Firecracker's PATCH /vm).
const opTimeout = 10 * time.Second

// vmmStatus asks the VM's VMM, through its socket, how the guest is. ok is
// false when the socket is absent or the VMM does not answer in time.
func vmmStatus(ctx context.Context, meta store.Meta, socket string) (vmm.State, bool) {
	if fi, err := os.Stat(socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return vmm.State{}, false
	}
	driver, err := vmm.New(meta.VMM, meta.Driver)
	if err != nil {
		return vmm.State{}, false
	}
	sctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	st, err := driver.Status(sctx, socket)
	if err != nil {
		return vmm.State{}, false
	}
	return st, true
}

// vmmStateWord is the document's vmmState.state: "running", "paused", or
// the VMM's own word for anything else (QEMU's "prelaunch", "shutdown",
// Firecracker's "Not started").
func vmmStateWord(st vmm.State) string {
	switch {
	case st.Paused:
		return wire.StatePaused
	case st.Running:
		return wire.StateRunning
	}
	return st.State
}

// stateWord is the document's top-level state, one word: "paused" when the
// VMM says so; else the service manager's view ("running" for an active
// unit, "stopped" for an inactive one, its own word otherwise: activating,
// deactivating, failed); without a service manager, the VMM's (no socket:
// "stopped"), else "unknown".
func stateWord(v wire.VM) string {
	if v.VMMState.State == wire.StatePaused {
		return wire.StatePaused
	}
	if s := v.Service; s.Available {
		switch {
		case s.ActiveState == "active" || (s.ActiveState == "" && s.Active):
			return wire.StateRunning
		case s.ActiveState == "inactive" || s.ActiveState == "":
			return wire.StateStopped
		}
		return s.ActiveState
	}
	switch {
	case v.VMMState.State == wire.StateRunning:
		return wire.StateRunning
	case !v.VMMState.SocketPresent:
		return wire.StateStopped
	}
	return "unknown"
}

// Pause stops the guest's vCPUs, keeping its memory and devices; pausing a
// paused VM succeeds. A VM that is not running cannot be paused: conflict,
// naming its state.
func (m *Manager) Pause(ctx context.Context, id string) (err error) {
	defer func(start time.Time) { m.metrics.observe(opPause, start, err) }(time.Now())
	return m.setRunState(ctx, "pause", id)
}

// Resume continues a paused VM; resuming a running VM succeeds. A VM that
// is not running or paused cannot be resumed: conflict, naming its state.
func (m *Manager) Resume(ctx context.Context, id string) (err error) {
	defer func(start time.Time) { m.metrics.observe(opResume, start, err) }(time.Now())
	return m.setRunState(ctx, "resume", id)
}

// clearPaused removes the VM's pause marker (layout's Paused); a marker
// that cannot be removed is logged: lists would show the VM paused until
// its next stop.
func (m *Manager) clearPaused(id string) {
	if err := os.Remove(m.store.Paths(id).Paused); err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.log.Warn("pause marker not removed", "vm", id, "err", err)
	}
}

// setRunState pauses or resumes the VM under its lifecycle lock, so that no
// start, stop or delete runs meanwhile.
func (m *Manager) setRunState(ctx context.Context, op, id string) error {
	meta, unlock, err := m.lockVM(ctx, op, id)
	if err != nil {
		return err
	}
	defer unlock()
	v := m.document(ctx, meta)
	if v.State != wire.StateRunning && v.State != wire.StatePaused {
		return errdefs.Conflict("%s vm %s: the VM is %s; only a running VM can be paused or resumed", op, id, v.State)
	}
	if v.VMMState.State != wire.StateRunning && v.VMMState.State != wire.StatePaused {
		what := "does not answer on its socket"
		if v.VMMState.State != "" {
			what = fmt.Sprintf("reports %q", v.VMMState.State)
		}
		return errdefs.Conflict("%s vm %s: the VM is %s but its VMM %s (still starting or stopping?); try again", op, id, v.State, what)
	}
	if want := map[string]string{"pause": wire.StatePaused, "resume": wire.StateRunning}[op]; v.VMMState.State == want {
		return nil // already so: nothing happens, nothing is recorded
	}
	driver, err := vmm.New(meta.VMM, meta.Driver)
	if err != nil {
		return errdefs.Unavailable("%s vm %s: vmm %s: %w", op, id, meta.VMM, err)
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	p := m.store.Paths(id)
	if op == "pause" {
		// The marker first: a list never shows a paused guest as running.
		if err := os.WriteFile(p.Paused, nil, 0o644); err != nil {
			return fmt.Errorf("%s vm %s: pause marker: %w", op, id, err)
		}
		if err := driver.Pause(octx, p.Socket); err != nil {
			m.clearPaused(id)
			return fmt.Errorf("%s vm %s: %w", op, id, err)
		}
	} else {
		if err := driver.Resume(octx, p.Socket); err != nil {
			return fmt.Errorf("%s vm %s: %w", op, id, err)
		}
		m.clearPaused(id)
	}
	m.emit(ctx, meta, map[string]events.Type{"pause": events.Paused, "resume": events.Resumed}[op], "", "", nil)
	m.log.Info("vm "+op+"d", "vm", id)
	return nil
}
