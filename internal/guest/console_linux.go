package guest

import (
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// consoleTTY is the second serial port: the host's interactive console
// (mergen console). The first is the console log.
const consoleTTY = "/dev/ttyS1"

// consoleRespawn paces restarts of a shell that keeps exiting.
const consoleRespawn = time.Second

// startConsole keeps a root shell of the guest's own root (not the
// payload's) on the second serial port, started again whenever it exits,
// as a getty would. Only the host reaches that port (the VMM's socket in
// the VM's run directory), which makes it the way in when the payload or
// the network is broken. A VMM without a second port (Firecracker) has
// no ttyS1 that opens; then there is nothing to do.
func startConsole(ch *children) {
	go func() {
		for {
			tty, err := os.OpenFile(consoleTTY, os.O_RDWR|unix.O_NOCTTY, 0)
			if err != nil {
				return // no second serial port
			}
			_, exited, err := ch.start(func() (int, error) {
				p, err := os.StartProcess("/bin/sh", []string{"-sh"}, &os.ProcAttr{
					Dir:   "/",
					Env:   []string{"TERM=vt100", "HOME=/root", "PATH=" + defaultPath, "PS1=mergen-console# "},
					Files: []*os.File{tty, tty, tty},
					Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0},
				})
				if err != nil {
					return 0, err
				}
				return p.Pid, nil
			})
			tty.Close()
			if err != nil {
				logf("console: %v", err)
				return
			}
			<-exited
			time.Sleep(consoleRespawn)
		}
	}()
}
