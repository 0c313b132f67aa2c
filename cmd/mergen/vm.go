package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/auth"
	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/wire"
)

// apiFlags is shared by every command that talks to the daemon.
type apiFlags struct {
	addr   string
	output string
	cfg    config.CLI
}

func (f *apiFlags) register(cmd *cobra.Command) {
	// A malformed setting elsewhere must not hide the address; commands
	// that need the rest of the configuration load it themselves and
	// report what is wrong.
	f.cfg, _ = config.LoadCLI()
	cmd.PersistentFlags().StringVar(&f.addr, "api", f.cfg.API,
		"daemon address: unix:///path, host:port or URL (env MERGEN_API; default: the socket MGR_API_SOCKET when the daemon answers there, else "+config.DefaultAPI+")")
	cmd.PersistentFlags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
}

// client connects the way the operator asked: an explicit address (with
// the token from MERGEN_API_TOKEN or the token file), else the daemon's
// unix socket when it answers (no token: its file permissions are the
// boundary), else the default TCP address with the token.
func (f *apiFlags) client() (*client.Client, error) {
	if f.output != "table" && f.output != "json" {
		return nil, fmt.Errorf("--output %q: want table or json", f.output)
	}
	addr := f.addr
	if addr == "" {
		if client.Socket(f.cfg.APISocket) {
			return client.New("unix://" + f.cfg.APISocket)
		}
		addr = config.DefaultAPI
	}
	if strings.HasPrefix(addr, "unix://") {
		return client.New(addr)
	}
	return client.New(addr, client.WithToken(f.token()))
}

// token is MERGEN_API_TOKEN, else the first token of the token file when
// this user can read it, else none (the daemon then answers 401 and the
// client's error says how to give one).
func (f *apiFlags) token() string {
	if f.cfg.APIToken != "" {
		return f.cfg.APIToken
	}
	tok, _ := auth.First(f.cfg.APITokenFile)
	return tok
}

// resolve connects to the daemon and finds the VM a user named by id, id
// prefix or name. The VM document comes from the list, current as of now.
func (f *apiFlags) resolve(ctx context.Context, ref string) (*client.Client, wire.VM, error) {
	c, err := f.client()
	if err != nil {
		return nil, wire.VM{}, err
	}
	vm, err := c.Resolve(ctx, ref)
	return c, vm, err
}

func newVMCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:     "vm",
		Aliases: []string{"vms"},
		Short:   "Create, list, inspect, start, stop, pause, resume and remove VMs through the daemon",
		Long: `VM commands talk to the daemon. Wherever a VM is expected you may give its
full id, a unique prefix of it, or its name (the "name" tag).`,
	}
	f.register(cmd)
	cmd.AddCommand(newVMCreateCmd(f), newVMListCmd(f), newVMInspectCmd(f),
		newVMStartStopCmd(f, "start"), newVMStartStopCmd(f, "stop"),
		newVMStartStopCmd(f, "pause"), newVMStartStopCmd(f, "resume"), newVMRemoveCmd(f))
	return cmd
}

func newVMCreateCmd(f *apiFlags) *cobra.Command {
	var (
		req                              wire.CreateRequest
		ports, tags, env                 []string
		bridge, guestIP, gatewayIP, mask string
		metadata                         string
		start                            bool
		hf                               healthFlags
	)
	cmd := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create a VM (kernel, rootfs and agent disk default to the base assets)",
		Example: `  mergen vm create web --payload-disk /var/lib/mergen/images/nginx:alpine/payload-rootfs.ext4 -p 0:80 --http-port 80 --start
  mergen vm create demo --bridge docker0 --guest-ip 172.17.0.35 --gateway-ip 172.17.0.1 --netmask 255.255.255.0`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			if req.Tags, err = parseKV("--tag", tags); err != nil {
				return err
			}
			if len(args) == 1 {
				if req.Tags == nil {
					req.Tags = map[string]string{}
				}
				req.Tags[wire.NameTag] = args[0]
			}
			if req.ExtraEnv, err = parseKV("--env", env); err != nil {
				return err
			}
			if req.Ports, err = parsePorts(ports); err != nil {
				return err
			}
			if metadata != "" {
				if !json.Valid([]byte(metadata)) {
					return fmt.Errorf("--metadata: not valid JSON")
				}
				req.Metadata = json.RawMessage(metadata)
			}
			if bridge != "" {
				req.Bridge = &wire.BridgeRequest{Name: bridge, GuestIP: guestIP, GatewayIP: gatewayIP, Netmask: mask}
			} else if guestIP != "" || gatewayIP != "" || mask != "" {
				return fmt.Errorf("--guest-ip, --gateway-ip and --netmask need --bridge (in the default mode the guest IP is allocated)")
			}
			req.AutoStart = start
			if req.HealthCheck, err = hf.check(); err != nil {
				return err
			}
			if req.Snapshot != "" {
				// A prefix is resolved here: the daemon takes ids too, but the
				// error for an ambiguous prefix reads better from the list.
				snap, err := c.GetSnapshot(cmd.Context(), req.Snapshot)
				if err != nil {
					return fmt.Errorf("--from-snapshot: %w", err)
				}
				req.Snapshot = snap.ID
			}
			vm, err := c.Create(cmd.Context(), req)
			if err != nil {
				return err
			}
			return printVMs(cmd.OutOrStdout(), f.output, []wire.VM{vm}, false)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Kernel, "kernel", "", "kernel image (default MGR_DEFAULT_KERNEL)")
	fl.StringVar(&req.Initrd, "initrd", "", "initramfs (default MGR_DEFAULT_INITRD when present)")
	fl.StringVar(&req.Rootfs, "rootfs", "", "root disk (default MGR_DEFAULT_ROOTFS)")
	fl.StringVar(&req.AgentDisk, "agent-disk", "", "agent disk (default MGR_DEFAULT_AGENT_DISK)")
	fl.StringVar(&req.PayloadDisk, "payload-disk", "", "payload disk made by mergen-converter")
	fl.StringVar(&req.EnvDisk, "env-disk", "", "env disk (default MGR_DEFAULT_ENV_DISK)")
	fl.StringVar(&req.DataDisk, "data-disk", "", "writable per-VM disk")
	fl.StringVar(&req.VMM, "vmm", "", "VMM for this VM: firecracker or qemu (default: the host's)")
	fl.IntVar(&req.VCPU, "vcpu", 0, "virtual CPUs (default 1)")
	fl.IntVar(&req.MemMiB, "mem", 0, "memory in MiB (default 512)")
	fl.IntVar(&req.HTTPPort, "http-port", 0, "guest HTTP port the forwarder routes to")
	fl.StringArrayVarP(&ports, "publish", "p", nil, "publish HOST:GUEST[/tcp|udp] (HOST 0 picks a free port); repeatable")
	fl.StringArrayVar(&tags, "tag", nil, "tag KEY=VALUE; repeatable")
	fl.StringArrayVarP(&env, "env", "e", nil, "extra guest environment KEY=VALUE; repeatable")
	fl.StringVar(&req.BootArgs, "boot-args", "", "extra kernel command line arguments")
	fl.StringVar(&metadata, "metadata", "", "free JSON stored with the VM")
	fl.BoolVar(&start, "start", false, "start the VM after creating it")
	fl.StringVar(&req.Snapshot, "from-snapshot", "", "restore the VM from this snapshot (id or unique prefix) instead of booting it; it keeps the snapshot's disks and shape")
	fl.StringVar(&req.Restart, "restart", "", "restart policy, carried out by the service manager: no, always, on-failure or on-failure:N (default no)")
	hf.register(fl)
	fl.StringVar(&bridge, "bridge", "", "attach the tap to this existing host bridge (e.g. docker0) instead of a namespace")
	fl.StringVar(&guestIP, "guest-ip", "", "static guest IP (bridge mode)")
	fl.StringVar(&gatewayIP, "gateway-ip", "", "gateway IP (bridge mode)")
	fl.StringVar(&mask, "netmask", "", "netmask, e.g. 255.255.255.0 (bridge mode)")
	return cmd
}

func parseKV(flag string, items []string) (map[string]string, error) {
	if len(items) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE", flag, it)
		}
		out[k] = v
	}
	return out, nil
}

// parsePorts reads HOST:GUEST[/proto] (or just GUEST, publishing on a free
// host port).
func parsePorts(items []string) ([]wire.Port, error) {
	var out []wire.Port
	for _, it := range items {
		spec, proto, _ := strings.Cut(it, "/")
		hostS, guestS, ok := strings.Cut(spec, ":")
		if !ok {
			hostS, guestS = "0", spec
		}
		host, err1 := strconv.Atoi(hostS)
		guest, err2 := strconv.Atoi(guestS)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("--publish %q: want HOST:GUEST[/tcp|udp] with numeric ports", it)
		}
		out = append(out, wire.Port{Host: host, Guest: guest, Protocol: proto})
	}
	return out, nil
}

func newVMListCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			vms, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			return printVMs(cmd.OutOrStdout(), f.output, vms, true)
		},
	}
}

func newVMInspectCmd(f *apiFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "inspect VM",
		Short: "Show everything about one VM (JSON), or a summary with why its last run ended (-o text)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "json" && output != "text" {
				return fmt.Errorf("--output %q: want json or text", output)
			}
			c, vm, err := f.resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			// The list Resolve reads leaves out what only the document of
			// one VM has (lastRun).
			if vm, err = c.Get(cmd.Context(), vm.ID); err != nil {
				return err
			}
			if output == "text" {
				printVMText(cmd.OutOrStdout(), vm)
				return nil
			}
			return printJSON(cmd.OutOrStdout(), vm)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "json", "json or text")
	return cmd
}

// printVMText is a VM's summary for people: what it is, its state, and how
// its last run ended.
func printVMText(w io.Writer, vm wire.VM) {
	name := vm.Name
	if name == "" {
		name = "-"
	}
	fmt.Fprintf(w, "ID:       %s\nName:     %s\nState:    %s\nVMM:      %s, %d vCPU, %d MiB\n", vm.ID, name, vm.State, vm.VMM, vm.VCPU, vm.MemMiB)
	if vm.Network.GuestIP != "" {
		fmt.Fprintf(w, "Address:  %s\n", vm.Network.GuestIP)
	}
	fmt.Fprintf(w, "Service:  %s (%s/%s)\n", vm.Service.Unit, vm.Service.ActiveState, vm.Service.SubState)
	if vm.Restarts > 0 {
		fmt.Fprintf(w, "Restarts: %d (policy %s)\n", vm.Restarts, vm.Restart)
	}
	printHealth(w, vm)
	printLastRun(w, vm.LastRun)
}

func printHealth(w io.Writer, vm wire.VM) {
	if vm.Health == nil {
		return
	}
	h := vm.Health
	fmt.Fprintf(w, "Health:   %s since %s", h.Status, h.Since.Local().Format(time.RFC3339))
	if h.Failures > 0 {
		fmt.Fprintf(w, ", %d failed checks in a row", h.Failures)
	}
	fmt.Fprintln(w)
	if h.Message != "" {
		fmt.Fprintf(w, "  %s\n", h.Message)
	}
	if lc := h.LastCheck; lc != nil {
		word := "failed"
		if lc.OK {
			word = "passed"
		}
		fmt.Fprintf(w, "  Last check: %s at %s (%d ms)", word, lc.At.Local().Format(time.RFC3339), lc.DurationMs)
		if lc.Output != "" {
			fmt.Fprintf(w, ": %s", lc.Output)
		}
		fmt.Fprintln(w)
	}
}

func printLastRun(w io.Writer, lr *wire.LastRun) {
	if lr == nil {
		return
	}
	fmt.Fprintf(w, "Last run: %s", lr.Reason)
	if lr.Message != "" {
		fmt.Fprintf(w, ": %s", lr.Message)
	}
	fmt.Fprintln(w)
	var vmm []string
	if lr.Result != "" {
		vmm = append(vmm, "result "+lr.Result)
	}
	if lr.ExitCode != nil {
		vmm = append(vmm, fmt.Sprintf("exit status %d", *lr.ExitCode))
	}
	if lr.Signal != "" {
		vmm = append(vmm, "signal "+lr.Signal)
	}
	if len(vmm) > 0 {
		fmt.Fprintf(w, "  VMM:    %s\n", strings.Join(vmm, ", "))
	}
	if !lr.EndedAt.IsZero() {
		fmt.Fprintf(w, "  Ended:  %s\n", lr.EndedAt.Local().Format(time.RFC3339))
	}
	if lr.InitExitCode != nil {
		fmt.Fprintf(w, "  Guest:  mergen-init exit status %d", *lr.InitExitCode)
		if lr.InitMessage != "" {
			fmt.Fprintf(w, ": %s", lr.InitMessage)
		}
		fmt.Fprintln(w)
	}
	if len(lr.ConsoleTail) > 0 {
		fmt.Fprintf(w, "  Console (last %d lines):\n", len(lr.ConsoleTail))
		for _, l := range lr.ConsoleTail {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
}

func newVMStartStopCmd(f *apiFlags, op string) *cobra.Command {
	return &cobra.Command{
		Use: op + " VM...",
		Short: map[string]string{
			"start":  "Start VMs (already running is fine)",
			"stop":   "Stop VMs (already stopped is fine)",
			"pause":  "Pause running VMs: the guest's vCPUs stop, its memory stays (already paused is fine)",
			"resume": "Resume paused VMs (already running is fine)",
		}[op],
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			var done []wire.VM
			for _, ref := range args {
				vm, err := c.Resolve(cmd.Context(), ref)
				if err != nil {
					return err
				}
				switch op {
				case "start":
					vm, err = c.Start(cmd.Context(), vm.ID)
				case "stop":
					vm, err = c.Stop(cmd.Context(), vm.ID)
				case "pause":
					vm, err = c.Pause(cmd.Context(), vm.ID)
				case "resume":
					vm, err = c.Resume(cmd.Context(), vm.ID)
				}
				if err != nil {
					return fmt.Errorf("%s %s: %w", op, ref, err)
				}
				done = append(done, vm)
			}
			return printVMs(cmd.OutOrStdout(), f.output, done, false)
		},
	}
}

func newVMRemoveCmd(f *apiFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm VM...",
		Aliases: []string{"delete", "remove"},
		Short:   "Delete VMs (running ones need --force)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			for _, ref := range args {
				vm, err := c.Resolve(cmd.Context(), ref)
				if err != nil {
					return err
				}
				if vm.Service.Active && !force {
					return fmt.Errorf("rm %s: VM is running; stop it first or pass --force", ref)
				}
				if err := c.Delete(cmd.Context(), vm.ID); err != nil {
					return fmt.Errorf("rm %s: %w", ref, err)
				}
				if f.output == "json" {
					if err := printJSON(cmd.OutOrStdout(), map[string]string{"id": vm.ID, "status": "deleted"}); err != nil {
						return err
					}
				} else {
					fmt.Fprintln(cmd.OutOrStdout(), vm.ID)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop running VMs before deleting them")
	return cmd
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printVMs(w io.Writer, format string, vms []wire.VM, asList bool) error {
	if format == "json" {
		if asList {
			return printJSON(w, vms)
		}
		if len(vms) == 1 {
			return printJSON(w, vms[0])
		}
		return printJSON(w, vms)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tVMM\tGUEST IP\tPORTS\tAGE")
	for _, vm := range vms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wire.ShortID(vm.ID), dash(vm.Name), stateWord(vm),
			vm.VMM, dash(vm.Network.GuestIP), portsText(vm.Network.Ports), age(vm.CreatedAt))
	}
	return tw.Flush()
}

// stateWord is the STATE column: the daemon's one-word state (running,
// paused, stopped, …); for a daemon that does not send one, the service
// manager's view.
func stateWord(vm wire.VM) string {
	if vm.State == wire.StateRunning && vm.Health != nil {
		// A VM with a health check: starting, ready or unhealthy.
		return vm.Health.Status
	}
	if vm.State != "" {
		return vm.State
	}
	s := vm.Service
	switch {
	case !s.Available:
		return "unknown"
	case s.ActiveState != "":
		return s.ActiveState
	case s.Active:
		return "active"
	}
	return "inactive"
}

func portsText(ps []wire.Port) string {
	if len(ps) == 0 {
		return "-"
	}
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = fmt.Sprintf("%d->%d/%s", p.Host, p.Guest, p.Protocol)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
