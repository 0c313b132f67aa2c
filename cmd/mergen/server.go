package main

import (
	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/daemon"
)

func newServerCmd() *cobra.Command {
	var o daemon.Options
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the mergen daemon (REST API on MGR_API_SOCKET and MGR_HTTP_ADDR, default 127.0.0.1:8080)",
		Long: `Run the mergen daemon. It is configured by MGR_* environment variables
(see the README); VMs it starts belong to the service manager, so stopping or
killing the daemon never stops a VM.

The API answers on the unix socket MGR_API_SOCKET (mode 0660, group mergen
when it exists; no token needed) and on TCP at MGR_HTTP_ADDR, where every
request but GET /healthz and GET /health needs "Authorization: Bearer <token>"
with a token from MGR_API_TOKEN_FILE (created with one random token when
missing).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return daemon.Run(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.InstallUnits, "install-units", false, "install or update the systemd unit templates before serving")
	return cmd
}
