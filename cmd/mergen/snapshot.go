package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/progress"
	"github.com/mergenhq/mergen/internal/wire"
)

func newSnapshotCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snapshots"},
		Short:   "Take, list, inspect and remove VM snapshots",
		Long: `A snapshot is a VM's memory, device state and data disk, taken while its
guest is paused. New VMs are restored from it with
'mergen vm create NAME --from-snapshot SNAPSHOT': each gets its own id,
address, MAC, hostname, environment and ports (see docs/snapshots.md).
Wherever a snapshot is expected you may give its id or a unique prefix of
8 characters or more.`,
	}
	f.register(cmd)
	cmd.AddCommand(newSnapshotCreateCmd(f), newSnapshotListCmd(f), newSnapshotInspectCmd(f), newSnapshotRemoveCmd(f))
	cmd.AddCommand(newSnapshotTransferCmds()...)
	return cmd
}

func newSnapshotCreateCmd(f *apiFlags) *cobra.Command {
	var req wire.SnapshotRequest
	cmd := &cobra.Command{
		Use:   "create VM",
		Short: "Snapshot a running or paused VM (it resumes afterwards unless --stop)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, vm, err := f.resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			snap, err := c.Snapshot(cmd.Context(), vm.ID, req)
			if err != nil {
				return err
			}
			return printSnapshots(cmd.OutOrStdout(), f.output, []wire.Snapshot{snap}, false)
		},
	}
	cmd.Flags().BoolVar(&req.Stop, "stop", false, "stop the VM once the snapshot is taken")
	return cmd
}

func newSnapshotListCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List snapshots, oldest first",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			snaps, err := c.Snapshots(cmd.Context())
			if err != nil {
				return err
			}
			return printSnapshots(cmd.OutOrStdout(), f.output, snaps, true)
		},
	}
}

func newSnapshotInspectCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect SNAPSHOT",
		Short: "Show one snapshot's document (JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			snap, err := c.GetSnapshot(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), snap)
		},
	}
}

func newSnapshotRemoveCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "rm SNAPSHOT...",
		Aliases: []string{"delete", "remove"},
		Short:   "Delete snapshots (VMs restored from them keep running)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			for _, ref := range args {
				snap, err := c.GetSnapshot(cmd.Context(), ref)
				if err != nil {
					return fmt.Errorf("rm %s: %w", ref, err)
				}
				if err := c.DeleteSnapshot(cmd.Context(), snap.ID); err != nil {
					return fmt.Errorf("rm %s: %w", ref, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), snap.ID)
			}
			return nil
		},
	}
}

func printSnapshots(w io.Writer, format string, snaps []wire.Snapshot, asList bool) error {
	if format == "json" {
		if !asList && len(snaps) == 1 {
			return printJSON(w, snaps[0])
		}
		return printJSON(w, snaps)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSOURCE\tVMM\tSHAPE\tSIZE\tPAUSED\tREADY\tAGE")
	for _, s := range snaps {
		src := s.Source.Name
		if src == "" {
			src = wire.ShortID(s.Source.VM)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d vCPU/%d MiB\t%s\t%dms\t%s\t%s\n", wire.ShortID(s.ID), src, s.VMM, s.VCPU, s.MemMiB,
			progress.Bytes(s.SizeBytes), s.DurationMs, dash(s.Ready), age(s.CreatedAt))
	}
	return tw.Flush()
}
