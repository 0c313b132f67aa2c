package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/execclient"
	"github.com/mergenhq/mergen/internal/health"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/vmnet"
	"github.com/mergenhq/mergen/internal/wire"
)

// Health checks (docs/health.md) run in the daemon: one goroutine per
// running VM that has a check, started when the VM is started (and for the
// running VMs when the daemon starts), ended when it is stopped or
// deleted. Each checks its VM one check at a time, so a guest that never
// answers costs one goroutine and one pending connection at most. What the
// checks find is the VM's health file (layout's Health): a daemon that
// restarts carries on from it, and the forwarder reads it.

// healthWatchers are the running checkers, by VM id.
type healthWatchers struct {
	mu   sync.Mutex
	ctx  context.Context // ends with StopHealth
	stop context.CancelFunc
	w    map[string]*healthWatcher
}

type healthWatcher struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// healthChanged is where every transition of a VM's health is reported:
// from and to are statuses (health.Starting, Ready, Unhealthy; from is ""
// for the first), detail says why in a few words. It persists nothing
// (the checker has written the health file already); it logs, and it is
// the one place the VM's health events leave the daemon from.
func (m *Manager) healthChanged(meta store.Meta, from, to string, detail string) {
	log := m.log.With("vm", meta.ID, "from", from, "to", to)
	if detail != "" {
		log = log.With("detail", detail)
	}
	var t events.Type
	switch to {
	case health.Ready:
		t = events.Ready
		log.Info("vm health changed")
	case health.Unhealthy:
		t = events.Unhealthy
		log.Warn("vm health changed")
	default:
		log.Info("vm health changed")
		return
	}
	reason := ""
	if from == health.Starting && to == health.Unhealthy {
		reason = wire.ReasonReadinessTimeout
	}
	m.announce(meta, t, reason, detail)
}

// watchHealth starts checking a running VM, replacing a checker it had.
// fresh begins a new health state (a start at startedAt); otherwise the
// state of the health file, when there is one, carries on.
func (m *Manager) watchHealth(meta store.Meta, fresh bool, startedAt time.Time) {
	if meta.HealthCheck == nil {
		return
	}
	m.unwatchHealth(meta.ID, false)
	path := m.store.Paths(meta.ID).Health
	st, err := health.Read(path)
	if fresh || err != nil {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("health file unusable, starting over", "vm", meta.ID, "err", err)
		}
		st = health.NewState(startedAt)
		if err := health.Write(path, st); err != nil {
			m.log.Warn("health file not written", "vm", meta.ID, "err", err)
		}
		m.healthChanged(meta, "", health.Starting, "started")
	}
	hw := &m.health
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(hw.ctx)
	w := &healthWatcher{cancel: cancel, done: make(chan struct{})}
	hw.w[meta.ID] = w
	go func() {
		defer close(w.done)
		m.checkHealth(ctx, meta, st)
	}()
}

// unwatchHealth ends VM id's checker and waits for it; forget also
// removes its health file (the VM stops or goes).
func (m *Manager) unwatchHealth(id string, forget bool) {
	hw := &m.health
	hw.mu.Lock()
	w := hw.w[id]
	delete(hw.w, id)
	hw.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
	}
	if forget {
		if err := health.Remove(m.store.Paths(id).Health); err != nil {
			m.log.Warn("health file not removed", "vm", id, "err", err)
		}
	}
}

// ResumeHealth starts checking every running VM that has a check, carrying
// on from its health file: the daemon calls it when it starts.
func (m *Manager) ResumeHealth(ctx context.Context) {
	metas, err := m.store.List()
	if err != nil {
		m.log.Warn("some VMs could not be read", "err", err)
	}
	var ids []string
	for _, meta := range metas {
		if meta.HealthCheck != nil {
			ids = append(ids, meta.ID)
		}
	}
	if len(ids) == 0 || m.sup == nil {
		return
	}
	states, err := m.sup.States(ctx, ids)
	if err != nil {
		m.log.Debug("service states unavailable", "err", err)
	}
	for _, meta := range metas {
		if st, ok := states[meta.ID]; ok && meta.HealthCheck != nil && (st.Active || st.ActiveState == "activating") {
			m.watchHealth(meta, false, time.Now())
		}
	}
}

// StopHealth ends every checker and waits for them; their health files
// stay for the next daemon.
func (m *Manager) StopHealth() {
	hw := &m.health
	hw.mu.Lock()
	hw.stop()
	ws := hw.w
	hw.w = map[string]*healthWatcher{}
	hw.mu.Unlock()
	for _, w := range ws {
		<-w.done
	}
}

// checkHealth checks meta's VM until ctx ends or the VM ends, writing every
// result to its health file, and restarts it when it is unhealthy and its
// restart policy says so.
func (m *Manager) checkHealth(ctx context.Context, meta store.Meta, st health.State) {
	c := *meta.HealthCheck
	path := m.store.Paths(meta.ID).Health
	log := m.log.With("vm", meta.ID)
	policy, _ := supervisor.ParseRestart(meta.Restart)
	target := m.healthTarget(meta)
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = c.Next(st)
		svc := m.serviceState(ctx, meta.ID)
		switch {
		case ctx.Err() != nil:
			return
		case !svc.Available:
			continue // the service manager does not answer: ask again later
		case svc.ActiveState == "activating" || svc.ActiveState == "deactivating" || svc.ActiveState == "reloading":
			continue // the supervisor restarts it, or it is going
		case !svc.Active:
			// The VM ended by itself and stays down: nothing to check.
			log.Info("vm ended, its health checks stop", "state", svc.ActiveState)
			if err := health.Remove(path); err != nil {
				log.Warn("health file not removed", "err", err)
			}
			m.health.mu.Lock()
			if w := m.health.w[meta.ID]; w != nil && ctx.Err() == nil {
				delete(m.health.w, meta.ID)
			}
			m.health.mu.Unlock()
			return
		}
		if _, err := os.Lstat(m.store.Paths(meta.ID).Paused); err == nil {
			continue // a paused guest answers nothing; it is not unhealthy
		}
		if st.MainPID != 0 && svc.MainPID != 0 && svc.MainPID != st.MainPID {
			// The supervisor restarted the VM: a new run, starting.
			from := st.Status
			n := health.NewState(time.Now())
			n.Restarts, n.RestartAttempts, n.LastRestart = st.Restarts, st.RestartAttempts, st.LastRestart
			st = n
			m.healthChanged(meta, from, st.Status, "the VM was restarted by its supervisor")
		}
		st.MainPID = svc.MainPID
		r := health.Probe(ctx, c, target, time.Now)
		if ctx.Err() != nil {
			return
		}
		from, to := st.Record(c, r)
		if to == health.Unhealthy && from != health.Unhealthy {
			st.Message = m.unhealthyPlan(policy, &st)
			if from == health.Starting {
				st.Message = fmt.Sprintf("never ready: no check passed in %s since the start; %s", r.At.Sub(st.StartedAt).Round(time.Second), st.Message)
			}
		}
		if err := health.Write(path, st); err != nil {
			log.Warn("health file not written", "err", err)
		}
		if from != to {
			detail := r.Output
			if to == health.Ready {
				detail = ""
				if from == health.Starting && st.ReadyAt.Equal(r.At) {
					d := st.ReadyAt.Sub(st.StartedAt)
					m.metrics.bootToReady.Observe(d.Seconds())
					detail = "ready " + d.Round(time.Millisecond).String() + " after the start"
				}
			}
			m.healthChanged(meta, from, to, detail)
		}
		if st.Status != health.Unhealthy || !policy.RestartsUnhealthy(st.RestartAttempts) {
			continue
		}
		// Unhealthy, and the policy restarts it: after the policy's delay,
		// stop and start it, as the API's restart does.
		delay := supervisor.RestartDelay(st.RestartAttempts)
		log.Warn("vm unhealthy, restarting it", "policy", policy, "in", delay, "restarts", st.Restarts)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		at := time.Now()
		if err := m.restart(ctx, meta.ID, true); err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Error("restart of the unhealthy vm failed", "err", err)
			st.Message = "restart failed: " + err.Error()
			health.Write(path, st)
			wait = c.Next(st)
			continue
		}
		st = st.Restarted(at)
		if err := health.Write(path, st); err != nil {
			log.Warn("health file not written", "err", err)
		}
		m.healthChanged(meta, health.Unhealthy, health.Starting, fmt.Sprintf("restarted for being unhealthy (restart %d)", st.Restarts))
		wait = 0
	}
}

// unhealthyPlan says what becomes of a VM that just turned unhealthy under
// policy, resetting the count of attempts after a long enough healthy run.
func (m *Manager) unhealthyPlan(policy supervisor.RestartPolicy, st *health.State) string {
	if !st.LastRestart.IsZero() && time.Since(st.LastRestart) >= supervisor.RestartResetAfter {
		st.RestartAttempts = 0
	}
	switch {
	case policy.Mode == supervisor.RestartNo:
		return "restart policy no: the VM is left running"
	case !policy.RestartsUnhealthy(st.RestartAttempts):
		return fmt.Sprintf("restart policy %s: restart limit reached, the VM is left running", policy)
	}
	return fmt.Sprintf("restart policy %s: restarting", policy)
}

// healthTarget is where meta's checks go: the guest, from inside its
// network namespace, and its exec agent.
func (m *Manager) healthTarget(meta store.Meta) health.Target {
	return health.Target{
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return vmnet.DialInNetns(ctx, meta.Netns, addr)
		},
		GuestIP:  meta.GuestIP,
		HTTPPort: meta.HTTPPort,
		Exec: func(ctx context.Context, argv []string, out io.Writer) (int, error) {
			t, err := m.ExecTarget(ctx, meta.ID)
			if err != nil {
				return 0, err
			}
			s, err := execclient.Exec(ctx, t, execclient.Request{Argv: argv})
			if err != nil {
				return 0, err
			}
			defer s.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(out, s.Stderr()) }()
			io.Copy(out, s.Stdout())
			wg.Wait()
			exit, err := s.Wait()
			if err != nil {
				return 0, err
			}
			return exit.Code, nil
		},
	}
}

// healthDoc is the document's health of VM id in state (hasCheck: its
// record has a health check), with the restarts the daemon made of it for
// being unhealthy since it was started on request: nothing unless it runs
// and has a check.
func (m *Manager) healthDoc(id string, hasCheck bool, state string) (*wire.Health, int) {
	if !hasCheck || (state != wire.StateRunning && state != wire.StatePaused) {
		return nil, 0
	}
	st, err := health.Read(m.store.Paths(id).Health)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Debug("health file unreadable", "vm", id, "err", err)
		}
		return nil, 0
	}
	h := &wire.Health{Status: st.Status, Since: st.Since, Failures: st.Failures, Message: st.Message}
	if st.Last != nil {
		h.LastCheck = &wire.HealthCheckResult{At: st.Last.At, OK: st.Last.OK, DurationMs: st.Last.DurationMs, Output: st.Last.Output}
	}
	return h, st.Restarts
}

// waitHealthy waits until VM id's health check finds it ready, at most
// limit; unhealthy is an error with the last check's output.
func (m *Manager) waitHealthy(ctx context.Context, id string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	path := m.store.Paths(id).Health
	for {
		st, err := health.Read(path)
		if err == nil {
			switch st.Status {
			case health.Ready:
				return nil
			case health.Unhealthy:
				out := ""
				if st.Last != nil {
					out = ": " + st.Last.Output
				}
				return errdefs.Unavailable("vm %s is unhealthy%s", id, out)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: not ready within %s", id, limit)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
