package lastrun_test

import (
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/consoletail"
	"github.com/mergenhq/mergen/internal/lastrun"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/wire"
)

// The guest's own account comes first; then what the service manager saw
// of the VMM. Failure says which ends are failures: the service manager's
// word, or the guest's where the VMM exited cleanly (a panic, an OOM kill,
// mergen-init's own error).
func TestExplainNamesTheReasonAndFailureSaysWhichEndsFailed(t *testing.T) {
	none := consoletail.Report{InitExit: -1, PayloadExit: -1}
	clean := supervisor.Exit{Result: "success", Code: "exited"}
	for _, tc := range []struct {
		name    string
		exit    supervisor.Exit
		con     consoletail.Report
		reason  string
		failure bool
		message string
	}{
		{"panic with a clean VMM exit", clean, consoletail.Report{KernelPanic: "VFS: Unable to mount root fs", InitExit: -1}, wire.ReasonKernelPanic, true, "the guest kernel panicked: VFS"},
		{"out of memory", clean, consoletail.Report{OOMKills: []string{"Killed process 42 (app)"}, InitExit: -1}, wire.ReasonOOM, true, "ran out of memory"},
		{"mergen-init's error", supervisor.Exit{Result: "exit-code", Code: "exited", Status: 255}, consoletail.Report{InitError: "entrypoint: missing", InitExit: 127}, wire.ReasonInitError, true, "mergen-init failed (exit status 127)"},
		{"payload exit 3", supervisor.Exit{Result: "exit-code", Code: "exited", Status: 7}, consoletail.Report{InitExit: 3}, wire.ReasonPayloadExit, true, "the payload exited with status 3"},
		{"payload exit 0", clean, consoletail.Report{InitExit: 0}, wire.ReasonPayloadExit, false, "status 0"},
		{"stop on request", clean, consoletail.Report{StopRequested: true, InitExit: 143}, wire.ReasonStopped, false, "stopped on request"},
		{"VMM killed", supervisor.Exit{Result: "signal", Code: "killed", Signal: "KILL"}, none, wire.ReasonVMMSignal, true, "signal KILL"},
		{"VMM exit 1", supervisor.Exit{Result: "exit-code", Code: "exited", Status: 1}, none, wire.ReasonVMMExit, true, "status 1"},
		{"stop timeout", supervisor.Exit{Result: "timeout", Code: "killed", Signal: "KILL"}, none, wire.ReasonStopTimeout, true, "did not stop in time"},
		{"gave up", supervisor.Exit{Result: "exit-code", Code: "exited", Status: 7, Restarts: 3, GaveUp: true}, consoletail.Report{InitExit: 3}, wire.ReasonPayloadExit, true, "the restart policy gave up after 3 restarts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := lastrun.Explain(tc.exit, tc.con)
			if r.Reason != tc.reason || lastrun.Failure(r) != tc.failure || !strings.Contains(r.Message, tc.message) {
				t.Errorf("reason %q failure %v message %q; want %q, %v, …%q…", r.Reason, lastrun.Failure(r), r.Message, tc.reason, tc.failure, tc.message)
			}
		})
	}
}
