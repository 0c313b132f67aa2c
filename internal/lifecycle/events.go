package lifecycle

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/mergenhq/mergen/internal/consoletail"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/lastrun"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/wire"
)

// record appends one of the VM's transitions to the host's event stream.
// The stage's work is done whether or not it could be recorded.
func (r *Runner) record(ctx context.Context, m store.Meta, t events.Type, reason, message string) {
	j := events.NewJournal(r.Config.Layout().Events())
	ev := events.Event{Type: t, VM: m.ID, Name: m.Tags[wire.NameTag], Source: events.SourceLifecycle, Reason: reason, Message: message}
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

// recordEnd records, at post-stop, how the run ended: failed or stopped,
// with the reason and message the VM document's lastRun gives, from what
// the service manager says of the VMM and the console's account.
func (r *Runner) recordEnd(ctx context.Context, m store.Meta) {
	res := r.Result
	exit := supervisor.Exit{Result: res.Result, Code: res.ExitCode, At: time.Now().UTC()}
	switch res.ExitCode {
	case "exited":
		exit.Status, _ = strconv.Atoi(res.ExitStatus)
	case "killed", "dumped":
		exit.Signal = res.ExitStatus
	}
	p := r.Store.Paths(m.ID)
	var lr *wire.LastRun
	// The console's copier may still be writing the guest's last lines
	// when the VMM has been reaped: when they do not say why yet, look
	// again for a moment.
	for try := 0; ; try++ {
		con, err := consoletail.Read(p.ConsoleLog, p.ConsoleLogOld, lastrun.ConsoleTailLines)
		if err != nil {
			r.Log.Debug("console log unreadable", "err", err)
		}
		lr = lastrun.Explain(exit, con)
		if lr.Reason != wire.ReasonVMMExit || try == 10 {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
	}
	t := events.Stopped
	if lastrun.Failure(lr) {
		t = events.Failed
	}
	r.record(ctx, m, t, lr.Reason, lr.Message)
}
