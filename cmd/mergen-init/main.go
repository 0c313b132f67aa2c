// Command mergen-init is PID 1 inside a mergen VM and the initramfs /init
// that boots a stock distro kernel to the root disk; see package guest.
// Installed as mergen-agent on the agent disk it is the same program.
package main

import (
	"os"

	"github.com/mergenhq/mergen/internal/guest"
)

func main() { os.Exit(guest.Main(os.Args)) }
