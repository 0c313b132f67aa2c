package health

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Target is where one VM's checks go.
type Target struct {
	// Dial connects to an address of the guest, from inside the VM's
	// network namespace (vmnet.DialInNetns).
	Dial     func(ctx context.Context, addr string) (net.Conn, error)
	GuestIP  string
	HTTPPort int // the VM's httpPort: the port of an http check without one
	// Exec runs argv in the guest, writing its output to out, and returns
	// its exit status; nil when the VM has no guest agent to ask.
	Exec func(ctx context.Context, argv []string, out io.Writer) (int, error)
}

// Probe runs the check once against t, bounded by the check's timeout, and
// says how it went at the time now returns.
func Probe(ctx context.Context, c Check, t Target, now func() time.Time) Result {
	start := now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	var err error
	var output string
	switch {
	case c.HTTP != nil:
		err = probeHTTP(ctx, t, *c.HTTP)
	case c.TCP != nil:
		var conn net.Conn
		if conn, err = t.Dial(ctx, addr(t.GuestIP, c.TCP.Port)); err == nil {
			conn.Close()
		}
	case c.Exec != nil:
		output, err = probeExec(ctx, t, c.Exec.Argv)
	default:
		err = errors.New("no check")
	}
	end := now()
	r := Result{At: end, OK: err == nil, DurationMs: end.Sub(start).Milliseconds(), Output: cut(strings.TrimSpace(output))}
	if err != nil {
		var ne net.Error
		if (ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("no answer within %ds: %w", c.TimeoutSeconds, err)
		}
		msg := err.Error()
		if o := strings.TrimSpace(output); o != "" {
			msg += ": " + o
		}
		r.Output = cut(msg)
	}
	return r
}

func addr(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// probeHTTP sends GET path and reads the status line and headers (never
// the body): 200..399 passes.
func probeHTTP(ctx context.Context, t Target, h HTTPCheck) error {
	port := h.Port
	if port == 0 {
		port = t.HTTPPort
	}
	if port == 0 {
		return errors.New("no port to check: the check gives none and the VM has no httpPort")
	}
	a := addr(t.GuestIP, port)
	conn, err := t.Dial(ctx, a)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	req := "GET " + h.Path + " HTTP/1.1\r\nHost: " + a + "\r\nUser-Agent: mergen-health\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return err
	}
	// The answer is the guest's: its headers are read within a bound, its
	// body not at all.
	resp, err := http.ReadResponse(bufio.NewReaderSize(io.LimitReader(conn, 16<<10), 4096), nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", h.Path, err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: status %d", h.Path, resp.StatusCode)
	}
	return nil
}

// probeExec runs argv in the guest; exit status 0 passes. Its output is
// kept up to a few hundred bytes, the rest read and dropped.
func probeExec(ctx context.Context, t Target, argv []string) (string, error) {
	if t.Exec == nil {
		return "", errors.New("exec checks need the guest agent, and this VM has none to reach")
	}
	out := &capped{max: maxOutput}
	code, err := t.Exec(ctx, argv, out)
	if err != nil {
		return out.String(), err
	}
	if code != 0 {
		return out.String(), fmt.Errorf("exit status %d", code)
	}
	return out.String(), nil
}

// capped keeps the first max bytes written to it and drops the rest.
type capped struct {
	b   []byte
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capped) String() string { return string(c.b) }
