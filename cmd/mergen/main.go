// Command mergen is the mergen CLI: the daemon (mergen server), VM commands
// that talk to it, and host tools (images, config, doctor, certs, run).
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/version"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		var exit exitError
		if errors.As(err, &exit) { // mergen exec: the command's own status
			os.Exit(exit.code)
		}
		fmt.Fprintln(os.Stderr, "mergen:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "mergen",
		Short:         "Run microVMs from registry images behind a small REST control plane",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCmd(), newServerCmd(), newVMCmd(), newLogsCmd(),
		newImagesCmd(), newConfigCmd(), newDoctorCmd(), newCertsCmd(), newRunCmd(), newDemoCmd(), newSnapshotCmd(), newExecCmd(), newCpCmd(), newConsoleCmd(), newStatsCmd(), newEventsCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the mergen version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "mergen", version.Version)
		},
	}
}
