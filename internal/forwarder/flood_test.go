package forwarder

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
)

// Hostile clients against the real forwarder: they cost it bounded memory
// and leave other clients served. Memory is the process's own (the
// forwarder runs in the test process): the live heap after a collection
// and VmRSS, printed before and after; the bounds asserted are generous
// multiples of what the caps allow, far below what the floods would queue
// without them.

// memSample is the live heap after a full collection and the resident
// set size in kB.
func memSample(t *testing.T) (heap uint64, rssKB int64) {
	t.Helper()
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rssKB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return ms.HeapAlloc, rssKB
}

// heapGrowthLimit bounds what one flood may add to the live heap: the
// queue cap is 64 KiB per connection, a flood without it queues megabytes.
const heapGrowthLimit = 4 << 20

// dialStingy connects from local (a loopback address; empty: any) with
// tiny socket buffers, so that what the client does not read stays with
// the forwarder instead of in the kernel: a receive buffer of a few
// kilobytes (set before connect, so the window is that small from the
// start) and a small send buffer.
func dialStingy(addr, local string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096); serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 32<<10)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	return d.Dial("tcp", addr)
}

func fetch(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(body), err
}

// serveMeanwhile fetches url with c over and over until stop is called,
// which returns how many answers came and the first failure.
func serveMeanwhile(c *http.Client, url, want string) (stop func() (int, error)) {
	quit := make(chan struct{})
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		for {
			select {
			case <-quit:
				done <- r
				return
			default:
			}
			body, err := fetch(c, url)
			if err == nil && body != want {
				err = fmt.Errorf("body %q, want %q", body, want)
			}
			if err != nil {
				r.err = err
				done <- r
				return
			}
			r.n++
		}
	}()
	return func() (int, error) {
		close(quit)
		r := <-done
		return r.n, r.err
	}
}

// The KeyUpdate records of the test's writer are real: a request line
// sent one byte at a time, each byte after sixteen KeyUpdates that ask
// for an answer (several hundred in all, each changing the keys), reaches
// the backend intact.
func TestRecordWriterKeyUpdatesAreAccepted(t *testing.T) {
	root := t.TempDir()
	lines := make(chan string, 1)
	port := tcpBackend(t, hostNS, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		lines <- line
	})
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "check"}})
	f := startForwarder(t, root, nil)

	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	w, err := dialRecordWriter(conn, "check.vm.test", f.pool)
	if err != nil {
		t.Fatal(err)
	}
	const request = "GET /after-key-updates HTTP/1.1\r\n"
	var buf []byte
	for i := range len(request) {
		if buf, err = w.keyUpdates(buf, request[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Write(buf); err != nil {
		t.Fatal(err)
	}
	if line := <-lines; line != request {
		t.Fatalf("backend read %q after %d key updates; want the request line (the forwarder refused the records?)", line, len(request)*maxKeyUpdatesInARow)
	}
}

// A TLS 1.3 client that asks for a KeyUpdate answer in every record and
// never reads: the forwarder queues a few of the answers, then stops
// reading that client (its writes block), and closes it after the idle
// timeout. Its heap does not grow with the flood, and another client is
// served all along.
func TestForwarderKeyUpdateFlood(t *testing.T) {
	root := t.TempDir()
	sink := tcpBackend(t, hostNS, func(c net.Conn) { io.Copy(io.Discard, c) })
	writeMeta(t, root, store.Meta{ID: idC, GuestIP: "127.0.0.1", HTTPPort: sink, Tags: map[string]string{"app": "sink"}})
	port := vmBackend(t, hostNS, "ok", nil)
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "ok"}})
	f := startForwarder(t, root, func(c *config.Forwarder) { c.IdleTimeout = 5 * time.Second })

	heap0, rss0 := memSample(t)
	stopOther := serveMeanwhile(f.client(), "https://ok.vm.test/other", "vm=ok path=/other")

	conn, err := dialStingy(f.addr, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	w, err := dialRecordWriter(conn, "sink.vm.test", f.pool)
	if err != nil {
		t.Fatal(err)
	}
	// Sixteen KeyUpdates asking for an answer, a byte of data for the
	// backend, again and again: at most maxUpdates (8 MB of answers
	// queued if nothing stopped it). A write that makes no progress for a
	// second means the forwarder stopped reading.
	const maxUpdates, cycles = 300_000, 4
	sent, blocked := 0, false
	var buf []byte
	for sent < maxUpdates && !blocked {
		buf = buf[:0]
		for range cycles {
			if buf, err = w.keyUpdates(buf, 'x'); err != nil {
				t.Fatal(err)
			}
		}
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := conn.Write(buf)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			blocked = true
		case err != nil:
			t.Fatalf("flood write after %d key updates: %v", sent, err)
		}
		sent += n * cycles * maxKeyUpdatesInARow / len(buf)
	}
	heap1, rss1 := memSample(t)
	active := f.metric(t, "mergen_forwarder_connections_active")
	t.Logf("KeyUpdate flood: %d key updates sent, each asking for an answer; writes blocked: %v; live heap %d KiB -> %d KiB, VmRSS %d kB -> %d kB",
		sent, blocked, heap0>>10, heap1>>10, rss0, rss1)

	if active < 1 {
		t.Fatal("the flooding client was closed before the measurement")
	}
	if heap1 > heap0 && heap1-heap0 > heapGrowthLimit {
		t.Errorf("live heap grew by %d KiB during the flood; want under %d KiB", (heap1-heap0)>>10, heapGrowthLimit>>10)
	}
	if !blocked {
		t.Errorf("the forwarder read all %d key updates of a client that reads none of the answers", sent)
	}
	if n := f.metric(t, "mergen_forwarder_client_reads_paused_total"); n < 1 {
		t.Errorf("client_reads_paused_total = %v; want the pause counted", n)
	}
	n, err := stopOther()
	if err != nil || n == 0 {
		t.Errorf("other client during the flood: %d answers, then %v", n, err)
	}
	t.Logf("other client: %d requests served during the flood", n)

	// Nothing moves on the flooding connection any more: the idle timeout
	// ends it.
	testenv.Eventually(t, 20*time.Second, "the idle timeout to close the flooding client", func() bool {
		return f.metric(t, `mergen_forwarder_errors_total{kind="idle_timeout"}`) == 1
	})
	if body, err := fetch(f.client(), "https://ok.vm.test/after"); err != nil || body != "vm=ok path=/after" {
		t.Errorf("after the flood: %q, %v", body, err)
	}
}

// A backend that streams without end to a client that reads nothing:
// the forwarder stops reading the backend once the client's queue is
// full (the backend's writes block), holds a bounded amount, and closes
// the pair after the idle timeout.
func TestForwarderBackendFloodToIdleClient(t *testing.T) {
	root := t.TempDir()
	blocked := make(chan int64, 1)
	port := tcpBackend(t, hostNS, func(c net.Conn) {
		chunk := make([]byte, 32<<10)
		var total int64
		for {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			n, err := c.Write(chunk)
			total += int64(n)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				select {
				case blocked <- total:
				default:
				}
				continue
			}
			if err != nil || total > 1<<30 {
				return
			}
		}
	})
	writeMeta(t, root, store.Meta{ID: idA, GuestIP: "127.0.0.1", HTTPPort: port, Tags: map[string]string{"app": "stream"}})
	okPort := vmBackend(t, hostNS, "ok", nil)
	writeMeta(t, root, store.Meta{ID: idC, GuestIP: "127.0.0.1", HTTPPort: okPort, Tags: map[string]string{"app": "ok"}})
	f := startForwarder(t, root, func(c *config.Forwarder) { c.IdleTimeout = 3 * time.Second })

	heap0, rss0 := memSample(t)
	conn, err := dialStingy(f.addr, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := tls.Client(conn, &tls.Config{ServerName: "stream.vm.test", RootCAs: f.pool})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	var total int64
	select {
	case total = <-blocked:
	case <-time.After(30 * time.Second):
		t.Fatal("the backend's writes never blocked: the forwarder keeps reading for a client that reads nothing")
	}
	heap1, rss1 := memSample(t)
	t.Logf("backend flood: backend wrote %d KiB before blocking; live heap %d KiB -> %d KiB, VmRSS %d kB -> %d kB",
		total>>10, heap0>>10, heap1>>10, rss0, rss1)
	if heap1 > heap0 && heap1-heap0 > heapGrowthLimit {
		t.Errorf("live heap grew by %d KiB; want under %d KiB", (heap1-heap0)>>10, heapGrowthLimit>>10)
	}
	if body, err := fetch(f.client(), "https://ok.vm.test/x"); err != nil || body != "vm=ok path=/x" {
		t.Errorf("other client during the flood: %q, %v", body, err)
	}
	testenv.Eventually(t, 20*time.Second, "the idle timeout to close the stalled pair", func() bool {
		return f.metric(t, `mergen_forwarder_errors_total{kind="idle_timeout"}`) == 1
	})
}
