package main

import (
	"github.com/spf13/cobra"
)

func newLogsCmd() *cobra.Command {
	f := &apiFlags{}
	var follow bool
	var tail int64
	cmd := &cobra.Command{
		Use:   "logs VM",
		Short: "Show a VM's console: guest kernel, mergen-init and payload output",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, vm, err := f.resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return c.Console(cmd.Context(), vm.ID, tail, follow, cmd.OutOrStdout())
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().Int64Var(&tail, "tail", 0, "only the last N bytes")
	return cmd
}
