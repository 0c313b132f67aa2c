package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/testenv"
)

// A watcher that never reads its stream costs the daemon one batch of
// events, not the stream: once its socket buffers are full, the write
// waits out its deadline and the watcher is dropped, with the reason in
// the daemon's log; the connection is closed.
func TestAnEventsWatcherThatNeverReadsIsDropped(t *testing.T) {
	defer api.SetEventsWriteTimeout(300 * time.Millisecond)()
	h := newHost(t, nil)
	logged := &testenv.Log{}
	log := slog.New(slog.NewTextHandler(logged, nil))
	srv := httptest.NewServer(api.New(h.mgr, log, nil, nil))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go h.mgr.Run(ctx)

	// A client with a small receive buffer that reads only the headers.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}}
	conn, err := d.DialContext(ctx, "tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/events HTTP/1.1\r\nHost: mergen\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 512), nil)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("subscribe: %v %v", resp, err)
	}

	// Far more than any socket buffers: ~7 MiB of events from a stage.
	j := events.NewJournal(h.cfg.Layout().Events())
	msg := strings.Repeat("m", 2000)
	for i := range 3500 {
		if _, err := j.Append(ctx, events.Event{Type: events.Failed, VM: fmt.Sprintf("vm-%d", i), Source: events.SourceLifecycle, Message: msg}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, "the stalled watcher to be dropped", func() bool {
		s := logged.String()
		return strings.Contains(s, "events watcher dropped: it did not read its stream") || strings.Contains(s, "fell behind the journal")
	})
	// Its connection ends: reading what is left reaches the end.
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the dropped watcher's connection did not end: %v", err)
	}
}
