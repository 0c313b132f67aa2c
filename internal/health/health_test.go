package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
)

// The state machine: starting until a check passes; failures within the
// start period do not count, nor those of the extra checks made while
// starting less than an interval apart; Retries counted failures in a row
// make the VM unhealthy; a pass makes it ready again.
func TestStateMachine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := Check{TCP: &TCPCheck{Port: 80}, IntervalSeconds: 10, TimeoutSeconds: 2, Retries: 3, StartPeriodSeconds: 30}
	st := NewState(t0)
	at := func(s int, ok bool) (string, string) {
		return st.Record(c, Result{At: t0.Add(time.Duration(s) * time.Second), OK: ok})
	}
	steps := []struct {
		sec      int
		ok       bool
		want     string
		failures int
	}{
		{1, false, Starting, 0},   // start period
		{29, false, Starting, 0},  // start period
		{30, false, Starting, 1},  // counts
		{31, false, Starting, 1},  // an extra check within the interval
		{40, false, Starting, 2},  // counts
		{45, true, Ready, 0},      // ready
		{55, false, Ready, 1},     // failures count at once when ready
		{65, false, Ready, 2},     //
		{75, false, Unhealthy, 3}, // retries reached
		{85, false, Unhealthy, 4}, //
		{95, true, Ready, 0},      // recovers
	}
	for _, s := range steps {
		_, to := at(s.sec, s.ok)
		if to != s.want || st.Failures != s.failures {
			t.Fatalf("at %ds ok=%v: %s with %d failures, want %s with %d", s.sec, s.ok, to, st.Failures, s.want, s.failures)
		}
	}
	if want := t0.Add(45 * time.Second); !st.ReadyAt.Equal(want) {
		t.Fatalf("ReadyAt = %s, want the first pass %s", st.ReadyAt, want)
	}
	// Every second while starting, every interval after.
	if d := c.Next(NewState(t0)); d != time.Second {
		t.Fatalf("next check while starting in %s, want 1s", d)
	}
	if d := c.Next(st); d != 10*time.Second {
		t.Fatalf("next check when ready in %s, want the interval", d)
	}
	// Without a start period, a VM that never answers is unhealthy after
	// Retries intervals, not Retries seconds.
	c.StartPeriodSeconds = 0
	st = NewState(t0)
	for s := 1; s <= 29; s++ {
		if _, to := at(s, false); to != Starting {
			t.Fatalf("unhealthy after %ds of checks every second; want starting until 3 intervals passed", s)
		}
	}
	if _, to := at(30, false); to != Unhealthy {
		t.Fatalf("after 3 intervals: %s, want unhealthy", to)
	}
	// A restart for being unhealthy starts over and counts.
	r := st.Restarted(t0.Add(time.Minute))
	if r.Status != Starting || r.Failures != 0 || r.Restarts != 1 || r.RestartAttempts != 1 || r.Last != nil {
		t.Fatalf("restarted state: %+v", r)
	}
}

// The health file round-trips; a missing one is ErrNotExist, a bad one an
// error.
func TestStateFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "health.json")
	if _, err := Read(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	st := NewState(time.Now().UTC().Truncate(time.Millisecond))
	if err := Write(p, st); err != nil {
		t.Fatal(err)
	}
	got, err := Read(p)
	if err != nil || got.Status != Starting || !got.StartedAt.Equal(st.StartedAt) {
		t.Fatalf("read back %+v, %v", got, err)
	}
	os.WriteFile(p, []byte(`{"status":"fine"}`), 0o644)
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "unknown status") {
		t.Fatalf("bad status: %v", err)
	}
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := Remove(p); err != nil {
		t.Fatalf("removing a missing file: %v", err)
	}
}

func loopback() Target {
	var d net.Dialer
	return Target{GuestIP: "127.0.0.1", Dial: func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }}
}

// Probes against real listeners on loopback (no root needed).
func TestProbes(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fine") })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	// Answers nothing until the probe gives up and goes away.
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	closed := closedPort(t)

	tg := loopback()
	tg.HTTPPort = port
	tg.Exec = func(ctx context.Context, argv []string, out io.Writer) (int, error) {
		fmt.Fprint(out, strings.Repeat("x", 1000))
		if argv[0] == "true" {
			return 0, nil
		}
		return 3, nil
	}
	for _, tc := range []struct {
		name string
		c    Check
		ok   bool
		out  string
	}{
		{"http 200", Check{HTTP: &HTTPCheck{Path: "/ok"}}, true, ""},
		{"http 302 passes", Check{HTTP: &HTTPCheck{Port: port, Path: "/moved"}}, true, ""},
		{"http 404", Check{HTTP: &HTTPCheck{Path: "/missing"}}, false, "status 404"},
		{"http slow", Check{HTTP: &HTTPCheck{Path: "/slow"}}, false, "no answer within 1s"},
		{"http refused", Check{HTTP: &HTTPCheck{Port: closed, Path: "/"}}, false, "refused"},
		{"tcp open", Check{TCP: &TCPCheck{Port: port}}, true, ""},
		{"tcp refused", Check{TCP: &TCPCheck{Port: closed}}, false, "refused"},
		{"exec 0", Check{Exec: &ExecCheck{Argv: []string{"true"}}}, true, "xxx"},
		{"exec 3", Check{Exec: &ExecCheck{Argv: []string{"false"}}}, false, "exit status 3: xxx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.TimeoutSeconds = 1
			r := Probe(context.Background(), tc.c, tg, time.Now)
			if r.OK != tc.ok || !strings.Contains(r.Output, tc.out) || len(r.Output) > maxOutput {
				t.Fatalf("%+v, want ok=%v with output containing %q (at most %d bytes)", r, tc.ok, tc.out, maxOutput)
			}
		})
	}
	noAgent := loopback()
	if r := Probe(context.Background(), Check{TimeoutSeconds: 1, Exec: &ExecCheck{Argv: []string{"true"}}}, noAgent, time.Now); r.OK || !strings.Contains(r.Output, "guest agent") {
		t.Fatalf("exec without an agent: %+v", r)
	}
}

// Checking a port nothing listens on, many times, leaves nothing behind:
// no goroutine, no open connection.
func TestProbeRefusedIsBounded(t *testing.T) {
	closed := closedPort(t)
	c := Check{TCP: &TCPCheck{Port: closed}, TimeoutSeconds: 1}
	h := Check{HTTP: &HTTPCheck{Port: closed, Path: "/"}, TimeoutSeconds: 1}
	before := runtime.NumGoroutine()
	for i := 0; i < 200; i++ {
		Probe(context.Background(), c, loopback(), time.Now)
		Probe(context.Background(), h, loopback(), time.Now)
	}
	testenv.Eventually(t, 5*time.Second, "the goroutines of 400 refused checks to be gone", func() bool {
		return runtime.NumGoroutine() <= before+2
	})
}

func closedPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return p
}
