package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// A VM whose payload exits, one whose entrypoint is not in the image, and
// one whose kernel cannot mount its root disk end by themselves under QEMU;
// each VM's document then says why, with mergen-init's status and message
// or the kernel's panic, and the last console lines.
func TestVMLastRunDetached(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots QEMU guests")
	}
	vh := newVMHost(t, "detached", "172.31.249.0/24")
	h := vh.host
	b := &bareHost{h: h, bin: vh.mergen, port: freePort(t)}
	b.d = h.startBinary(t, vh.mergen, b.port)
	t.Cleanup(func() { dumpConsoles(t, h) })

	for _, tc := range []struct {
		name        string
		argv        []string
		bootArgs    string
		reason      string
		initExit    int // -1: mergen-init never ran
		initMessage string
		message     string
		console     string
	}{
		{"exit3", []string{"/bin/sh", "-c", "echo payload says goodbye; exit 3"}, "", wire.ReasonPayloadExit, 3, "",
			"the payload exited with status 3", "payload says goodbye"},
		{"noentry", []string{"/app/server"}, "", wire.ReasonInitError, 127, `entrypoint: "/app/server" does not exist in the image or is not executable`,
			"mergen-init failed (exit status 127)", "mergen-init: error: entrypoint"},
		// The initramfs is skipped (rdinit= names nothing) and root= a disk
		// that does not exist: the kernel itself cannot mount its root.
		{"noroot", []string{"/bin/sh", "-c", "exit 0"}, "rdinit=/none root=/dev/vdz", wire.ReasonKernelPanic, -1, "",
			"the guest kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs", `VFS: Cannot open root device "vdz"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := payloadDisk(t, h.path("data", "images", tc.name), "-", nil, tc.argv, "root", "/")
			var vm wire.VM
			code, body := b.api(t, "POST", "/v1/vms", map[string]any{
				"payloadDisk": payload, "memMiB": 256, "tags": map[string]string{"name": tc.name}, "bootArgs": tc.bootArgs,
			}, &vm)
			mustStatus(t, code, body, 201)
			if vm.LastRun != nil {
				t.Fatalf("a new VM has a last run: %+v", vm.LastRun)
			}
			code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/start", nil, &vm)
			mustStatus(t, code, body, 200)
			testenv.Eventually(t, 120*time.Second, "the VM to end by itself", func() bool {
				code, body = b.api(t, "GET", "/v1/vms/"+vm.ID, nil, &vm)
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
			if lr.Reason != tc.reason || initExit != tc.initExit || lr.InitMessage != tc.initMessage || !strings.HasPrefix(lr.Message, tc.message) ||
				lr.Result == "" || lr.EndedAt.IsZero() || lr.GaveUp {
				t.Fatalf("lastRun = %+v, want reason %s, init exit status %d and message %q, a message starting %q", lr, tc.reason, tc.initExit, tc.initMessage, tc.message)
			}
			if tail := strings.Join(lr.ConsoleTail, "\n"); len(lr.ConsoleTail) == 0 || len(lr.ConsoleTail) > 20 || !strings.Contains(tail, tc.console) {
				t.Fatalf("console tail lacks %q:\n%s", tc.console, tail)
			}
			// The list stays cheap: no lastRun there.
			var list wire.VMList
			code, body = b.api(t, "GET", "/v1/vms", nil, &list)
			mustStatus(t, code, body, 200)
			for _, v := range list.VMs {
				if v.LastRun != nil {
					t.Fatalf("the list carries lastRun for %s", v.ID)
				}
			}
			// `mergen vm inspect -o text` prints it.
			cmd := exec.Command(vh.mergen, "vm", "inspect", "-o", "text", tc.name)
			cmd.Env = append(os.Environ(), "MERGEN_API="+b.d.base, "MERGEN_API_TOKEN="+h.token(t))
			o, err := cmd.CombinedOutput()
			out := string(o)
			if err != nil {
				t.Fatalf("mergen vm inspect: %v\n%s", err, out)
			}
			if !strings.Contains(out, "Last run: "+tc.reason) || !strings.Contains(out, tc.console) {
				t.Fatalf("inspect -o text:\n%s", out)
			}
			t.Logf("mergen vm inspect -o text %s:\n%s", tc.name, out)
			code, body = b.api(t, "DELETE", "/v1/vms/"+vm.ID, nil, nil)
			mustStatus(t, code, body, 200)
		})
	}
}
