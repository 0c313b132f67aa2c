// Command mergend is the earlier generation's name for the daemon; it is the
// same as `mergen server`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/mergenhq/mergen/internal/daemon"
)

func main() {
	var o daemon.Options
	flag.BoolVar(&o.InstallUnits, "install-units", false, "install or update the systemd unit templates before serving")
	flag.Parse()
	if err := daemon.Run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "mergend:", err)
		os.Exit(1)
	}
}
