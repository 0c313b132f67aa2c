package lifecycle

import (
	"context"
	"fmt"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
)

// handEnv gives a guest booted with mergen.env_from=agent the VM's
// extraEnv, too large for its kernel command line (bootparam.EnvArg): the
// guest starts its payload only once it has it. A guest that cannot be
// told fails the start, as a restored one does.
func (r *Runner) handEnv(ctx context.Context, driver vmm.Driver, spec vmm.Spec, m store.Meta) error {
	err := untilTold(ctx, func(ctx context.Context) error {
		return call(ctx, driver, spec, agentproto.Request{Op: agentproto.OpEnv, Env: m.ExtraEnv})
	})
	if err != nil {
		return fmt.Errorf("the guest's agent did not take the VM's environment: %w", err)
	}
	r.Log.Info("environment handed to the guest", "vm", m.ID, "variables", len(m.ExtraEnv))
	return nil
}

// untilTold runs tell until it succeeds or ctx ends, returning the last
// error then: the guest's agent answers once mergen-init runs.
func untilTold(ctx context.Context, tell func(context.Context) error) error {
	for {
		last := tell(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// callAttempt bounds one connection's wait for the guest's answer, which
// normally comes in tens of milliseconds.
const callAttempt = 1500 * time.Millisecond

// call sends one request over one agent connection.
func call(ctx context.Context, driver vmm.Driver, spec vmm.Spec, req agentproto.Request) error {
	// Short attempts: a guest that has not noticed this connection (its
	// virtio-serial port's open event) notices the next one.
	cctx, cancel := context.WithTimeout(ctx, callAttempt)
	defer cancel()
	conn, err := driver.Agent(cctx, spec)
	if err != nil {
		return err
	}
	defer conn.Close()
	// An answer that is not OK is an error too (agentproto.ErrRefused),
	// naming the step the guest could not apply.
	_, err = agentproto.Call(cctx, conn, req)
	return err
}
