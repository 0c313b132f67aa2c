package manager

import (
	"context"
	"fmt"
	"strings"

	"github.com/mergenhq/mergen/internal/consoletail"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/wire"
)

// consoleTailLines is how many console lines a VM document's lastRun shows.
const consoleTailLines = 20

// lastRun says why the last run of a VM that is not running ended, from
// the supervisor's record of the VMM's end and the console log's tail. It
// is nil when the VM never ran (nothing recorded, no console output).
func (m *Manager) lastRun(ctx context.Context, id string, svc supervisor.State) *wire.LastRun {
	switch svc.ActiveState {
	case "inactive", "failed":
	default:
		return nil
	}
	var exit supervisor.Exit
	if m.sup != nil {
		e, err := m.sup.LastExit(ctx, id)
		if err != nil {
			m.log.Debug("last exit unavailable", "vm", id, "err", err)
		}
		exit = e
	}
	p := m.store.Paths(id)
	con, err := consoletail.Read(p.ConsoleLog, p.ConsoleLogOld, consoleTailLines)
	if err != nil {
		m.log.Debug("console log unreadable", "vm", id, "err", err)
	}
	if exit == (supervisor.Exit{}) && len(con.Lines) == 0 {
		return nil
	}
	return explain(exit, con)
}

// explain names the reason of a run's end, the guest's own account first:
// the kernel's panic or OOM kills, then mergen-init's error and status,
// then what the service manager saw of the VMM; and whether the restart
// policy gave up after it.
func explain(exit supervisor.Exit, con consoletail.Report) *wire.LastRun {
	r := &wire.LastRun{
		Result: exit.Result, Signal: exit.Signal, EndedAt: exit.At,
		InitMessage: con.InitError, ConsoleTail: con.Lines,
	}
	if exit.Code == "exited" {
		r.ExitCode = &exit.Status
	}
	if con.InitExit >= 0 {
		r.InitExitCode = &con.InitExit
	}
	switch {
	case con.KernelPanic != "":
		r.Reason, r.Message = wire.ReasonKernelPanic, "the guest kernel panicked: "+con.KernelPanic
	case len(con.OOMKills) > 0:
		r.Reason, r.Message = wire.ReasonOOM, "the guest ran out of memory: "+con.OOMKills[len(con.OOMKills)-1]
	case con.InitError != "":
		r.Reason = wire.ReasonInitError
		r.Message = fmt.Sprintf("mergen-init failed (exit status %d): %s", con.InitExit, con.InitError)
	case con.StopRequested:
		r.Reason, r.Message = wire.ReasonStopped, "stopped on request"
		if con.InitExit >= 0 {
			r.Message += fmt.Sprintf("; the guest ended with status %d", con.InitExit)
		}
	case con.InitExit >= 0:
		r.Reason = wire.ReasonPayloadExit
		r.Message = fmt.Sprintf("the payload exited with status %d", con.InitExit)
	case exit.Result == "timeout":
		r.Reason, r.Message = wire.ReasonStopTimeout, "the VMM did not stop in time and was killed"
	case (exit.Code == "killed" || exit.Code == "dumped") && exit.Result != "success":
		r.Reason, r.Message = wire.ReasonVMMSignal, "the VMM was killed by signal "+exit.Signal
	case exit.Code == "exited" && exit.Status != 0:
		r.Reason, r.Message = wire.ReasonVMMExit, fmt.Sprintf("the VMM exited with status %d", exit.Status)
	case exit.Result == "success":
		r.Reason, r.Message = wire.ReasonStopped, "stopped"
	default:
		r.Reason = wire.ReasonUnknown
	}
	if exit.GaveUp {
		r.GaveUp = true
		r.Message = strings.TrimPrefix(r.Message+"; ", "; ") +
			fmt.Sprintf("the restart limit was reached: the restart policy gave up after %d restarts", exit.Restarts)
	}
	return r
}
