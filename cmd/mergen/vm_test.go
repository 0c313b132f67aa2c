package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/wire"
)

func TestPrintVMTextShowsTheLastRun(t *testing.T) {
	zero, code := 0, 127
	var b bytes.Buffer
	printVMText(&b, wire.VM{
		ID: "0d9c6b7e-1111-4000-8000-000000000001", Name: "web", State: "stopped", VMM: "qemu", VCPU: 1, MemMiB: 256,
		Restart: "on-failure:3", Restarts: 3,
		Service: wire.Service{Unit: "mergen@0d9c6b7e-1111-4000-8000-000000000001.service", ActiveState: "inactive", SubState: "dead"},
		LastRun: &wire.LastRun{
			Result: "success", ExitCode: &zero, Reason: wire.ReasonInitError,
			Message:      `mergen-init failed (exit status 127): entrypoint: "/app" does not exist in the image or is not executable`,
			InitExitCode: &code, InitMessage: `entrypoint: "/app" does not exist in the image or is not executable`,
			ConsoleTail: []string{"mergen-init: exit status 127", "[    0.934211] reboot: Power down"},
		},
	})
	out := b.String()
	for _, want := range []string{
		"State:    stopped\n",
		"Restarts: 3 (policy on-failure:3)\n",
		`Last run: init-error: mergen-init failed (exit status 127): entrypoint: "/app"`,
		"  VMM:    result success, exit status 0\n",
		`  Guest:  mergen-init exit status 127: entrypoint: "/app" does not exist`,
		"  Console (last 2 lines):\n    mergen-init: exit status 127\n    [    0.934211] reboot: Power down\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	b.Reset()
	printVMText(&b, wire.VM{ID: "x", State: "running"})
	if strings.Contains(b.String(), "Last run") || strings.Contains(b.String(), "Restarts:") {
		t.Errorf("a VM without lastRun or restarts printed one:\n%s", b.String())
	}
}
