package main

import (
	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/daemon"
)

func newServerCmd() *cobra.Command {
	var o daemon.Options
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the mergen daemon (REST API on MGR_HTTP_ADDR, default :8080)",
		Long: `Run the mergen daemon. It is configured by MGR_* environment variables
(see the README); VMs it starts belong to the service manager, so stopping or
killing the daemon never stops a VM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return daemon.Run(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.InstallUnits, "install-units", false, "install or update the systemd unit templates before serving")
	return cmd
}
