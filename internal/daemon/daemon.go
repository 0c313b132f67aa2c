// Package daemon assembles the mergen daemon from its configuration: logger,
// store, supervisor, manager and HTTP server, with graceful shutdown. Both
// `mergen server` and the legacy `mergend` run it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/auth"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/exepages"
	"github.com/mergenhq/mergen/internal/images"
	"github.com/mergenhq/mergen/internal/logging"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/snapshot"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/version"
)

// Options tune a daemon run beyond the environment.
type Options struct {
	// InstallUnits installs or updates the systemd unit templates at start.
	InstallUnits bool
	// Ready, when set, receives the bound TCP address once both listeners
	// serve (the socket is at the configured MGR_API_SOCKET).
	Ready func(addr string)
}

// Run loads the configuration from the environment and serves until ctx is
// done or SIGINT/SIGTERM arrives.
func Run(ctx context.Context, o Options) error {
	cfg, err := config.Load()
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	tuneRuntime(config.Env())
	log, err := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat, term.IsTerminal(int(os.Stderr.Fd())))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Serve(ctx, cfg, log, o)
}

// tuneRuntime sets what the daemon's process runs with where the operator
// did not (Go's GOGC, GOMAXPROCS): the collector's target, which then
// follows the daemon's load and live heap (gcPolicy), and the number of
// Ps (procs).
func tuneRuntime(getenv config.Source) {
	if !config.GOGCSet(getenv) {
		gcOnce.Do(func() { go followLiveHeap() })
	}
	if !config.GOMAXPROCSSet(getenv) {
		procsOnce.Do(func() { runtime.GOMAXPROCS(procs(runtime.GOMAXPROCS(0))) })
	}
}

var gcOnce, procsOnce sync.Once

// procs is the daemon's number of Ps, given the runtime's own choice (one
// per processor the process may use): twice that, and at least 4. Much of
// a create or delete is spent in blocking file-system calls (a VM's
// fsyncs, mkdir, rename), and a goroutine in one keeps its P until the
// runtime's monitor hands the P on, tens of microseconds to milliseconds
// later; with one P per processor the rest of the daemon waited that long
// to run. In the control-plane benchmark on 2 processors, goroutines
// waited to run p90 1.6 ms, p99 3.7 ms with 2 Ps, and 33 us, 1.3 ms with 4
// (runtime/metrics /sched/latencies:seconds); the built daemon made a few
// percent more creates/s for 1 to 2 MiB more resident (docs/performance.md,
// "The collector's headroom, and Ps for blocking calls"). The processors
// are still the kernel's to share: more Ps only let goroutines run while
// others wait in the kernel.
func procs(runtimeDefault int) int { return max(4, 2*runtimeDefault) }

// The collector's target when GOGC is not set. At rest the heap may grow
// past what is live by a quarter (gcPercent), not Go's default of as much
// again; while the daemon is busy (it allocated busyBytes within a tick),
// by minHeadroom at least, never by more than Go's default, and by a
// quarter again from four times minHeadroom on.
//
// The daemon's live heap is small and grows with the VMs defined (their
// records and list documents, a few KiB each), while the program's own
// pages are most of its resident size; at Go's default the collector's
// headroom would grow as large as all the VMs' data (bash bench/list.sh,
// 1,000 VMs: see docs/performance.md). Unlike a memory limit (GOMEMLIMIT),
// a target grows with the VMs: a host of many more never finds the
// collector running without pause.
//
// A quarter of a small heap is little for a burst, though. With 1,000 VMs
// the live heap is a few MiB and a create allocates some 80 KiB: at 25 a
// burst of 1,000 creates ran 209 collections against 52 at Go's default,
// and managed 876 creates/s against 1,034, while the daemon at rest
// afterwards held 4 to 5 MiB more at Go's default (docs/performance.md,
// "The collector's headroom, and Ps for blocking calls"). So the
// headroom grows while requests come and shrinks again once they stop
// (restAfter), when one collection returns what is no longer needed.
const (
	gcPercent   = 25
	minHeadroom = 8 << 20
	busyBytes   = 1 << 20 // allocated in one gcTick: about a dozen creates
	gcTick      = 100 * time.Millisecond
	restAfter   = 2 * time.Second
)

// gcPolicy decides the collector's target, tick by tick.
type gcPolicy struct {
	lastBusy time.Time // zero: never busy
}

// percent is the target at now for a live heap of live bytes (0: not yet
// measured), allocated the bytes allocated since the last tick.
func (p *gcPolicy) percent(now time.Time, live, allocated uint64) int {
	if allocated >= busyBytes {
		p.lastBusy = now
	}
	if p.lastBusy.IsZero() || now.Sub(p.lastBusy) >= restAfter {
		return gcPercent
	}
	if live == 0 {
		return 100
	}
	return max(gcPercent, min(100, int(minHeadroom*100/live)))
}

// followLiveHeap sets the collector's target every gcTick from the live
// heap and what was allocated since the tick before.
func followLiveHeap() {
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/allocs:bytes"}}
	var (
		policy gcPolicy
		last   uint64
		set    = -1
	)
	for {
		metrics.Read(samples)
		live, allocs := samples[0].Value, samples[1].Value
		if live.Kind() != metrics.KindUint64 || allocs.Kind() != metrics.KindUint64 {
			debug.SetGCPercent(gcPercent)
			return // not this runtime's metrics: the rest target only
		}
		if p := policy.percent(time.Now(), live.Uint64(), allocs.Uint64()-last); p != set {
			debug.SetGCPercent(p)
			if p == gcPercent && set > gcPercent {
				// At rest again: nothing allocates, so no collection
				// would come to shrink the heap to the new target.
				// One now, and what is free goes back to the system.
				debug.FreeOSMemory()
			}
			set = p
		}
		last = allocs.Uint64()
		time.Sleep(gcTick)
	}
}

// Serve runs the daemon with an explicit configuration.
func Serve(ctx context.Context, cfg config.Config, log *slog.Logger, o Options) error {
	var tokens *auth.Tokens
	if cfg.APIAuth == "none" {
		log.Warn("MGR_API_AUTH=none: requests over TCP need no token; anyone who can connect to the address controls this host", "addr", cfg.HTTPAddr)
	} else {
		t, created, err := auth.Open(cfg.APITokenFile)
		if err != nil {
			return fmt.Errorf("API tokens (MGR_API_TOKEN_FILE): %w", err)
		}
		if created {
			log.Info("created the API token file with a new token", "file", cfg.APITokenFile)
		}
		tokens = t
	}

	st, err := store.Open(cfg.Layout())
	if err != nil {
		return err
	}
	swctx, swcancel := context.WithTimeout(ctx, cfg.CommandTimeout)
	err = st.Sweep(swctx)
	swcancel()
	if err != nil {
		log.Warn("sweeping interrupted creates and deletes", "err", err)
	}
	if err := snapshot.New(cfg.Layout()).Sweep(); err != nil {
		log.Warn("sweeping interrupted snapshots", "err", err)
	}
	mctx, cancel := context.WithTimeout(ctx, cfg.CommandTimeout)
	migrated, err := st.Migrate(mctx)
	cancel()
	if len(migrated) > 0 {
		log.Info("VM records rewritten in the current form", "count", len(migrated), "version", store.RecordVersion)
	}
	if err != nil {
		log.Warn("some VM records keep their old form until the next start (still read correctly)", "err", err)
	}

	supOpts := supervisor.OptionsFrom(cfg)
	sup, supErr := supervisor.New(cfg.Supervisor, supOpts)
	if supErr == nil {
		if o.InstallUnits && sup.Name() == "systemd" {
			if err := supervisor.InstallUnits(ctx, supOpts, ""); err != nil {
				return fmt.Errorf("install units: %w", err)
			}
			log.Info("systemd units installed")
		}
		if err := sup.Check(ctx); err != nil {
			log.Warn("service manager not usable: start and stop will answer 503", "supervisor", sup.Name(), "err", err)
		}
	} else {
		log.Warn("no service manager: start and stop will answer 503", "err", supErr)
		sup = nil
	}

	mgr := manager.New(manager.Options{Config: cfg, Store: st, Log: log, Supervisor: sup, SupervisorErr: supErr})
	// The manager's background work (the event stream and the hooks fed
	// from it) ends before the servers shut down, so that event watchers
	// let their connections go.
	mgrCtx, stopMgr := context.WithCancel(ctx)
	mgrDone := make(chan struct{})
	go func() { mgr.Run(mgrCtx); close(mgrDone) }()
	defer func() { stopMgr(); <-mgrDone }()
	// Health checks carry on for the VMs that run; they end with the
	// daemon, and the next one carries on from their files.
	mgr.ResumeHealth(ctx)
	defer mgr.StopHealth()
	health := func() map[string]any {
		h := map[string]any{}
		if sup == nil {
			h["supervisor"] = map[string]any{"available": false, "error": fmt.Sprint(supErr)}
		} else if err := sup.Check(context.Background()); err != nil {
			h["supervisor"] = map[string]any{"name": sup.Name(), "available": false, "error": err.Error()}
		} else {
			h["supervisor"] = map[string]any{"name": sup.Name(), "available": true}
		}
		return h
	}
	lister := func() (any, error) { return images.List(cfg.BaseAssetsDir, cfg.ImagesRoot) }
	handler := api.New(mgr, log, lister, health)

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (MGR_HTTP_ADDR): %w", cfg.HTTPAddr, err)
	}
	sock, err := listenSocket(cfg.APISocket, log)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen on %s (MGR_API_SOCKET): %w", cfg.APISocket, err)
	}
	defer sock.remove()
	tcpDoor := api.FrontDoor{Tokens: tokens, AllowedOrigins: cfg.AllowedOrigins, Listener: "tcp", Log: log}
	unixDoor := api.FrontDoor{AllowedOrigins: cfg.AllowedOrigins, Listener: "unix", Log: log}
	servers := []*http.Server{api.NewServer(tcpDoor.Wrap(handler), log), api.NewServer(unixDoor.Wrap(handler), log)}
	mode := "token"
	if tokens == nil {
		mode = "none"
	}
	log.Info("mergen daemon listening", "addr", ln.Addr().String(), "socket", cfg.APISocket, "auth", mode,
		"version", version.Version, "configRoot", cfg.ConfigRoot, "supervisor", supName(sup))
	errc := make(chan error, 2)
	go func() { errc <- servers[0].Serve(api.Listen(ln, log, "tcp")) }()
	go func() { errc <- servers[1].Serve(api.Listen(sock, log, "unix")) }()
	if o.Ready != nil {
		o.Ready(ln.Addr().String())
	}
	// Start-up is over: the pages of the executable that only it touched
	// (the initialisation of every linked package, the CLI's among them)
	// need not stay resident for the daemon's life. Those the daemon uses
	// come back on first use.
	if kib, err := exepages.Release(); err != nil {
		log.Warn("executable pages used at start stay resident", "err", err)
	} else {
		log.Debug("executable pages used at start released", "kib", kib)
	}
	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	stopMgr()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	shutErrs := make([]error, len(servers))
	for i, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
				shutErrs[i] = err
			}
		}()
	}
	wg.Wait()
	// VMs keep running: they belong to the service manager, not to us.
	return errors.Join(serveErr, errors.Join(shutErrs...))
}

func supName(s supervisor.Supervisor) string {
	if s == nil {
		return "none"
	}
	return s.Name()
}
