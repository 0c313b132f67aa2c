// Package lastrun says why a VM's run ended, from what its service
// manager saw of the VMM (supervisor.Exit) and what the guest wrote on its
// console (consoletail.Report): the VM document's lastRun, and the reason
// of the event the post-stop stage records.
package lastrun

import (
	"fmt"
	"strings"

	"github.com/mergenhq/mergen/internal/consoletail"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/wire"
)

// ConsoleTailLines is how many console lines a lastRun shows.
const ConsoleTailLines = 20

// Failure reports whether a run that ended so is a failure: its service
// manager says so, or the guest's account does (a kernel panic, an OOM
// kill, mergen-init's own error) even where the VMM exited cleanly.
func Failure(r *wire.LastRun) bool {
	switch r.Reason {
	case wire.ReasonKernelPanic, wire.ReasonOOM, wire.ReasonInitError:
		return true
	}
	return r.Result != "" && r.Result != "success"
}

// Explain names the reason of a run's end, the guest's own account first:
// the kernel's panic or OOM kills, then mergen-init's error and status,
// then what the service manager saw of the VMM; and whether the restart
// policy gave up after it.
func Explain(exit supervisor.Exit, con consoletail.Report) *wire.LastRun {
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
