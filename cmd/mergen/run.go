package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/converter"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/progress"
	"github.com/mergenhq/mergen/internal/wire"
)

type runFlags struct {
	api                    apiFlags
	name                   string
	publish, env           []string
	httpPort, vcpu, mem    int
	detach, pull, insecure bool
	cold                   bool
	readyPort              int
	platform               string
	domain                 string
	httpsPort              int
	timeout                time.Duration
	health                 healthFlags
	restart                string
}

func newRunCmd() *cobra.Command { return runCmd(config.Env()) }

// runCmd is newRunCmd reading its configuration through getenv.
func runCmd(getenv config.Source) *cobra.Command {
	var f runFlags
	defaults, _ := config.CLIFromEnv(getenv)
	cmd := &cobra.Command{
		Use:   "run IMAGE",
		Short: "Convert an image (cached), create and start a VM from it, and wait until its HTTP port answers",
		Long: `run is the one-command path from an image to a running VM:

  1. convert IMAGE into a payload disk under $MGR_IMAGES_ROOT (default
     $MGR_DATA_ROOT/images), where the daemon and 'mergen images ls' find
     it (reused when already converted; --pull converts again),
  2. create and start the VM through the daemon,
  3. wait until the guest's HTTP port answers on its published host port,
  4. print the VM's id, guest IP, published ports and HTTPS URL.

Step 2 restores the image's ready snapshot instead of booting: the first run
of an image (for a given kernel, base disks, VMM and shape) boots a template
VM of it, waits until its HTTP port (or --ready-port) answers, snapshots it
and deletes it; later runs start from that memory. --cold boots instead.

IMAGE is a registry reference, oci:DIR or docker-archive:FILE. run must
execute on the daemon's host: the payload disk it makes is attached by path.
Without --detach it then follows the VM's console until interrupted; the VM
keeps running either way (mergen vm rm -f NAME removes it).`,
		Example: `  mergen run oci:/srv/images/demo --name demo --http-port 8080 --detach
  mergen run nginx:alpine --name web -p 8080:80`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.CLIFromEnv(withDataRoot(cmd, getenv))
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runImage(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), cfg, f, args[0])
		},
	}
	f.api.register(cmd)
	// The daemon's address comes from getenv, like every other default of
	// this command (tests give their own).
	if api := cmd.PersistentFlags().Lookup("api"); api != nil {
		api.DefValue, f.api.addr, f.api.cfg = defaults.API, defaults.API, defaults
	}
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "VM name (a DNS label); also its HTTPS label")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish HOST:GUEST[/tcp|udp]; repeatable (default: the HTTP port on a free host port)")
	fl.IntVar(&f.httpPort, "http-port", 0, "guest HTTP port (default: the image's first exposed TCP port)")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "guest environment KEY=VALUE; repeatable")
	fl.IntVar(&f.vcpu, "vcpu", 0, "virtual CPUs (default 1)")
	fl.IntVar(&f.mem, "mem", 0, "memory in MiB (default 512)")
	fl.BoolVarP(&f.detach, "detach", "d", false, "return once the VM answers instead of following its console")
	fl.BoolVar(&f.pull, "pull", false, "convert again even if the image was converted before")
	fl.BoolVar(&f.insecure, "insecure", false, "allow plain HTTP to the registry")
	fl.StringVar(&f.platform, "platform", "", "os/arch to convert (default: the host's)")
	fl.String("data-root", defaults.DataRoot, "the daemon's data root ($MGR_DATA_ROOT); images go to its images/ unless MGR_IMAGES_ROOT is set")
	fl.StringVar(&f.domain, "domain", defaults.Domain, "forwarder domain for the printed URL ($FWD_DOMAIN)")
	fl.IntVar(&f.httpsPort, "https-port", httpsPort(defaults.HTTPSAddr), "forwarder HTTPS port for the printed URL ($FWD_HTTPS_ADDR)")
	fl.DurationVar(&f.timeout, "timeout", 3*time.Minute, "how long to wait for the guest's HTTP port")
	fl.BoolVar(&f.cold, "cold", false, "boot the image instead of restoring its ready snapshot")
	fl.IntVar(&f.readyPort, "ready-port", 0, "guest TCP port whose answer makes the image's ready snapshot (default: the HTTP port)")
	fl.StringVar(&f.restart, "restart", "", "restart policy, carried out by the service manager: no, always, on-failure or on-failure:N (default no)")
	f.health.register(fl)
	return cmd
}

// withDataRoot is getenv with --data-root, when given, standing for
// MGR_DATA_ROOT, so that the roots derived from it follow the flag.
func withDataRoot(cmd *cobra.Command, getenv config.Source) config.Source {
	if fl := cmd.Flags().Lookup("data-root"); fl != nil && fl.Changed {
		return getenv.With("MGR_DATA_ROOT", fl.Value.String())
	}
	return getenv
}

// httpsPort is the port of the forwarder's address (FWD_HTTPS_ADDR).
func httpsPort(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 443
	}
	var n int
	fmt.Sscan(p, &n)
	if n == 0 {
		return 443
	}
	return n
}

// phases prints what run is doing and how long each step took.
type phases struct {
	w     io.Writer
	start time.Time
	name  string
}

func (p *phases) begin(format string, a ...any) {
	p.name = fmt.Sprintf(format, a...)
	p.start = time.Now()
	fmt.Fprintf(p.w, "==> %s\n", p.name)
}

func (p *phases) end(detail string) time.Duration {
	d := time.Since(p.start)
	if detail != "" {
		detail = " (" + detail + ")"
	}
	fmt.Fprintf(p.w, "    done in %s%s\n", d.Round(time.Millisecond), detail)
	return d
}

// converted is what run's first step left: the payload disk to attach and
// the image's start contract.
type converted struct {
	dir, payload string
	rt           imagemeta.Runtime
	cached       bool // an earlier conversion was reused
	pulled       int  // layers downloaded
}

// convertImage converts image into cfg's images root, where the daemon and
// `mergen images ls` find it, unless a finished earlier conversion is there
// and pull is false.
func convertImage(ctx context.Context, stderr io.Writer, cfg config.CLI, image, platform string, insecure, pull bool) (converted, error) {
	out, err := converter.OutputDir(cfg.ImagesRoot, image)
	if err != nil {
		return converted{}, err
	}
	if rt, ok := readRuntime(out); ok && !pull {
		return converted{dir: out, payload: filepath.Join(out, imagemeta.PayloadExt4), rt: rt, cached: true}, nil
	}
	tr := progress.New()
	stop := progress.Render(ctx, stderr, tr, cfg.ProgressEvery)
	res, err := converter.Convert(ctx, converter.Options{
		Source: image, Platform: platform, ImagesRoot: cfg.ImagesRoot, BaseAssetsDir: cfg.BaseAssetsDir,
		Insecure: insecure, NoTar: true, Progress: tr,
	})
	stop()
	if err != nil {
		return converted{}, err
	}
	return converted{dir: res.OutputDir, payload: res.Ext4, rt: res.Runtime, pulled: res.Pulled}, nil
}

func runImage(ctx context.Context, stdout, stderr io.Writer, cfg config.CLI, f runFlags, image string) error {
	c, err := f.api.client()
	if err != nil {
		return err
	}
	ph := &phases{w: stderr}
	total := time.Now()

	// 1. Convert, or reuse an earlier conversion.
	ph.begin("convert %s", image)
	conv, err := convertImage(ctx, stderr, cfg, image, f.platform, f.insecure, f.pull)
	if err != nil {
		return err
	}
	if conv.cached {
		ph.end("cached: " + conv.dir)
	} else {
		ph.end(fmt.Sprintf("%d layers pulled", conv.pulled))
	}
	rt, payload := conv.rt, conv.payload

	// 2. Create and start.
	req := wire.CreateRequest{PayloadDisk: payload, VCPU: f.vcpu, MemMiB: f.mem, HTTPPort: f.httpPort, AutoStart: true, Restart: f.restart}
	if req.HTTPPort == 0 {
		req.HTTPPort = rt.HTTPPort
	}
	if f.name != "" {
		req.Tags = map[string]string{wire.NameTag: f.name}
	}
	if req.ExtraEnv, err = parseKV("--env", f.env); err != nil {
		return err
	}
	if req.Ports, err = parsePorts(f.publish); err != nil {
		return err
	}
	if req.HealthCheck, err = f.health.check(); err != nil {
		return err
	}
	if len(req.Ports) == 0 && req.HTTPPort != 0 {
		req.Ports = []wire.Port{{Guest: req.HTTPPort, Host: 0, Protocol: "tcp"}}
	}
	// The image's ready snapshot: the first run of an image boots a
	// template VM once and snapshots it when its port answers; every run
	// then restores that memory instead of booting.
	if !f.cold && (req.HTTPPort != 0 || f.readyPort != 0) {
		req.Ready = &wire.ReadyRequest{Port: f.readyPort}
	}
	if req.Ready != nil {
		ph.begin("create the VM from the image's ready snapshot (made first if there is none)")
	} else {
		ph.begin("create and start the VM")
	}
	vm, err := c.Create(ctx, req)
	if err != nil {
		return err
	}
	ph.end(vm.ID)

	// 3. Wait for the health check to pass, or else for the guest's HTTP
	// port on its published host port.
	if req.HealthCheck != nil {
		ph.begin("wait for the VM's health check to pass")
		if vm, err = waitReady(ctx, c, vm.ID, f.timeout); err != nil {
			return fmt.Errorf("%w (see `mergen vm inspect -o text %s`)", err, wire.ShortID(vm.ID))
		}
		ph.end("ready")
	} else if req.HTTPPort != 0 {
		hostPort := 0
		for _, p := range vm.Network.Ports {
			if p.Guest == req.HTTPPort && p.Protocol == "tcp" {
				hostPort = p.Host
			}
		}
		if hostPort != 0 {
			ph.begin("wait for the guest's HTTP port %d (published on 127.0.0.1:%d)", req.HTTPPort, hostPort)
			if err := waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/", hostPort), f.timeout); err != nil {
				return fmt.Errorf("vm %s: %w (see `mergen logs %s`)", vm.ID, err, wire.ShortID(vm.ID))
			}
			ph.end("")
		}
	}
	printRunSummary(stdout, vm, f, time.Since(total))
	if f.detach {
		return nil
	}
	fmt.Fprintf(stderr, "==> following the console of %s (Ctrl-C stops following; the VM keeps running)\n", wire.ShortID(vm.ID))
	if err := c.Console(ctx, vm.ID, 0, true, stdout); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// readRuntime returns the runtime metadata of a finished earlier conversion.
func readRuntime(dir string) (imagemeta.Runtime, bool) {
	var rt imagemeta.Runtime
	if _, ok := imagemeta.Complete(dir); !ok {
		return rt, false
	}
	b, err := os.ReadFile(filepath.Join(dir, imagemeta.RuntimeFile))
	if err != nil || json.Unmarshal(b, &rt) != nil {
		return rt, false
	}
	return rt, true
}

// waitReady polls the VM's document until its health check passed; an
// unhealthy VM ends the wait with the last check's output.
func waitReady(ctx context.Context, c *client.Client, id string, limit time.Duration) (wire.VM, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		vm, err := c.Get(ctx, id)
		if err != nil {
			return vm, err
		}
		if h := vm.Health; h != nil {
			switch h.Status {
			case wire.HealthReady:
				return vm, nil
			case wire.HealthUnhealthy:
				out := ""
				if h.LastCheck != nil && h.LastCheck.Output != "" {
					out = ": " + h.LastCheck.Output
				}
				return vm, fmt.Errorf("vm %s is unhealthy%s", id, out)
			}
		}
		select {
		case <-ctx.Done():
			return vm, fmt.Errorf("vm %s: its health check did not pass within %s", id, limit)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitHTTP polls url until any HTTP answer arrives.
func waitHTTP(ctx context.Context, url string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest HTTP did not answer within %s: %v", limit, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printRunSummary(w io.Writer, vm wire.VM, f runFlags, took time.Duration) {
	label := vm.Name
	if label == "" {
		label = wire.ShortID(vm.ID)
	}
	host := label + "." + f.domain
	url := "https://" + host + "/"
	resolve := fmt.Sprintf("%s:%d:127.0.0.1", host, f.httpsPort)
	if f.httpsPort != 443 {
		url = fmt.Sprintf("https://%s:%d/", host, f.httpsPort)
	}
	fmt.Fprintf(w, "VM %s is running (%s)\n", vm.ID, took.Round(time.Millisecond))
	if vm.Name != "" {
		fmt.Fprintf(w, "  name:      %s\n", vm.Name)
	}
	fmt.Fprintf(w, "  guest IP:  %s\n", vm.Network.GuestIP)
	for _, p := range vm.Network.Ports {
		fmt.Fprintf(w, "  published: 127.0.0.1:%d -> %d/%s\n", p.Host, p.Guest, p.Protocol)
	}
	if vm.HTTPPort != 0 {
		fmt.Fprintf(w, "  URL:       %s\n", url)
		fmt.Fprintf(w, "  try:       curl -k --resolve %s %s\n", resolve, url)
	}
	fmt.Fprintf(w, "  logs:      mergen logs %s\n", label)
	fmt.Fprintf(w, "  remove:    mergen vm rm -f %s\n", label)
}
