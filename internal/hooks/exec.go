package hooks

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// maxOutput bounds what is kept of a hook command's output: enough to say
// why it failed, never enough to exhaust memory.
const maxOutput = 16 << 10

// tailBuffer keeps the first maxOutput bytes written to it and drops the rest.
type tailBuffer struct {
	b []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - len(t.b); room > 0 {
		t.b = append(t.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// runCmd runs cmd in its own process group and waits for it. When ctx ends,
// the whole group is killed, so a shell's children cannot keep the hook
// alive past its timeout. The error carries the start of the output.
func runCmd(ctx context.Context, cmd *exec.Cmd, timeout time.Duration) error {
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Grandchildren that escaped the group may still hold the output pipe.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if cmd.ProcessState != nil && cmd.ProcessState.Success() {
		// The hook exited 0. A child it left running in the background may
		// still hold the output open (exec.ErrWaitDelay); that is its
		// business, not a failure of the hook.
		return nil
	}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("did not finish within %s", timeout)
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		if msg := strings.TrimSpace(string(out.b)); msg != "" {
			return fmt.Errorf("%v: %.300s", err, msg)
		}
		return err
	}
	return nil
}
