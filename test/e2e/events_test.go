package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// eventsCLI is a running `mergen events -o json`: its events, as they come.
type eventsCLI struct {
	cmd *exec.Cmd
	evs chan events.Event
}

func startEventsCLI(t *testing.T, vh *vmHostSetup, base string, args ...string) *eventsCLI {
	t.Helper()
	cmd := exec.Command(vh.mergen, append([]string{"events", "-o", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "MERGEN_API="+base, "MERGEN_API_TOKEN="+vh.token(t))
	stderr := &testenv.Log{}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &eventsCLI{cmd: cmd, evs: make(chan events.Event, 64)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev events.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("mergen events printed %q: %v", sc.Text(), err)
				continue
			}
			c.evs <- ev
		}
		close(c.evs)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if s := stderr.String(); s != "" {
			t.Logf("mergen events %v said:\n%s", args, s)
		}
	})
	return c
}

// expect reads the VM's next events and fails unless they are want, in
// order; other VMs' events are skipped.
func (c *eventsCLI) expect(t *testing.T, vm string, want ...events.Type) []events.Event {
	t.Helper()
	var got []events.Event
	deadline := time.After(3 * time.Minute)
	for len(got) < len(want) {
		select {
		case ev, ok := <-c.evs:
			if !ok {
				t.Fatalf("mergen events ended after %v", types(got))
			}
			if ev.VM == vm {
				got = append(got, ev)
			}
		case <-deadline:
			t.Fatalf("after 3 minutes mergen events printed %v of %v", types(got), want)
		}
	}
	if !slices.Equal(types(got), want) {
		t.Fatalf("events %v, want %v", types(got), want)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			t.Fatalf("positions out of order: %d after %d", got[i].Seq, got[i-1].Seq)
		}
	}
	return got
}

func types(evs []events.Event) []events.Type {
	var out []events.Type
	for _, ev := range evs {
		out = append(out, ev.Type)
	}
	return out
}

// A watcher connected while a real VM is created, started, stopped and
// deleted sees every transition in order — across a SIGKILL of the
// daemon, after which `mergen events` reconnects from its last event —
// and a watcher that comes back later with its position gets what it
// missed.
func TestEventsFollowARealVMsLifeAndResume(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a QEMU guest")
	}
	vh := newVMHost(t, "detached", "172.31.233.0/24")
	h := vh.host
	b := &bareHost{h: h, bin: vh.mergen, port: freePort(t)}
	b.d = h.startBinary(t, vh.mergen, b.port)
	t.Cleanup(func() { dumpConsoles(t, h) })
	base := b.d.base

	live := startEventsCLI(t, vh, base)
	late := startEventsCLI(t, vh, base)
	payload := payloadDisk(t, h.path("data", "images", "events"), "-", nil, []string{"/bin/sh", "-c", "echo serving; while :; do sleep 1; done"}, "root", "/")
	var vm wire.VM
	code, body := b.api(t, "POST", "/v1/vms", map[string]any{"payloadDisk": payload, "memMiB": 256, "tags": map[string]string{"name": "watched"}}, &vm)
	mustStatus(t, code, body, 201)
	code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/start", nil, nil)
	mustStatus(t, code, body, 200)
	first := live.expect(t, vm.ID, events.Created, events.Starting, events.Ready)
	if first[0].Name != "watched" || first[0].Source != events.SourceDaemon || first[2].Source != events.SourceLifecycle {
		t.Fatalf("created %+v, ready %+v", first[0], first[2])
	}
	seen := late.expect(t, vm.ID, events.Created, events.Starting, events.Ready)
	// The late watcher goes away; the daemon is killed and comes back.
	late.cmd.Process.Kill()
	b.killDaemon(t)
	b.restartDaemon(t)

	code, body = b.api(t, "POST", "/v1/vms/"+vm.ID+"/stop", nil, nil)
	mustStatus(t, code, body, 200)
	code, body = b.api(t, "DELETE", "/v1/vms/"+vm.ID, nil, nil)
	mustStatus(t, code, body, 200)
	rest := live.expect(t, vm.ID, events.Stopping, events.Stopped, events.Deleting, events.Deleted)

	// Back with its position: what happened while it was away, the same
	// events with the same positions.
	again := startEventsCLI(t, vh, base, "--vm", vm.ID, "--since", fmt.Sprint(seen[2].Seq))
	missed := again.expect(t, vm.ID, events.Stopping, events.Stopped, events.Deleting, events.Deleted)
	for i := range missed {
		if missed[i].Seq != rest[i].Seq {
			t.Fatalf("resumed event %d at #%d, the live watcher saw it at #%d", i, missed[i].Seq, rest[i].Seq)
		}
	}
	// A bad filter is refused naming it.
	code, body = b.api(t, "GET", "/v1/events?type=exploded", nil, nil)
	mustStatus(t, code, body, 400)
	if msg := errMessage(body); msg == "" || msg[:5] != "type:" {
		t.Fatalf("bad type: %q", msg)
	}
}
