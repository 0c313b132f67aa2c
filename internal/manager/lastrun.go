package manager

import (
	"context"

	"github.com/mergenhq/mergen/internal/consoletail"
	"github.com/mergenhq/mergen/internal/lastrun"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/wire"
)

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
	con, err := consoletail.Read(p.ConsoleLog, p.ConsoleLogOld, lastrun.ConsoleTailLines)
	if err != nil {
		m.log.Debug("console log unreadable", "vm", id, "err", err)
	}
	if exit == (supervisor.Exit{}) && len(con.Lines) == 0 {
		return nil
	}
	return lastrun.Explain(exit, con)
}
