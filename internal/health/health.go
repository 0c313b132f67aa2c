// Package health is a VM's health check: what is checked (Check, part of
// the VM record), what the checks found (State, kept in the VM's health
// file so that it survives the daemon and the forwarder can read it), the
// state machine between them (State.Record), and the probes themselves.
//
// A VM with a check is starting after every start, ready once a check
// passed, and unhealthy after Retries consecutive failures; failures within
// the start period after a start do not count. A VM without a check has no
// health state at all.
//
// The package reaches a guest only inside the VM's network namespace, the
// way the forwarder does; exec checks go through a function the caller
// gives (the guest agent's client), so the package links none of it.
package health

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

// Statuses of a VM with a health check.
const (
	Starting  = "starting"
	Ready     = "ready"
	Unhealthy = "unhealthy"
)

// Defaults and bounds of a check's timing, in seconds (Retries: count).
const (
	DefaultInterval    = 10
	DefaultTimeout     = 2
	DefaultRetries     = 3
	MaxInterval        = 3600
	MaxTimeout         = 300
	MaxRetries         = 100
	MaxStartPeriod     = 3600
	MaxPath            = 1024
	MaxArgs            = 64
	MaxArgBytes        = 16 << 10 // all of argv together
	maxOutput          = 256      // bytes of a check's output or error kept
	startingInterval   = time.Second
	maxStateFileLength = 64 << 10
)

// Check is a VM's health check as the record keeps it: exactly one of
// HTTP, TCP and Exec, with its timing filled in (see Normalize).
type Check struct {
	HTTP *HTTPCheck `json:"http,omitempty"`
	TCP  *TCPCheck  `json:"tcp,omitempty"`
	Exec *ExecCheck `json:"exec,omitempty"`

	IntervalSeconds    int `json:"intervalSeconds"`
	TimeoutSeconds     int `json:"timeoutSeconds"`
	Retries            int `json:"retries"`
	StartPeriodSeconds int `json:"startPeriodSeconds,omitempty"`
}

// HTTPCheck passes when GET Path on Port answers with a status 200..399.
// Port 0 is the VM's httpPort.
type HTTPCheck struct {
	Port int    `json:"port,omitempty"`
	Path string `json:"path"`
}

// TCPCheck passes when Port accepts a connection.
type TCPCheck struct {
	Port int `json:"port"`
}

// ExecCheck passes when Argv, run in the guest by its agent, exits 0.
type ExecCheck struct {
	Argv []string `json:"argv"`
}

// Kind names the check: http, tcp or exec.
func (c Check) Kind() string {
	switch {
	case c.HTTP != nil:
		return "http"
	case c.TCP != nil:
		return "tcp"
	case c.Exec != nil:
		return "exec"
	}
	return ""
}

func (c Check) interval() time.Duration    { return time.Duration(c.IntervalSeconds) * time.Second }
func (c Check) timeout() time.Duration     { return time.Duration(c.TimeoutSeconds) * time.Second }
func (c Check) startPeriod() time.Duration { return time.Duration(c.StartPeriodSeconds) * time.Second }

// Next is how long to wait before the next check: every interval, but
// every second (at most every interval) while the VM is starting, so that
// it is ready soon after its guest answers. Those extra checks can make it
// ready; their failures count only once per interval (see Record).
func (c Check) Next(st State) time.Duration {
	if st.Status == Starting {
		return min(startingInterval, c.interval())
	}
	return c.interval()
}

// Result is one check's outcome.
type Result struct {
	At         time.Time `json:"at"`
	OK         bool      `json:"ok"`
	DurationMs int64     `json:"durationMs"`
	// Output is the check's error, or for exec checks the command's
	// output, cut to a few hundred bytes.
	Output string `json:"output,omitempty"`
}

// State is a VM's health as the daemon last found it: the VM's health
// file. Restarts and RestartAttempts survive the restarts the daemon makes
// of an unhealthy VM; a start on request begins a new State.
type State struct {
	Status string    `json:"status"`
	Since  time.Time `json:"since"`
	// StartedAt is when the VM's current run was asked for (boot to ready
	// is measured from it); StartPeriod counts from it too.
	StartedAt time.Time `json:"startedAt"`
	// Failures counts the consecutive failed checks that counted.
	Failures int     `json:"failures"`
	Last     *Result `json:"last,omitempty"`
	// MainPID is the VMM's pid of the run the checks are about: another
	// one means the supervisor restarted the VM, which starts again.
	MainPID int `json:"mainPID,omitempty"`
	// Message says what the daemon did or will not do about an unhealthy
	// VM (restarting, restart limit reached).
	Message string `json:"message,omitempty"`
	// Restarts counts the restarts the daemon made of the VM for being
	// unhealthy since it was started on request; RestartAttempts those
	// since the restart policy's reset, and LastRestart the latest.
	Restarts        int       `json:"restarts,omitempty"`
	RestartAttempts int       `json:"restartAttempts,omitempty"`
	LastRestart     time.Time `json:"lastRestart,omitzero"`
	// ReadyAt is when the current run first became ready (zero before).
	ReadyAt time.Time `json:"readyAt,omitzero"`
	// CountedAt is when a failure last counted while starting.
	CountedAt time.Time `json:"countedAt,omitzero"`
}

// NewState is the state of a run asked for at now.
func NewState(now time.Time) State {
	return State{Status: Starting, Since: now, StartedAt: now}
}

// Restarted is the state of the run the daemon started at now in place of
// an unhealthy one: starting again, the restart counted.
func (s State) Restarted(now time.Time) State {
	n := NewState(now)
	n.Restarts, n.RestartAttempts, n.LastRestart = s.Restarts+1, s.RestartAttempts+1, now
	return n
}

// Record applies one check's result taken under c and returns the status
// before and after. A pass makes the VM ready; a failure counts unless the
// VM is starting within its start period (or less than an interval after
// the last failure that counted while starting), and Retries counted
// failures in a row make it unhealthy.
func (s *State) Record(c Check, r Result) (from, to string) {
	from = s.Status
	s.Last = &r
	switch {
	case r.OK:
		s.Failures = 0
		if s.Status != Ready {
			s.Status, s.Since, s.Message = Ready, r.At, ""
			if s.ReadyAt.IsZero() {
				s.ReadyAt = r.At
			}
		}
	case s.Status == Starting && r.At.Sub(s.StartedAt) < c.startPeriod():
		// Booting: not counted.
	case s.Status == Starting && r.At.Sub(cmp.Or(s.CountedAt, s.StartedAt)) < c.interval():
		// One of the extra checks while starting.
	default:
		if s.Status == Starting {
			s.CountedAt = r.At
		}
		s.Failures++
		if s.Failures >= c.Retries && s.Status != Unhealthy {
			s.Status, s.Since = Unhealthy, r.At
		}
	}
	return from, s.Status
}

// Read returns the state in the health file at path; a missing file is
// an error wrapping os.ErrNotExist.
func Read(path string) (State, error) {
	f, err := os.Open(path)
	if err != nil {
		return State{}, err
	}
	defer f.Close()
	var st State
	dec := json.NewDecoder(io.LimitReader(f, maxStateFileLength))
	if err := dec.Decode(&st); err != nil {
		return State{}, fmt.Errorf("health file %s: %w", path, err)
	}
	switch st.Status {
	case Starting, Ready, Unhealthy:
	default:
		return State{}, fmt.Errorf("health file %s: unknown status %q", path, st.Status)
	}
	return st, nil
}

// Write replaces the health file at path atomically.
func Write(path string, st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o644)
}

// Remove deletes the health file at path; a missing one is no error.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// cut bounds s to maxOutput bytes.
func cut(s string) string {
	if len(s) > maxOutput {
		return s[:maxOutput-3] + "..."
	}
	return s
}

// Clone returns a copy of c sharing nothing with it; nil stays nil.
func (c *Check) Clone() *Check {
	if c == nil {
		return nil
	}
	n := *c
	if c.HTTP != nil {
		h := *c.HTTP
		n.HTTP = &h
	}
	if c.TCP != nil {
		t := *c.TCP
		n.TCP = &t
	}
	if c.Exec != nil {
		n.Exec = &ExecCheck{Argv: append([]string(nil), c.Exec.Argv...)}
	}
	return &n
}
