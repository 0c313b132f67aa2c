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
	err := tellUntilTaken(ctx, driver, spec, func() agentproto.Request {
		return agentproto.Request{Op: agentproto.OpEnv, Env: m.ExtraEnv}
	})
	if err != nil {
		return fmt.Errorf("the guest's agent did not take the VM's environment: %w", err)
	}
	r.Log.Info("environment handed to the guest", "vm", m.ID, "variables", len(m.ExtraEnv))
	return nil
}

// tellAttempt bounds one connection's wait for the guest's answer, which
// normally comes in tens of milliseconds.
const tellAttempt = 1500 * time.Millisecond

// tellUntilTaken sends the request next makes, over a new agent connection
// per attempt, until the guest takes one or ctx ends (then the last error
// is returned): the agent answers once mergen-init runs, and a guest that
// has not noticed one connection (its virtio-serial port's open event)
// notices the next.
func tellUntilTaken(ctx context.Context, driver vmm.Driver, spec vmm.Spec, next func() agentproto.Request) error {
	for {
		actx, cancel := context.WithTimeout(ctx, tellAttempt)
		last := vmm.CallAgent(actx, driver, spec, next())
		cancel()
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
