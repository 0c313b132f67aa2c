package artifact

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/progress"
)

// cutProxy forwards loopback TCP to target and, once budget bytes have
// passed (both directions together), drops every connection and refuses new
// ones: a transfer interrupted for good in the middle, whatever the timing.
func cutProxy(t *testing.T, target string, budget int64) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var left atomic.Int64
	left.Store(budget)
	var mu sync.Mutex
	var conns []net.Conn
	var dead atomic.Bool
	cut := func() {
		dead.Store(true)
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}
	t.Cleanup(func() { l.Close(); cut() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			if dead.Load() {
				in.Close()
				continue
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 {
						if left.Add(-int64(n)) < 0 {
							cut()
							return
						}
						dst.Write(buf[:n])
					}
					if err != nil {
						dst.Close()
						return
					}
				}
			}
			go pipe(out, in)
			go pipe(in, out)
		}
	}()
	return l.Addr().String()
}

// watch calls fire once when cond holds for a counter of tr, polling until
// stop is called.
func watch(tr *progress.Tracker, cond func(progress.Stat) bool, fire func()) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			for _, s := range tr.Snapshot() {
				if cond(s) {
					fire()
					return
				}
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return func() { close(done); <-finished }
}

// relay listens on loopback and, for every connection, dials target and
// hands both ends to carry, which forwards the bytes and closes them. It
// returns the listening address; the listener closes with the test.
func relay(t *testing.T, target string, carry func(client, server net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			carry(in, out)
		}
	}()
	return l.Addr().String()
}

// shortProxy forwards loopback TCP to target and closes each connection
// once it has carried perConn bytes from the server: every answer longer
// than that is cut, every time. It returns its address and the number of
// connections cut so far.
func shortProxy(t *testing.T, target string, perConn int64) (string, *atomic.Int64) {
	t.Helper()
	var cuts atomic.Int64
	addr := relay(t, target, func(in, out net.Conn) {
		go func() {
			io.Copy(out, in)
			out.Close()
		}()
		go func() {
			n, _ := io.Copy(in, io.LimitReader(out, perConn))
			if n == perConn {
				cuts.Add(1)
			}
			in.Close()
			out.Close()
		}()
	})
	return addr, &cuts
}
