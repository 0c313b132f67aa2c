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
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/health"
)

// Server is a running forwarder.
type Server struct {
	cfg      config.Forwarder
	domain   Domain
	log      *slog.Logger
	resolver *Resolver
	certs    *certFile
	tlsConf  *tls.Config
	m        *metrics
	dialer   net.Dialer

	bytesUp, bytesDown prometheus.Counter

	// loops relay established pairs (relay.go); next picks one round-robin.
	loops []*loop
	next  atomic.Uint32

	// conns are client connections still in the handshake, resolve or dial
	// phase (on their own goroutine); wg counts every connection until it
	// is closed, whichever side holds it.
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	// open and perIP count the admitted connections until they close, in
	// all and by client address, against cfg.MaxConns and
	// cfg.MaxConnsPerIP (0: no cap; the configuration never gives 0).
	open     int
	perIP    map[netip.Addr]int
	refusals refusalLog
}

// New validates the domain, loads the certificate and prepares the
// resolver; it does not listen.
func New(cfg config.Forwarder, log *slog.Logger) (*Server, error) {
	domain, err := DomainFrom(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := hostNetns(); err != nil {
		return nil, fmt.Errorf("forwarder: open own network namespace: %w", err)
	}
	s := &Server{
		cfg:      cfg,
		domain:   domain,
		log:      log,
		resolver: NewResolver(cfg.ConfigRoot, cfg.NetnsRoot, cfg.LabelTags, cfg.ResolverTTL, log),
		m:        newMetrics(),
		conns:    map[net.Conn]struct{}{},
		perIP:    map[netip.Addr]int{},
		dialer:   net.Dialer{Timeout: cfg.DialTimeout},
	}
	s.certs, err = newCertFile(cfg.CertFile, cfg.KeyFile, log, func(ok bool) {
		s.m.certReloads.WithLabelValues(map[bool]string{true: "ok", false: "failed"}[ok]).Inc()
	})
	if err != nil {
		return nil, err
	}
	s.bytesUp = s.m.bytes.WithLabelValues("to_backend")
	s.bytesDown = s.m.bytes.WithLabelValues("to_client")
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

// Domain is the domain the server takes labels from.
func (s *Server) Domain() Domain { return s.domain }

// Serve accepts connections on ln until ctx is cancelled, then stops
// accepting, lets open connections finish for up to ShutdownTimeout and
// closes the rest. It returns after every connection goroutine has ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.startLoops(); err != nil {
		ln.Close()
		return err
	}
	defer s.stopLoops()
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
		addr := clientAddr(c)
		if reason := s.admit(addr); reason != "" {
			s.refuse(c, addr, reason)
			continue
		}
		s.track(c, true)
		s.wg.Add(1)
		s.m.active.Inc()
		go func() {
			relayed := s.handle(c, addr)
			s.track(c, false)
			if !relayed {
				c.Close()
				s.connDone(addr)
			}
		}()
	}
}

// clientAddr is the address a connection counts against in
// FWD_MAX_CONNS_PER_IP: the client's IP, an IPv4-mapped IPv6 address
// counted as the IPv4 address it carries.
func clientAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// admit counts a new connection from addr, or names the cap it is over.
func (s *Server) admit(addr netip.Addr) (refused string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.cfg.MaxConns > 0 && s.open >= s.cfg.MaxConns:
		return refusedMaxConns
	case s.cfg.MaxConnsPerIP > 0 && s.perIP[addr] >= s.cfg.MaxConnsPerIP:
		return refusedMaxConnsPerIP
	}
	s.open++
	s.perIP[addr]++
	return ""
}

// refuse ends a connection over a cap before any TLS work: it is closed
// with a reset (SO_LINGER 0, so no TIME_WAIT state is kept for it),
// counted, and logged at most once a second with the number refused since
// the previous line.
func (s *Server) refuse(c net.Conn, addr netip.Addr, reason string) {
	s.m.refused.WithLabelValues(reason).Inc()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
	if n := s.refusals.note(time.Now()); n > 0 {
		s.log.Warn("connections refused", "reason", reason, "client", addr.String(), "refused", n,
			"maxConns", s.cfg.MaxConns, "maxConnsPerIP", s.cfg.MaxConnsPerIP)
	}
}

// refusalLog lets one line about refused connections through per second.
type refusalLog struct {
	mu      sync.Mutex
	last    time.Time
	pending int // refused since the last line
}

// note counts a refusal and returns how many to report now: 0 within a
// second of the last line, else every refusal since it.
func (r *refusalLog) note(now time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending++
	if !r.last.IsZero() && now.Sub(r.last) < time.Second {
		return 0
	}
	n := r.pending
	r.last, r.pending = now, 0
	return n
}

// connDone is the end of every admitted connection, wherever it ended.
func (s *Server) connDone(addr netip.Addr) {
	s.mu.Lock()
	s.open--
	if s.perIP[addr]--; s.perIP[addr] <= 0 {
		delete(s.perIP, addr)
	}
	s.mu.Unlock()
	s.m.active.Dec()
	s.wg.Done()
}

// track records connections on their own goroutine so that a shutdown
// past its timeout can close them; relayed ones are the loops' to close.
func (s *Server) track(c net.Conn, add bool) {
	s.mu.Lock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	s.mu.Unlock()
}

func (s *Server) startLoops() error {
	n := max(runtime.GOMAXPROCS(0), 1)
	for range n {
		l, err := newLoop(s.cfg.IdleTimeout, s.cfg.MaxConnDuration)
		if err != nil {
			s.stopLoops()
			return fmt.Errorf("forwarder: start relay loop: %w", err)
		}
		l.shared = n > 1
		s.loops = append(s.loops, l)
		go l.run()
	}
	return nil
}

func (s *Server) stopLoops() {
	for _, l := range s.loops {
		l.stop()
	}
	s.loops = nil
}

func (s *Server) shutdown() error {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	for _, l := range s.loops {
		n += int(l.open.Load())
	}
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
	for _, l := range s.loops {
		n += int(l.open.Load())
		l.closeAll()
	}
	<-done
	s.log.Warn("shutdown timeout reached, closed open connections", "closed", n)
	return nil
}

// handle takes one client connection through the handshake, the label,
// the resolver and the dial, and answers the failures itself. It returns
// true once the connection belongs to a relay loop, which closes it.
func (s *Server) handle(raw net.Conn, addr netip.Addr) (relayed bool) {
	start := time.Now()
	log := s.log.With("client", raw.RemoteAddr().String())

	client := newLoopConn(raw, s.m.paused)
	tc := tls.Server(client, s.tlsConf)
	hctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.m.errors.WithLabelValues(kindHandshake).Inc()
		s.m.conns.WithLabelValues("failed").Inc()
		log.Debug("tls handshake failed", "kind", kindHandshake, "err", err, "duration", time.Since(start))
		return false
	}
	s.m.handshake.Observe(time.Since(start).Seconds())
	sni := tc.ConnectionState().ServerName
	log = log.With("sni", sni)

	label, err := s.domain.Label(sni)
	if err != nil {
		kind := kindLabel
		switch {
		case errors.Is(err, ErrNoServerName):
			kind = kindNoSNI
		case errors.Is(err, ErrOtherDomain):
			kind = kindDomain
		}
		s.reject(tc, log, kind, http.StatusMisdirectedRequest, err.Error()+"\n")
		return false
	}
	log = log.With("label", label)

	t, err := s.resolver.Resolve(context.Background(), label)
	switch {
	case errors.Is(err, ErrNotFound):
		s.reject(tc, log, kindNotFound, http.StatusNotFound, fmt.Sprintf("no VM answers to %q\n", label))
		return false
	case errors.Is(err, ErrAmbiguous):
		s.reject(tc, log, kindAmbiguous, http.StatusConflict, err.Error()+"\n")
		return false
	case err != nil:
		s.reject(tc, log, kindResolver, http.StatusBadGateway, "cannot resolve the VM\n")
		log.Error("resolver failed", "err", err)
		return false
	}
	log = log.With("vm", t.ID)
	if t.Problem != "" {
		s.reject(tc, log, kindNoPort, http.StatusBadGateway, t.Problem+"\n")
		return false
	}

	if s.resolver.Health(t.ID) == health.Starting {
		// Booting: the client is told when to come back rather than that
		// the VM is broken.
		s.rejectWith(tc, log, kindStarting, http.StatusServiceUnavailable, retryAfterStarting,
			fmt.Sprintf("vm %s is starting; try again shortly\n", t.ID))
		return false
	}

	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout)
	dialStart := time.Now()
	backend, err := dialTarget(dctx, &s.dialer, t)
	cancel()
	s.m.dial.Observe(time.Since(dialStart).Seconds())
	if err != nil {
		log.Warn("dial failed", "addr", t.Addr.String(), "netns", t.NetnsPath, "err", err)
		s.reject(tc, log, kindDial, http.StatusBadGateway, fmt.Sprintf("vm %s does not answer on its HTTP port\n", t.ID))
		return false
	}
	log = log.With("addr", t.Addr.String())

	p := &pair{tls: tc, client: client, bfd: -1}
	p.finished = func(up, down int64, end string) {
		s.bytesUp.Add(float64(up))
		s.bytesDown.Add(float64(down))
		s.m.conns.WithLabelValues("proxied").Inc()
		if end == kindIdle || end == kindTotal {
			s.m.errors.WithLabelValues(end).Inc()
		}
		log.Info("connection closed", "bytesIn", up, "bytesOut", down, "duration", time.Since(start), "end", end)
		s.connDone(addr)
	}
	if err := s.handOff(p, raw, backend); err != nil {
		backend.Close()
		s.m.conns.WithLabelValues("failed").Inc()
		log.Error("cannot relay the connection", "err", err)
		return false
	}
	return true
}

// handOff moves the client and backend sockets out of Go's poller and
// into a relay loop.
func (s *Server) handOff(p *pair, raw, backend net.Conn) error {
	bfd, err := detach(backend)
	if err != nil {
		return fmt.Errorf("detach backend: %w", err)
	}
	cfd, err := detach(raw)
	if err != nil {
		unix.Close(bfd)
		return fmt.Errorf("detach client: %w", err)
	}
	p.bfd, p.client.fd = bfd, cfd
	l := s.loops[s.next.Add(1)%uint32(len(s.loops))]
	if err := l.add(p); err != nil {
		unix.Close(bfd)
		unix.Close(cfd)
		return err
	}
	return nil
}

// reject answers a failure over the established TLS session with a short
// HTTP/1.1 response. It first reads what the client sent (bounded in size
// and time) so that closing does not reset the connection under the
// response, then half-closes.
func (s *Server) reject(tc *tls.Conn, log *slog.Logger, kind string, status int, body string) {
	s.rejectWith(tc, log, kind, status, 0, body)
}

// retryAfterStarting is the Retry-After, in seconds, of the answer for a
// VM that is starting.
const retryAfterStarting = 2

// rejectWith is reject with a Retry-After header of retryAfter seconds
// (none when 0).
func (s *Server) rejectWith(tc *tls.Conn, log *slog.Logger, kind string, status, retryAfter int, body string) {
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
	extra := ""
	if retryAfter > 0 {
		extra = fmt.Sprintf("Retry-After: %d\r\n", retryAfter)
	}
	resp := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(body), extra, body)
	io.WriteString(tc, resp)
	tc.CloseWrite()
}
