package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// detachKey ends mergen console without touching the guest: Ctrl-], as in
// telnet and virsh console.
const detachKey = 0x1d

func newConsoleCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "console VM",
		Short: "Attach to a VM's interactive serial console (detach with Ctrl-])",
		Long: `console attaches this terminal to the VM's interactive serial console: a
root shell of the guest's own system (not the payload's image) that
mergen-init keeps on the second serial port, reachable only through the
VMM. It is the way in when the payload or the guest's network is broken.
Ctrl-] detaches and leaves the shell running; one console is attached at
a time. The boot output stays on the console log (mergen logs -f).
QEMU VMs have it; Firecracker has one serial port (use mergen exec -it).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, vm, err := f.resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			ws, err := c.AttachConsole(ctx, vm.ID)
			if err != nil {
				return err
			}
			defer ws.CloseNow()
			fmt.Fprintf(cmd.ErrOrStderr(), "attached to the console of %s; detach with Ctrl-]\r\n", args[0])
			in := int(os.Stdin.Fd())
			if term.IsTerminal(in) {
				old, err := term.MakeRaw(in)
				if err != nil {
					return fmt.Errorf("console: raw terminal: %w", err)
				}
				defer term.Restore(in, old)
			}
			detached := make(chan struct{})
			go func() {
				buf := make([]byte, 1024)
				for {
					n, err := cmd.InOrStdin().Read(buf)
					for i := 0; i < n; i++ {
						if buf[i] == detachKey {
							if i > 0 {
								ws.Write(ctx, websocket.MessageBinary, buf[:i])
							}
							close(detached)
							return
						}
					}
					if n > 0 && ws.Write(ctx, websocket.MessageBinary, buf[:n]) != nil {
						return
					}
					if err != nil {
						return
					}
				}
			}()
			out := make(chan error, 1)
			go func() {
				for {
					_, msg, err := ws.Read(ctx)
					if err != nil {
						out <- err
						return
					}
					cmd.OutOrStdout().Write(msg)
				}
			}()
			select {
			case <-detached:
				ws.Close(websocket.StatusNormalClosure, "detached")
				fmt.Fprintf(cmd.ErrOrStderr(), "\r\ndetached from the console of %s\r\n", args[0])
				return nil
			case err := <-out:
				if websocket.CloseStatus(err) == websocket.StatusNormalClosure || errors.Is(err, context.Canceled) {
					return nil
				}
				return fmt.Errorf("console of %s: %w", args[0], err)
			}
		},
	}
	f.register(cmd)
	return cmd
}
