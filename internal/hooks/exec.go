package hooks

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// maxLogged bounds what is kept of a failed hook's output (a command's
// stdout and stderr, an HTTP hook's answer): it goes to the daemon log,
// never into an error, and a hook that prints without end cannot exhaust
// memory.
const maxLogged = 4 << 10

// headBuffer keeps the first maxLogged bytes written to it and drops the
// rest.
type headBuffer struct {
	b []byte
}

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := maxLogged - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// runCmd runs cmd in its own process group and waits for it. When ctx ends,
// the whole group is killed, so a shell's children cannot keep the hook
// alive past its timeout.
//
// The error says only how the command ended (exit status, signal, timeout):
// what it printed may be anything, secrets included, so it is returned
// apart (at most maxLogged bytes) for the caller to log.
func runCmd(ctx context.Context, cmd *exec.Cmd, timeout time.Duration) (output []byte, err error) {
	var out headBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Grandchildren that escaped the group may still hold the output pipe.
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if cmd.ProcessState != nil && cmd.ProcessState.Success() {
		// The hook exited 0. A child it left running in the background may
		// still hold the output open (exec.ErrWaitDelay); that is its
		// business, not a failure of the hook.
		return nil, nil
	}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return out.b, fmt.Errorf("did not finish within %s", timeout)
	case ctx.Err() != nil:
		return out.b, ctx.Err()
	case err != nil:
		// "exit status 3", "signal: killed", or why it could not start.
		return out.b, err
	}
	return nil, nil
}
