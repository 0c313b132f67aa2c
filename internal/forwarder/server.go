package forwarder

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is a running forwarder.
type Server struct {
	cfg      Config
	log      *slog.Logger
	resolver *Resolver
	certs    *certFile
	tlsConf  *tls.Config
	m        *metrics
	dialer   net.Dialer

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// New loads the certificate and prepares the resolver; it does not listen.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	s := &Server{
		cfg:      cfg,
		log:      log,
		resolver: NewResolver(cfg.ConfigRoot, cfg.NetnsRoot, cfg.ResolverTTL, log),
		m:        newMetrics(),
		conns:    map[net.Conn]struct{}{},
		dialer:   net.Dialer{Timeout: cfg.DialTimeout},
	}
	var err error
	s.certs, err = newCertFile(cfg.CertFile, cfg.KeyFile, log, func(ok bool) {
		s.m.certReloads.WithLabelValues(map[bool]string{true: "ok", false: "failed"}[ok]).Inc()
	})
	if err != nil {
		return nil, err
	}
	s.tlsConf = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
		GetCertificate: s.certs.get,
	}
	return s, nil
}

// MetricsHandler serves the Prometheus metrics.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{})
}

// Resolver is the server's label resolver (for warming it up at start).
func (s *Server) Resolver() *Resolver { return s.resolver }

// Serve accepts connections on ln until ctx is cancelled, then stops
// accepting, lets open connections finish for up to ShutdownTimeout and
// closes the rest. It returns after every connection goroutine has ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return s.shutdown()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscallEMFILE) {
				// Out of descriptors or similar: back off instead of spinning.
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				s.log.Error("accept failed, retrying", "err", err, "delay", tempDelay)
				time.Sleep(tempDelay)
				continue
			}
			s.shutdown()
			return fmt.Errorf("forwarder: accept on %s: %w", ln.Addr(), err)
		}
		tempDelay = 0
		s.track(c, true, true)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.track(c, false, true)
			s.handle(c)
		}()
	}
}

// track records open connections (clients and their backends) so that a
// shutdown past its timeout can close them all; the gauge counts clients.
func (s *Server) track(c net.Conn, add, client bool) {
	s.mu.Lock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	s.mu.Unlock()
	if client && add {
		s.m.active.Inc()
	} else if client {
		s.m.active.Dec()
	}
}

func (s *Server) shutdown() error {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	if n > 0 {
		s.log.Info("shutting down, waiting for open connections", "open", n, "timeout", s.cfg.ShutdownTimeout)
	}
	select {
	case <-done:
		return nil
	case <-time.After(s.cfg.ShutdownTimeout):
	}
	s.mu.Lock()
	n = len(s.conns)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
	s.log.Warn("shutdown timeout reached, closed open connections", "closed", n)
	return nil
}

// handle runs one client connection from handshake to close.
func (s *Server) handle(raw net.Conn) {
	start := time.Now()
	log := s.log.With("client", raw.RemoteAddr().String())
	defer raw.Close()

	tc := tls.Server(raw, s.tlsConf)
	hctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.m.errors.WithLabelValues(kindHandshake).Inc()
		s.m.conns.WithLabelValues("failed").Inc()
		log.Debug("tls handshake failed", "kind", kindHandshake, "err", err, "duration", time.Since(start))
		return
	}
	s.m.handshake.Observe(time.Since(start).Seconds())
	sni := tc.ConnectionState().ServerName
	log = log.With("sni", sni)

	label, err := s.cfg.Domain.Label(sni)
	if err != nil {
		kind := kindLabel
		switch {
		case errors.Is(err, ErrNoServerName):
			kind = kindNoSNI
		case errors.Is(err, ErrOtherDomain):
			kind = kindDomain
		}
		s.reject(tc, log, kind, http.StatusMisdirectedRequest, err.Error()+"\n")
		return
	}
	log = log.With("label", label)

	t, err := s.resolver.Resolve(context.Background(), label)
	switch {
	case errors.Is(err, ErrNotFound):
		s.reject(tc, log, kindNotFound, http.StatusNotFound, fmt.Sprintf("no VM answers to %q\n", label))
		return
	case errors.Is(err, ErrAmbiguous):
		s.reject(tc, log, kindAmbiguous, http.StatusConflict, err.Error()+"\n")
		return
	case err != nil:
		s.reject(tc, log, kindResolver, http.StatusBadGateway, "cannot resolve the VM\n")
		log.Error("resolver failed", "err", err)
		return
	}
	log = log.With("vm", t.ID)
	if t.Problem != "" {
		s.reject(tc, log, kindNoPort, http.StatusBadGateway, t.Problem+"\n")
		return
	}

	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout)
	dialStart := time.Now()
	backend, err := dialTarget(dctx, &s.dialer, t)
	cancel()
	s.m.dial.Observe(time.Since(dialStart).Seconds())
	if err != nil {
		log.Warn("dial failed", "addr", t.Addr.String(), "netns", t.NetnsPath, "err", err)
		s.reject(tc, log, kindDial, http.StatusBadGateway, fmt.Sprintf("vm %s does not answer on its HTTP port\n", t.ID))
		return
	}
	s.track(backend, true, false)
	defer s.track(backend, false, false)
	defer backend.Close()

	up, down, reason := s.relay(tc, backend)
	s.m.bytes.WithLabelValues("to_backend").Add(float64(up))
	s.m.bytes.WithLabelValues("to_client").Add(float64(down))
	s.m.conns.WithLabelValues("proxied").Inc()
	if reason != "" {
		s.m.errors.WithLabelValues(reason).Inc()
	}
	log.Info("connection closed", "addr", t.Addr.String(), "bytesIn", up, "bytesOut", down,
		"duration", time.Since(start), "end", cmp(reason, "eof"))
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// reject answers a failure over the established TLS session with a short
// HTTP/1.1 response. It first reads what the client sent (bounded in size
// and time) so that closing does not reset the connection under the
// response, then half-closes.
func (s *Server) reject(tc *tls.Conn, log *slog.Logger, kind string, status int, body string) {
	s.m.errors.WithLabelValues(kind).Inc()
	s.m.conns.WithLabelValues("rejected").Inc()
	log.Info("connection rejected", "kind", kind, "status", status, "reason", body[:len(body)-1])

	deadline := time.Now().Add(min(s.cfg.HandshakeTimeout, 2*time.Second))
	tc.SetDeadline(deadline)
	br := bufio.NewReaderSize(io.LimitReader(tc, 16<<10), 4096)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil || len(line) <= 2 { // error, or the empty line ending the headers
			break
		}
	}
	resp := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
	io.WriteString(tc, resp)
	tc.CloseWrite()
}

// relay copies both ways until both sides are done, with half-close: when
// one side finishes sending, the other side's write half is shut so it
// sees EOF and can still answer. The idle timer fires when no byte moved
// in either direction for IdleTimeout; the total timer caps the
// connection's life. Either closes both connections.
func (s *Server) relay(client *tls.Conn, backend net.Conn) (up, down int64, reason string) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var why atomic.Value
	closeBoth := func(r string) {
		why.CompareAndSwap(nil, r)
		client.Close()
		backend.Close()
	}
	idle := s.cfg.IdleTimeout
	var idleTimer *time.Timer
	idleTimer = time.AfterFunc(idle, func() {
		quiet := time.Duration(time.Now().UnixNano() - last.Load())
		if quiet >= idle {
			closeBoth(kindIdle)
			return
		}
		idleTimer.Reset(idle - quiet)
	})
	defer idleTimer.Stop()
	if s.cfg.MaxConnDuration > 0 {
		total := time.AfterFunc(s.cfg.MaxConnDuration, func() { closeBoth(kindTotal) })
		defer total.Stop()
	}

	done := make(chan int64, 1)
	go func() {
		n := copyActive(backend, client, &last)
		if cw, ok := backend.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		done <- n
	}()
	down = copyActive(client, backend, &last)
	client.CloseWrite()
	up = <-done
	if r, ok := why.Load().(string); ok {
		reason = r
	}
	return up, down, reason
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyActive copies src to dst, recording the time of each transfer.
func copyActive(dst io.Writer, src io.Reader, last *atomic.Int64) int64 {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n
			}
		}
		if rerr != nil {
			return n
		}
	}
}
