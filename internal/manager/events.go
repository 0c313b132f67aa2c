package manager

import (
	"context"
	"errors"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/hooks"
	"github.com/mergenhq/mergen/internal/store"
)

// hookOf is the manager hook each event fires; events without one fire
// none.
var hookOf = map[events.Type]hooks.Event{
	events.Created:   hooks.OnCreate,
	events.Starting:  hooks.OnStart,
	events.Stopping:  hooks.OnStop,
	events.Deleting:  hooks.OnDelete,
	events.Ready:     hooks.OnReady,
	events.Unhealthy: hooks.OnUnhealthy,
	events.Failed:    hooks.OnFailed,
	events.Restarted: hooks.OnRestart,
}

// emit records an event of the VM in the host's stream. The operation it
// reports has happened, so a journal that cannot be written is logged and
// the operation goes on.
func (m *Manager) emit(ctx context.Context, meta store.Meta, t events.Type, reason, message string, attrs map[string]string) events.Event {
	ev, err := m.bus.Append(context.WithoutCancel(ctx), events.Event{
		Type: t, VM: meta.ID, Name: meta.Tags[NameTag], Source: events.SourceDaemon,
		Reason: reason, Message: message, Attrs: attrs,
	})
	if err != nil {
		m.log.Error("event not recorded", "vm", meta.ID, "event", string(t), "err", err)
	}
	return ev
}

// announce records an event nothing waits for and fires its hooks in the
// background: they are best-effort (onReady, onUnhealthy, onRestart).
func (m *Manager) announce(meta store.Meta, t events.Type, reason, message string) {
	ev := m.emit(context.Background(), meta, t, reason, message, nil)
	if ev.Seq == 0 {
		return // not recorded
	}
	go m.fire(m.life, ev, meta, nil)
}

// fire runs the hooks of an event: the global ones, then the VM's own
// (vmHooks, or its stored hooks.json when nil). An operation that emitted
// the event calls it and fails when a strict hook fails; events recorded
// by the lifecycle stages are fired by followHooks.
func (m *Manager) fire(ctx context.Context, ev events.Event, meta store.Meta, vmHooks *hooks.Set) error {
	he, ok := hookOf[ev.Type]
	if !ok {
		return nil
	}
	data := hooks.Data{
		Event: he, VMID: meta.ID, GuestIP: meta.GuestIP, Ports: meta.Ports,
		HTTPPort: meta.HTTPPort, Tags: meta.Tags, Metadata: meta.Metadata,
		Seq: ev.Seq, Reason: ev.Reason, Message: ev.Message,
	}
	return m.runHooks(ctx, data, meta, vmHooks)
}

// followHooks fires the hooks of the events the lifecycle stages record
// (a VM that became ready, failed or was restarted by its service manager)
// from the daemon's start until ctx ends. Events recorded while the daemon
// was down fire no hooks: hooks run in the daemon.
func (m *Manager) followHooks(ctx context.Context) {
	pos := m.bus.Last()
	for {
		evs, err := m.bus.Next(ctx, pos, 0)
		if errors.Is(err, events.ErrGone) {
			m.log.Warn("hooks fell behind the event journal; skipping to its end", "err", err)
			pos = m.bus.Last()
			continue
		}
		if err != nil {
			return // ctx ended
		}
		for _, ev := range evs {
			pos = ev.Seq
			if ev.Source != events.SourceLifecycle {
				continue // fired by the operation that emitted it
			}
			if _, ok := hookOf[ev.Type]; !ok {
				continue
			}
			meta, err := m.store.ReadMeta(ev.VM)
			if err != nil {
				continue // deleted since
			}
			hctx, cancel := context.WithTimeout(ctx, hooks.MaxTimeout)
			m.fire(hctx, ev, meta, nil)
			cancel()
		}
	}
}

// Events returns up to max events after position since, waiting for one
// until ctx ends or the daemon stops. A position the journal no longer
// keeps is a 410.
func (m *Manager) Events(ctx context.Context, since uint64, max int) ([]events.Event, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(m.life, cancel)
	defer stop()
	evs, err := m.bus.Next(ctx, since, max)
	if errors.Is(err, events.ErrGone) {
		return nil, errdefs.Gone("%w", err)
	}
	return evs, err
}

// CheckEventPosition refuses (410) a position whose following events the
// journal no longer keeps all of.
func (m *Manager) CheckEventPosition(since uint64) error {
	if err := m.bus.Kept(since); err != nil {
		return errdefs.Gone("%w", err)
	}
	return nil
}

// LastEvent is the newest event's position: where a watcher that wants
// only what comes next starts.
func (m *Manager) LastEvent() uint64 { return m.bus.Last() }

// Run does the manager's background work until ctx ends: following the
// event journal, and firing the hooks of the lifecycle stages' events.
// Event watchers are let go when it ends.
func (m *Manager) Run(ctx context.Context) {
	stop := context.AfterFunc(ctx, m.lifeCancel)
	defer stop()
	done := make(chan struct{})
	go func() { m.bus.Run(m.life); close(done) }()
	m.followHooks(m.life)
	<-done
}
