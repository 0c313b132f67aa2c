package supervisor

import (
	"testing"
	"time"
)

func TestParseRestart(t *testing.T) {
	for in, want := range map[string]string{"": "no", "no": "no", "always": "always", "on-failure": "on-failure", "on-failure:3": "on-failure:3"} {
		p, err := ParseRestart(in)
		if err != nil || p.String() != want {
			t.Errorf("ParseRestart(%q) = %q, %v; want %q", in, p, err, want)
		}
	}
	for _, in := range []string{"yes", "on-failure:", "on-failure:0", "on-failure:-1", "on-failure:03", "always:2", "on-failure:1001", "No"} {
		if _, err := ParseRestart(in); err == nil {
			t.Errorf("ParseRestart(%q) succeeded, want an error", in)
		}
	}
}

func TestRestartDecisionAndBackoff(t *testing.T) {
	p, _ := ParseRestart("on-failure:2")
	if !p.restarts("exit-code", 1) || p.restarts("exit-code", 2) || p.restarts("success", 0) {
		t.Error("on-failure:2 must restart a failure twice and never a clean exit")
	}
	if a, _ := ParseRestart("always"); !a.restarts("success", 100) {
		t.Error("always must restart a clean exit")
	}
	if n, _ := ParseRestart("no"); n.restarts("exit-code", 0) {
		t.Error("no must never restart")
	}
	for attempt, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		if got := restartDelay(time.Second, attempt); got != want {
			t.Errorf("restartDelay(%d) = %v, want %v", attempt, got, want)
		}
	}
	if got := restartDelay(time.Second, 30); got != RestartDelayMax {
		t.Errorf("restartDelay(time.Second, 30) = %v, want the cap %v", got, RestartDelayMax)
	}
}

// Only a bounded on-failure gives up, and only on a failure after its last
// restart; systemd's NRestarts then counts one refused restart too many.
func TestRestartGivesUp(t *testing.T) {
	p, _ := ParseRestart("on-failure:2")
	if p.givesUp("exit-code", 1) || !p.givesUp("exit-code", 2) || p.givesUp("success", 2) {
		t.Error("on-failure:2 gives up on the failure after its second restart, and never on a clean exit")
	}
	for _, s := range []string{"on-failure", "always", "no"} {
		if q, _ := ParseRestart(s); q.givesUp("exit-code", 1000) {
			t.Errorf("%s gave up", s)
		}
	}
	limit := map[string]any{"StartLimitBurst": uint32(3), "StartLimitIntervalUSec": uint64(300e6)}
	for _, c := range []struct {
		active string
		n      uint32
		props  map[string]any
		made   int
		gaveUp bool
	}{
		{"failed", 3, limit, 2, true},      // on-failure:2: the third restart was refused
		{"failed", 1, limit, 1, false},     // failed during a stop, say: no refusal
		{"activating", 2, limit, 2, false}, // between restarts
		{"failed", 3, map[string]any{"StartLimitBurst": uint32(3), "StartLimitIntervalUSec": uint64(0)}, 3, false}, // no start limit
		{"failed", 7, nil, 7, false},
	} {
		if made, gaveUp := restartsMade(c.active, c.n, c.props); made != c.made || gaveUp != c.gaveUp {
			t.Errorf("restartsMade(%s, %d, %v) = %d, %v; want %d, %v", c.active, c.n, c.props, made, gaveUp, c.made, c.gaveUp)
		}
	}
}
