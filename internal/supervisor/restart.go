package supervisor

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Restart policies of a VM: what its supervisor does when the main process
// (the VMM) ends by itself.
const (
	RestartNo        = "no"         // never restart (the default)
	RestartAlways    = "always"     // restart after any end, clean or not
	RestartOnFailure = "on-failure" // restart after a failure only
)

// Backoff between restarts: the first waits RestartDelayMin, each next one
// twice the last, at most RestartDelayMax. A run that lasted
// RestartResetAfter resets both the delay and, for on-failure:N, the count
// of attempts.
const (
	RestartDelayMin   = time.Second
	RestartDelayMax   = time.Minute
	RestartResetAfter = 5 * time.Minute
)

// RestartPolicy is a VM's parsed restart policy. Max bounds on-failure's
// consecutive restarts; 0 is unbounded.
type RestartPolicy struct {
	Mode string
	Max  int
}

// ParseRestart parses "no", "always", "on-failure" or "on-failure:N"
// (N ≥ 1); "" is "no".
func ParseRestart(s string) (RestartPolicy, error) {
	switch s {
	case "", RestartNo:
		return RestartPolicy{Mode: RestartNo}, nil
	case RestartAlways:
		return RestartPolicy{Mode: RestartAlways}, nil
	case RestartOnFailure:
		return RestartPolicy{Mode: RestartOnFailure}, nil
	}
	if n, ok := strings.CutPrefix(s, RestartOnFailure+":"); ok {
		max, err := strconv.Atoi(n)
		if err != nil || max < 1 || max > 1000 || strconv.Itoa(max) != n {
			return RestartPolicy{}, fmt.Errorf("%q: the count after on-failure: must be a number 1..1000", s)
		}
		return RestartPolicy{Mode: RestartOnFailure, Max: max}, nil
	}
	return RestartPolicy{}, fmt.Errorf("%q is not a restart policy (want no, always, on-failure or on-failure:N)", s)
}

// String is the policy in the form ParseRestart reads.
func (p RestartPolicy) String() string {
	if p.Mode == "" {
		return RestartNo
	}
	if p.Mode == RestartOnFailure && p.Max > 0 {
		return RestartOnFailure + ":" + strconv.Itoa(p.Max)
	}
	return p.Mode
}

// restarts says whether a main process that ended with result (systemd's:
// success, exit-code, signal, …) is restarted, given attempts restarts
// since the last reset.
func (p RestartPolicy) restarts(result string, attempts int) bool {
	switch p.Mode {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return result != "success" && (p.Max == 0 || attempts < p.Max)
	}
	return false
}

// givesUp says whether a main process that ended with result is not
// restarted because on-failure:N has made its N restarts since the last
// reset: the policy gave up.
func (p RestartPolicy) givesUp(result string, attempts int) bool {
	return p.Mode == RestartOnFailure && p.Max > 0 && result != "success" && attempts >= p.Max
}

// restartDelay is the wait before restart number attempt+1 since the last
// reset: first doubled attempt times, at most RestartDelayMax (or first,
// when that is longer).
func restartDelay(first time.Duration, attempt int) time.Duration {
	d := first
	for i := 0; i < attempt && d < RestartDelayMax; i++ {
		d *= 2
	}
	return max(min(d, RestartDelayMax), first)
}

// RestartEnv is the variable of a VM's environment file that carries its
// policy to the detached supervisor.
const RestartEnv = "MGR_RESTART"

// RestartsUnhealthy says whether the policy restarts a VM its health check
// found unhealthy (a failure, to on-failure), given attempts such restarts
// since the last reset (RestartResetAfter).
func (p RestartPolicy) RestartsUnhealthy(attempts int) bool {
	return p.restarts("unhealthy", attempts)
}

// RestartDelay is the policy's wait before restart number attempt+1 since
// the last reset, from RestartDelayMin.
func RestartDelay(attempt int) time.Duration { return restartDelay(RestartDelayMin, attempt) }
