package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/mergenhq/mergen/internal/envfile"
)

// maxStageOutput bounds what RunStage keeps of a stage's output for its
// error message.
const maxStageOutput = 4 << 10

// RunStage runs one lifecycle stage of VM id outside any unit, with the
// environment a unit would give it (o.Env, then the VM's env file), and
// waits for it. The daemon runs the delete stage this way, so that network
// teardown and the delete hooks live in the lifecycle program only. A
// failure carries the end of the stage's output.
func RunStage(ctx context.Context, o Options, stage, id string) error {
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	if err := checkID(stage, id); err != nil {
		return err
	}
	fileEnv, err := envfile.Read(o.layout().VM(id).Env)
	if err != nil {
		return fmt.Errorf("%s vm %s: %w", stage, id, err)
	}
	cmd := exec.CommandContext(ctx, o.LifecycleBin, stage, id)
	// Like systemd: the manager's environment, Environment=, then
	// EnvironmentFile=.
	cmd.Env = append(append(os.Environ(), o.Env...), fileEnv...)
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = o.StopTimeout
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if msg == "" {
			return fmt.Errorf("%s vm %s: %s: %w", stage, id, o.LifecycleBin, err)
		}
		return fmt.Errorf("%s vm %s: %w: %s", stage, id, err, msg)
	}
	return nil
}

// tailBuffer keeps the last maxStageOutput bytes written to it.
type tailBuffer struct{ bytes.Buffer }

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	t.Buffer.Write(p)
	if over := t.Len() - maxStageOutput; over > 0 {
		t.Next(over)
	}
	return n, nil
}
