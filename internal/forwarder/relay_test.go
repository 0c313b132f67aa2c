package forwarder

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/store"
)

// Many connections at once stream megabytes both ways through the relay
// loops while their clients read slowly at first: every byte arrives, in
// order, on the right connection. A slow reader makes the loop hold back
// the backend (queued ciphertext, paused reads) instead of buffering
// without bound, and the echo backend in turn stops reading, which pushes
// back on the client's upload. Every pair also sees both FINs through
// (the last data and the FIN often arrive under one readiness edge).
func TestRelayStreamsBothWaysUnderBackpressure(t *testing.T) {
	root := t.TempDir()
	// An echo until the client half-closes.
	port := tcpBackend(t, hostNS, func(c net.Conn) { io.Copy(c, c) })
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "echo"}})
	// No idle timeout to rescue a connection the loop forgot: a stall
	// shows as the clients' deadline.
	f := startForwarder(t, root, func(c *config.Forwarder) { c.IdleTimeout = time.Hour })

	const conns, size = 24, 4 << 20
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, size)
			src := rand.NewChaCha8([32]byte{byte(i)})
			src.Read(payload)
			rng := rand.New(src)
			want := sha256.Sum256(payload)

			conn, err := tls.Dial("tcp", f.addr, &tls.Config{ServerName: "echo.vm.test", RootCAs: f.pool})
			if err != nil {
				t.Errorf("conn %d: %v", i, err)
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(60 * time.Second))
			upload := make(chan error, 1)
			go func() {
				// Odd-sized writes, so records and socket writes never line up.
				rest := payload
				for len(rest) > 0 {
					n := min(len(rest), 1+rng.IntN(100<<10))
					if _, err := conn.Write(rest[:n]); err != nil {
						upload <- err
						return
					}
					rest = rest[n:]
				}
				upload <- conn.CloseWrite()
			}()
			time.Sleep(300 * time.Millisecond) // let the queues fill up
			h := sha256.New()
			n, err := io.Copy(h, conn)
			if err != nil {
				t.Errorf("conn %d: read after %d bytes: %v", i, n, err)
				return
			}
			if err := <-upload; err != nil {
				t.Errorf("conn %d: upload: %v", i, err)
			}
			if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
				t.Errorf("conn %d: echoed %d bytes with a different digest; want %d identical bytes", i, n, size)
			}
		}()
	}
	wg.Wait()

	// Every connection was reported closed, with its byte counts.
	deadline := time.Now().Add(5 * time.Second)
	for {
		open := 0
		for _, l := range f.srv.loops {
			open += int(l.open.Load())
		}
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d relayed connections still open after every client finished", open)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rec := httptest.NewRecorder()
	f.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	metrics := rec.Body.String()
	for _, line := range []string{
		`mergen_forwarder_bytes_total{direction="to_backend"} 1.00663296e+08`,
		`mergen_forwarder_bytes_total{direction="to_client"} 1.00663296e+08`,
		`mergen_forwarder_connections_total{result="proxied"} 24`,
		`mergen_forwarder_connections_active 0`,
	} {
		if !strings.Contains(metrics, line) {
			t.Errorf("metrics lack %q", line)
		}
	}
}
