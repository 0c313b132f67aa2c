package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/progress"
	"github.com/mergenhq/mergen/internal/wire"
)

func newStatsCmd() *cobra.Command {
	f := &apiFlags{}
	var noStream bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "stats [VM...]",
		Short: "Show what VMs use: VMM CPU and memory, network traffic, disk (a live table; --no-stream for one)",
		Long: `stats shows, for the given VMs or every VM, the VMM's CPU use (percent of
one core over the last interval), its resident memory (the guest's touched
memory included), the bytes and packets through the VM's tap (RX: sent by
the guest) and the disk its own files take. It refreshes every --interval
until interrupted, like docker stats.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			var ids, names []string
			vms, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			if len(args) == 0 {
				for _, vm := range vms {
					ids, names = append(ids, vm.ID), append(names, label(vm))
				}
			}
			for _, ref := range args {
				vm, err := client.Match(vms, ref)
				if err != nil {
					return err
				}
				ids, names = append(ids, vm.ID), append(names, label(vm))
			}
			prev := map[string]wire.Stats{}
			var prevAt time.Time
			for {
				now := time.Now()
				rows := make([]wire.Stats, len(ids))
				for i, id := range ids {
					if rows[i], err = c.Stats(cmd.Context(), id); err != nil {
						return err
					}
				}
				if !noStream {
					fmt.Fprint(cmd.OutOrStdout(), "\033[H\033[2J") // clear, home
				}
				printStats(cmd.OutOrStdout(), names, rows, prev, now.Sub(prevAt))
				if noStream {
					return nil
				}
				for _, s := range rows {
					prev[s.ID] = s
				}
				prevAt = now
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&noStream, "no-stream", false, "print one table and exit")
	cmd.Flags().DurationVar(&every, "interval", 2*time.Second, "refresh interval")
	return cmd
}

func label(vm wire.VM) string {
	if vm.Name != "" {
		return vm.Name
	}
	return wire.ShortID(vm.ID)
}

// printStats prints one table; CPU % is over the time since prev (one
// sample has none: "-").
func printStats(w io.Writer, names []string, rows []wire.Stats, prev map[string]wire.Stats, since time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tSTATE\tCPU %\tCPU TIME\tMEM\tNET RX / TX\tDISK")
	for i, s := range rows {
		state, cpu := "stopped", "-"
		if s.Running {
			state = "running"
			if p, ok := prev[s.ID]; ok && p.Running && since > 0 {
				cpu = fmt.Sprintf("%.1f", 100*(s.CPUSeconds-p.CPUSeconds)/since.Seconds())
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1fs\t%s\t%s / %s\t%s\n", names[i], state, cpu, s.CPUSeconds,
			progress.Bytes(s.RSSBytes), progress.Bytes(int64(s.NetRxBytes)), progress.Bytes(int64(s.NetTxBytes)), progress.Bytes(s.DiskBytes))
	}
	tw.Flush()
}
