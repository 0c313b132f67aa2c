package forwarder

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
)

// clientFrom is f.client() with connections made from a given loopback
// address.
func (f *fixture) clientFrom(local string) *http.Client {
	c := f.client()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", f.addr)
	}
	return c
}

// refusedByForwarder dials from local and starts a handshake; it reports
// whether the forwarder closed the connection without answering (end of
// file or reset), which is how a connection over a cap is refused. An
// admitted connection completes the handshake.
func refusedByForwarder(addr, local string) (bool, error) {
	c, err := dialStingy(addr, local)
	if errors.Is(err, syscall.ECONNRESET) {
		return true, nil // the reset came before connect returned
	}
	if err != nil {
		return false, err
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{ServerName: "ok.vm.test", InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	switch err := tc.Handshake(); {
	case err == nil:
		return false, nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true, nil
	default:
		return false, err
	}
}

// A connection flood from one address beyond FWD_MAX_CONNS_PER_IP: every
// extra connection is refused at accept and counted, the log says so at a
// bounded rate, the admitted connections keep working and a client from
// another loopback address is served all along. Past FWD_MAX_CONNS every
// address is refused, until a connection closes.
func TestForwarderConnectionCaps(t *testing.T) {
	root := t.TempDir()
	port := vmBackend(t, hostNS, "ok", nil)
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "ok"}})
	var logs testenv.Log
	const perIP, global, flood = 16, 24, 1000
	f := startForwarderLog(t, root, slogText(&logs), func(c *config.Forwarder) {
		c.MaxConnsPerIP, c.MaxConns = perIP, global
		c.HandshakeTimeout = time.Minute // held connections stay in the handshake
	})
	const refusedLog = `msg="connections refused"`
	active := func() float64 { return f.metric(t, "mergen_forwarder_connections_active") }

	// perIP connections from 127.0.0.1: one serves requests, the rest sit
	// in the handshake.
	first, err := tls.Dial("tcp", f.addr, &tls.Config{ServerName: "ok.vm.test", RootCAs: f.pool})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	first.SetDeadline(time.Now().Add(60 * time.Second))
	firstR := bufio.NewReader(first)
	keepAliveGet := func(path string) {
		t.Helper()
		fmt.Fprintf(first, "GET %s HTTP/1.1\r\nHost: ok.vm.test\r\n\r\n", path)
		resp, err := http.ReadResponse(firstR, nil)
		if err != nil {
			t.Fatalf("admitted connection: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "vm=ok path="+path {
			t.Fatalf("admitted connection: %q", body)
		}
	}
	keepAliveGet("/first")
	var held []net.Conn
	for range perIP - 1 {
		c, err := dialStingy(f.addr, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	testenv.Eventually(t, 10*time.Second, "the held connections to be admitted", func() bool { return active() == perIP })

	heap0, rss0 := memSample(t)
	stopOther := serveMeanwhile(f.clientFrom("127.0.0.2"), "https://ok.vm.test/other", "vm=ok path=/other")
	start := time.Now()
	const workers = 4
	var wg sync.WaitGroup
	refusedSeen := make([]int, workers)
	errs := make(chan error, workers)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range flood / workers {
				refused, err := refusedByForwarder(f.addr, "127.0.0.1")
				if err != nil {
					errs <- err
					return
				}
				if refused {
					refusedSeen[i]++
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("flood: %v", err)
	}
	n, err := stopOther()
	heap1, rss1 := memSample(t)
	total := 0
	for _, r := range refusedSeen {
		total += r
	}
	t.Logf("connection flood: %d connections from 127.0.0.1 over a cap of %d, %d refused; live heap %d KiB -> %d KiB, VmRSS %d kB -> %d kB; 127.0.0.2 served %d requests meanwhile",
		flood, perIP, total, heap0>>10, heap1>>10, rss0, rss1, n)
	if total != flood {
		t.Errorf("%d of %d connections over the per-address cap were refused", total, flood)
	}
	if got := f.metric(t, `mergen_forwarder_refused_total{reason="max_conns_per_ip"}`); got != flood {
		t.Errorf(`refused_total{reason="max_conns_per_ip"} = %v; want %d`, got, flood)
	}
	if err != nil || n == 0 {
		t.Errorf("client from 127.0.0.2 during the flood: %d answers, then %v", n, err)
	}
	if heap1 > heap0 && heap1-heap0 > heapGrowthLimit {
		t.Errorf("live heap grew by %d KiB during the flood; want under %d KiB", (heap1-heap0)>>10, heapGrowthLimit>>10)
	}
	keepAliveGet("/still-served")
	seconds := int(time.Since(start)/time.Second) + 1
	if lines := strings.Count(logs.String(), refusedLog); lines < 1 || lines > seconds {
		t.Errorf("%d log lines for %d refusals in under %d s; want between 1 and one a second", lines, flood, seconds)
	}

	// The global cap: fill it from 127.0.0.2, then every address is refused.
	testenv.Eventually(t, 10*time.Second, "the other client's connections to close", func() bool { return active() == perIP })
	for range global - perIP {
		c, err := dialStingy(f.addr, "127.0.0.2")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	testenv.Eventually(t, 10*time.Second, "the forwarder to hold its maximum", func() bool { return active() == global })
	for _, local := range []string{"127.0.0.3", "127.0.0.2", "127.0.0.1"} {
		if refused, err := refusedByForwarder(f.addr, local); err != nil || !refused {
			t.Errorf("connection from %s at the global cap: refused %v, %v", local, refused, err)
		}
	}
	if got := f.metric(t, `mergen_forwarder_refused_total{reason="max_conns"}`); got != 3 {
		t.Errorf(`refused_total{reason="max_conns"} = %v; want 3`, got)
	}
	// One connection ends: a new client is served again.
	held[0].Close()
	testenv.Eventually(t, 10*time.Second, "the closed connection to be released", func() bool { return active() == global-1 })
	if body, err := fetch(f.clientFrom("127.0.0.3"), "https://ok.vm.test/freed"); err != nil || body != "vm=ok path=/freed" {
		t.Errorf("after a connection closed: %q, %v", body, err)
	}
}

// FWD_MAX_CONN_SECONDS ends a connection that is never idle: a client
// that keeps talking to an echo backend is closed once its time is up,
// and the end is counted.
func TestForwarderMaxConnDuration(t *testing.T) {
	root := t.TempDir()
	port := tcpBackend(t, hostNS, func(c net.Conn) { io.Copy(c, c) })
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "echo"}})
	f := startForwarder(t, root, func(c *config.Forwarder) {
		c.IdleTimeout = time.Minute
		c.MaxConnDuration = time.Second
	})
	conn, err := tls.Dial("tcp", f.addr, &tls.Config{ServerName: "echo.vm.test", RootCAs: f.pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	buf := make([]byte, 4)
	exchanges := 0
	for {
		if _, err = conn.Write([]byte("ping")); err == nil {
			_, err = io.ReadFull(conn, buf)
		}
		if err != nil {
			break
		}
		exchanges++
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection past FWD_MAX_CONN_SECONDS is still open after %v", time.Since(start))
	}
	t.Logf("closed after %d exchanges in %v: %v", exchanges, time.Since(start).Round(time.Millisecond), err)
	testenv.Eventually(t, 5*time.Second, "the end to be counted", func() bool {
		return f.metric(t, `mergen_forwarder_errors_total{kind="total_timeout"}`) == 1
	})
}
