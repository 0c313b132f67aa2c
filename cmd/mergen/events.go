package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/wire"
)

func newEventsCmd() *cobra.Command {
	f := &apiFlags{}
	var vmRef, types string
	var since uint64
	var all, noFollow bool
	cmd := &cobra.Command{
		Use:   "events [--vm VM] [--type T,…] [--since N | --all] [--no-follow]",
		Short: "Follow the host's VM events as they happen",
		Long: `Prints every lifecycle transition of the host's VMs as it happens, one line
each: when, its position (#N), the type, the VM's name and short id, and why.
Types: ` + strings.Join(eventTypeNames(), ", ") + `.

--since N starts after position N (the #N of the last event you saw), so
nothing that happened meanwhile is missed; --all starts from the oldest
event the host keeps. Without either, only what happens from now on. When
the daemon restarts, mergen events reconnects and goes on from the last
event it printed. --no-follow prints what is recorded so far and exits
(with --all: the whole journal). -o json prints each event as one JSON
line. Ctrl-C ends it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			opts := client.EventsOptions{Since: since, FromStart: all, NoFollow: noFollow, Reconnect: !noFollow}
			if vmRef != "" {
				opts.VM = vmRef
				if store.ValidateID(vmRef) != nil {
					vm, err := c.Resolve(cmd.Context(), vmRef)
					if err != nil {
						return err
					}
					opts.VM = vm.ID
				}
			}
			if types != "" {
				for _, t := range strings.Split(types, ",") {
					if !events.Type(t).Valid() {
						return fmt.Errorf("--type: %q is not an event type (want %s)", t, strings.Join(eventTypeNames(), ", "))
					}
					opts.Types = append(opts.Types, t)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			errOut := cmd.ErrOrStderr()
			opts.OnReconnect = func(err error) { fmt.Fprintf(errOut, "mergen events: %v; reconnecting\n", err) }
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			return c.Watch(ctx, opts, func(ev events.Event) error {
				if f.output == "json" {
					return enc.Encode(ev)
				}
				_, err := fmt.Fprintln(out, eventLine(ev))
				return err
			})
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&vmRef, "vm", "", "only this VM's events (name, id or id prefix)")
	cmd.Flags().StringVar(&types, "type", "", "only these event types (comma-separated)")
	cmd.Flags().Uint64Var(&since, "since", 0, "start after this event position")
	cmd.Flags().BoolVar(&all, "all", false, "start from the oldest event the host keeps")
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "print the events recorded so far and exit")
	cmd.MarkFlagsMutuallyExclusive("since", "all")
	return cmd
}

func eventTypeNames() []string {
	names := make([]string, len(events.Types))
	for i, t := range events.Types {
		names[i] = string(t)
	}
	return names
}

// eventLine is one event for people: time, position, type, VM, why.
func eventLine(ev events.Event) string {
	who := wire.ShortID(ev.VM)
	if ev.Name != "" {
		who = ev.Name + " " + who
	}
	line := fmt.Sprintf("%s  #%-5d %-11s %s", ev.Time.Local().Format(time.RFC3339), ev.Seq, ev.Type, who)
	if ev.Attrs["snapshot"] != "" {
		line += "  snapshot " + wire.ShortID(ev.Attrs["snapshot"])
	}
	if ev.Reason != "" {
		line += "  [" + ev.Reason + "]"
	}
	if ev.Message != "" {
		line += "  " + ev.Message
	}
	return line
}
