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
