package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// TestVMLastRunDetached: why a VM's last run ended, with the detached
// supervisor.
func TestVMLastRunDetached(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots QEMU guests")
	}
	b := startBareHost(t, "172.31.249.0/24")
	lastRunScenario(t, b, b.h, true, "exit3", "noentry", "noroot")
}

// TestVMLastRunUnderSystemd: the same with a real systemd, which forgets
// the result of a unit that stopped cleanly (the console still tells). A
// payload's exit under systemd is in TestRestartUnderSystemd.
func TestVMLastRunUnderSystemd(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a container and QEMU guests")
	}
	ch := bootContainerHost(t, "172.31.234.0/24")
	lastRunScenario(t, ch, ch.h, false, "noentry", "noroot")
}

// lastRunScenario: a VM whose payload exits, one whose entrypoint is not
// in the image, and one whose kernel cannot mount its root disk end by
// themselves under QEMU; each VM's document then says why, with
// mergen-init's status and message or the kernel's panic, and the last
// console lines. A guest that fails ends QEMU with a failure (its exit
// device); a kernel panic ends it cleanly, and remembersClean says the
// supervisor still knows the result of such a run. Only the cases named run.
func lastRunScenario(t *testing.T, h cliHost, host *host, remembersClean bool, names ...string) {
	for _, tc := range []struct {
		name        string
		argv        []string
		bootArgs    string
		reason      string
		vmmExit     int // QEMU's status: the guest's N as N<<1|1, or 0
		initExit    int // -1: mergen-init never ran
		initMessage string
		message     string
		console     string
	}{
		{"exit3", []string{"/bin/sh", "-c", "echo payload says goodbye; exit 3"}, "", wire.ReasonPayloadExit, 7, 3, "",
			"the payload exited with status 3", "payload says goodbye"},
		{"noentry", []string{"/app/server"}, "", wire.ReasonInitError, 255, 127, `entrypoint: "/app/server" does not exist in the image or is not executable`,
			"mergen-init failed (exit status 127)", "mergen-init: error: entrypoint"},
		// The initramfs is skipped (rdinit= names nothing) and root= a disk
		// that does not exist: the kernel itself cannot mount its root.
		{"noroot", []string{"/bin/sh", "-c", "exit 0"}, "rdinit=/none root=/dev/vdz", wire.ReasonKernelPanic, 0, -1, "",
			"the guest kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs", `VFS: Cannot open root device "vdz"`},
	} {
		if !slices.Contains(names, tc.name) {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			payload := payloadDisk(t, host.path("data", "images", tc.name), "-", nil, tc.argv, "root", "/")
			var vm wire.VM
			code, body := h.api(t, "POST", "/v1/vms", map[string]any{
				"payloadDisk": payload, "memMiB": 256, "tags": map[string]string{"name": tc.name}, "bootArgs": tc.bootArgs,
			}, &vm)
			mustStatus(t, code, body, 201)
			if vm.LastRun != nil {
				t.Fatalf("a new VM has a last run: %+v", vm.LastRun)
			}
			code, body = h.api(t, "POST", "/v1/vms/"+vm.ID+"/start", nil, &vm)
			mustStatus(t, code, body, 200)
			testenv.Eventually(t, 120*time.Second, "the VM to end by itself", func() bool {
				code, body = h.api(t, "GET", "/v1/vms/"+vm.ID, nil, &vm)
				mustStatus(t, code, body, 200)
				st := vm.Service.ActiveState
				return (st == "inactive" || st == "failed") && vm.LastRun != nil
			})
			lr := vm.LastRun
			t.Logf("lastRun: %s", body[strings.Index(string(body), `"lastRun"`):])
			initExit := -1
			if lr.InitExitCode != nil {
				initExit = *lr.InitExitCode
			}
			if lr.Reason != tc.reason || initExit != tc.initExit || lr.InitMessage != tc.initMessage || !strings.HasPrefix(lr.Message, tc.message) || lr.GaveUp {
				t.Fatalf("lastRun = %+v, want reason %s, init exit status %d and message %q, a message starting %q", lr, tc.reason, tc.initExit, tc.initMessage, tc.message)
			}
			if tc.vmmExit != 0 || remembersClean {
				if lr.Result == "" || lr.EndedAt.IsZero() || lr.ExitCode == nil || *lr.ExitCode != tc.vmmExit {
					t.Fatalf("lastRun = %+v, want the result and end of a VMM that exited with %d", lr, tc.vmmExit)
				}
			}
			if tail := strings.Join(lr.ConsoleTail, "\n"); len(lr.ConsoleTail) == 0 || len(lr.ConsoleTail) > 20 || !strings.Contains(tail, tc.console) {
				t.Fatalf("console tail lacks %q:\n%s", tc.console, tail)
			}
			// The list stays cheap: no lastRun there.
			var list wire.VMList
			code, body = h.api(t, "GET", "/v1/vms", nil, &list)
			mustStatus(t, code, body, 200)
			for _, v := range list.VMs {
				if v.LastRun != nil {
					t.Fatalf("the list carries lastRun for %s", v.ID)
				}
			}
			// `mergen vm inspect -o text` prints it.
			out, err := h.mergen(t, "vm", "inspect", "-o", "text", tc.name)
			if err != nil {
				t.Fatalf("mergen vm inspect: %v\n%s", err, out)
			}
			if !strings.Contains(out, "Last run: "+tc.reason) || !strings.Contains(out, tc.console) {
				t.Fatalf("inspect -o text:\n%s", out)
			}
			t.Logf("mergen vm inspect -o text %s:\n%s", tc.name, out)
			code, body = h.api(t, "DELETE", "/v1/vms/"+vm.ID, nil, nil)
			mustStatus(t, code, body, 200)
		})
	}
}
