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
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/images"
	"github.com/mergenhq/mergen/internal/logging"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/version"
)

// Options tune a daemon run beyond the environment.
type Options struct {
	// InstallUnits installs or updates the systemd unit templates at start.
	InstallUnits bool
	// Ready, when set, receives the bound listen address once serving.
	Ready func(addr string)
}

// Run loads the configuration from the environment and serves until ctx is
// done or SIGINT/SIGTERM arrives.
func Run(ctx context.Context, o Options) error {
	cfg, err := config.Load()
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	log, err := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat, term.IsTerminal(int(os.Stderr.Fd())))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Serve(ctx, cfg, log, o)
}

// Serve runs the daemon with an explicit configuration.
func Serve(ctx context.Context, cfg config.Config, log *slog.Logger, o Options) error {
	st, err := store.Open(cfg.Layout())
	if err != nil {
		return err
	}
	if err := st.Sweep(); err != nil {
		log.Warn("sweeping interrupted creates and deletes", "err", err)
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
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	log.Info("mergen daemon listening", "addr", ln.Addr().String(), "version", version.Version,
		"configRoot", cfg.ConfigRoot, "supervisor", supName(sup))
	if o.Ready != nil {
		o.Ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// VMs keep running: they belong to the service manager, not to us.
	return nil
}

func supName(s supervisor.Supervisor) string {
	if s == nil {
		return "none"
	}
	return s.Name()
}
