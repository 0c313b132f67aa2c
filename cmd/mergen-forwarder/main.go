// Command mergen-forwarder terminates TLS for *.<domain> and relays each
// connection to the HTTP port inside the VM the SNI label names. It is
// configured with FWD_* environment variables (see docs/forwarder.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/forwarder"
	"github.com/mergenhq/mergen/internal/logging"
	"github.com/mergenhq/mergen/internal/version"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("mergen-forwarder", version.Version)
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mergen-forwarder:", err)
		os.Exit(1)
	}
}

// gcPercent is the collector's target when GOGC is not set: the heap may
// grow to five times what is live before a collection. The forwarder's
// live heap is small (buffers and TLS state for open connections) while
// every new TLS connection allocates tens of kilobytes, so at the default
// of 100 a busy forwarder collects dozens of times a second, each cycle
// waking threads for its workers and its stop-the-world phases. Measured
// with bench/forwarder.sh's setup: new connections/s up by about a tenth.
const gcPercent = 400

func run() error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	cfg, err := config.LoadForwarder()
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	log, err := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat, term.IsTerminal(int(os.Stderr.Fd())))
	if err != nil {
		return fmt.Errorf("FWD_LOG_LEVEL/FWD_LOG_FORMAT: %w", err)
	}
	srv, err := forwarder.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := srv.Resolver().Refresh(ctx); err != nil {
		// Not fatal: the config root may appear later.
		log.Warn("initial VM scan failed", "err", err)
	}

	ln, err := net.Listen("tcp", cfg.HTTPSAddr)
	if err != nil {
		return fmt.Errorf("listen FWD_HTTPS_ADDR=%s: %w", cfg.HTTPSAddr, err)
	}
	if cfg.MetricsAddr != "" {
		mln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen FWD_METRICS_ADDR=%s: %w", cfg.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", srv.MetricsHandler())
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := ms.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener stopped", "err", err)
			}
		}()
		defer ms.Close()
		log.Info("metrics listening", "addr", mln.Addr().String())
	}
	log.Info("forwarder listening", "addr", ln.Addr().String(), "domain", srv.Domain().Name,
		"configRoot", cfg.ConfigRoot, "netnsRoot", cfg.NetnsRoot, "vms", srv.Resolver().Size(), "version", version.Version)
	err = srv.Serve(ctx, ln)
	log.Info("forwarder stopped")
	return err
}
