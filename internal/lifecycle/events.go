package lifecycle

import (
	"context"
	"fmt"

	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/store"
)

// nameTag is the tag that holds a VM's name (the manager's NameTag).
const nameTag = "name"

// record appends one of the VM's transitions to the host's event stream.
// The stage's work is done whether or not it could be recorded.
func (r *Runner) record(ctx context.Context, m store.Meta, t events.Type, reason, message string) {
	j := events.NewJournal(r.Config.Layout().Events())
	ev := events.Event{Type: t, VM: m.ID, Name: m.Tags[nameTag], Source: events.SourceLifecycle, Reason: reason, Message: message}
	if _, err := j.Append(context.WithoutCancel(ctx), ev); err != nil {
		r.Log.Warn("event not recorded", "event", string(t), "err", err)
	}
}

// recordRestart records, at pre-start, a start nobody asked for through
// the API: the VM's last event is the end of a run rather than the
// daemon's starting. Its service manager started it again — the restart
// policy, or a host boot for an enabled unit.
func (r *Runner) recordRestart(ctx context.Context, m store.Meta) {
	last, ok, err := events.NewJournal(r.Config.Layout().Events()).LastOf(m.ID)
	if err != nil {
		r.Log.Warn("event journal unreadable", "err", err)
		return
	}
	if ok && (last.Type == events.Stopped || last.Type == events.Failed) {
		r.record(ctx, m, events.Restarted, "service-manager", fmt.Sprintf("started again by its service manager after it %s (restart policy %s)", last.Type, restartPolicy(m)))
	}
}

func restartPolicy(m store.Meta) string {
	if m.Restart == "" {
		return "no"
	}
	return m.Restart
}

// recordEnd records, at post-stop, how the run ended: stopped when the
// service manager calls it a success, failed otherwise.
func (r *Runner) recordEnd(ctx context.Context, m store.Meta) {
	res := r.Result
	if res.Result == "" || res.Result == "success" {
		r.record(ctx, m, events.Stopped, "", "")
		return
	}
	msg := "the run ended in " + res.Result
	switch res.ExitCode {
	case "exited":
		msg += ": the VMM exited with status " + res.ExitStatus
	case "killed", "dumped":
		msg += ": the VMM was killed by signal " + res.ExitStatus
	}
	r.record(ctx, m, events.Failed, res.Result, msg)
}
