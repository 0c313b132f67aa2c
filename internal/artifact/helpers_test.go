package artifact

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// cutProxy forwards loopback TCP to target and, once budget bytes of
// responses have passed, drops every connection and refuses new ones: a
// download interrupted for good in the middle, whatever the timing.
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
			go io.Copy(out, in)
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := out.Read(buf)
					if n > 0 {
						if left.Add(-int64(n)) < 0 {
							cut()
							return
						}
						in.Write(buf[:n])
					}
					if err != nil {
						in.Close()
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}
