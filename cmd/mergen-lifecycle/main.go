// Command mergen-lifecycle runs one stage of a VM's life. The service
// manager calls it from the mergen@<id> unit (pre-start, start, post-start,
// stop, post-stop; on-failure from mergen-failure@<id>); operators call the
// toolkit commands (status, restart, pre-delete, delete, post-delete) by hand.
//
//	mergen-lifecycle <stage> <vm-id>
//
// Host configuration comes from the MGR_* environment (the unit's
// Environment= lines, or the detached supervisor); what create decided
// about the VM comes from its record.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/lifecycle"
	"github.com/mergenhq/mergen/internal/logging"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: mergen-lifecycle <stage> <vm-id>\nstages: %s\ntoolkit: %s (stop and start under the VM's lock, with its hooks)\n",
		strings.Join(lifecycle.Stages, ", "), restart)
}

// restart is a toolkit command, not a stage: it goes through the manager
// like the daemon's stop and start.
const restart = "restart"

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help") {
		usage()
		return
	}
	if len(os.Args) != 3 {
		usage()
		os.Exit(2)
	}
	stage, id := os.Args[1], os.Args[2]
	if err := run(stage, id); err != nil {
		fmt.Fprintln(os.Stderr, "mergen-lifecycle:", err)
		os.Exit(1)
	}
}

func run(stage, id string) error {
	cfg, err := config.Load()
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	log, err := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat, term.IsTerminal(int(os.Stderr.Fd())))
	if err != nil {
		return err
	}
	log = log.With("stage", stage, "vm", id)
	if stage == lifecycle.ConsoleLogStage {
		// Hidden: the start stage's console copier, reading the VMM's
		// output on stdin. Stop signals aimed at the VM must not cut the
		// log short: it ends when the VMM has exited and the pipe is
		// drained.
		signal.Ignore(os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		return lifecycle.CopyConsole(cfg, id, os.Stdin, os.Stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch stage {
	case "supervise":
		// Hidden: the body of the detached supervisor's per-VM process.
		return supervisor.RunDetached(ctx, supervisor.OptionsFrom(cfg), id)
	}
	st, err := store.Open(cfg.Layout())
	if err != nil {
		return err
	}
	if stage == restart {
		if err := store.ValidateID(id); err != nil {
			return err
		}
		sup, err := supervisor.New(cfg.Supervisor, supervisor.OptionsFrom(cfg))
		mgr := manager.New(manager.Options{Config: cfg, Store: st, Log: log, Supervisor: sup, SupervisorErr: err})
		return mgr.Restart(ctx, id)
	}
	r := &lifecycle.Runner{Config: cfg, Store: st, Log: log, Out: os.Stdout, Result: config.RunResultFrom(config.Env())}
	return r.Run(ctx, stage, id)
}
