package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// BenchmarkSnapshotRestore prints, from one run on one host, the time from
// POST /v1/vms to the guest's first HTTP answer for cold boots and for
// restores of the image's ready snapshot, their ratio, and the size of the
// snapshot and the time taken to take it.
//
//	go test -run '^$' -bench SnapshotRestore -benchtime 1x ./test/e2e/
func BenchmarkSnapshotRestore(b *testing.B) {
	testenv.RequireRoot(b)
	vh := newVMHost(b, "detached", "172.31.243.0/24")
	h := vh.host
	payload := webPayload(b, h.path("data", "images", "web"), "hello\n", "8080")
	d := h.startBinary(b, vh.mergen, freePort(b))
	const rounds = 3
	var createTimes []time.Duration // how long each POST /v1/vms took
	api := func(method, path string, body, out any, want int) {
		b.Helper()
		code, raw := call(b, method, d.base+path, body, out)
		mustStatus(b, code, raw, want)
	}
	// upToHTTP creates a VM and returns the time until its guest answers.
	upToHTTP := func(ready bool) (time.Duration, wire.VM) {
		b.Helper()
		body := map[string]any{"payloadDisk": payload, "memMiB": 256, "httpPort": 8080, "autoStart": true,
			"ports": []map[string]any{{"guest": 8080, "host": 0}}}
		if ready {
			body["ready"] = map[string]any{}
		}
		var vm wire.VM
		t0 := time.Now()
		api("POST", "/v1/vms", body, &vm, 201)
		createTimes = append(createTimes, time.Since(t0))
		testenv.Eventually(b, 3*time.Minute, "vm "+vm.ID+" to answer HTTP", func() bool {
			_, err := httpGet(vm.Network.Ports[0].Host, "/")
			return err == nil
		})
		return time.Since(t0), vm
	}
	median := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	for i := 0; i < b.N; i++ {
		var cold, warm []time.Duration
		createTimes = nil
		for range rounds {
			took, vm := upToHTTP(false)
			cold = append(cold, took)
			api("DELETE", "/v1/vms/"+vm.ID, nil, nil, 200)
		}
		// The first ready create boots the template and snapshots it.
		first, vm := upToHTTP(true)
		api("DELETE", "/v1/vms/"+vm.ID, nil, nil, 200)
		for range rounds {
			took, vm := upToHTTP(true)
			warm = append(warm, took)
			api("DELETE", "/v1/vms/"+vm.ID, nil, nil, 200)
		}
		var list wire.SnapshotList
		api("GET", "/v1/snapshots", nil, &list, 200)
		if list.Count != 1 || list.Snapshots[0].Ready == "" {
			b.Fatalf("want one ready snapshot, have %+v", list)
		}
		ready := list.Snapshots[0]
		// Taking a snapshot of a running VM through the API, end to end.
		_, vm = upToHTTP(false)
		var snap wire.Snapshot
		t0 := time.Now()
		api("POST", "/v1/vms/"+vm.ID+"/snapshots", nil, &snap, 201)
		took := time.Since(t0)
		api("DELETE", "/v1/vms/"+vm.ID, nil, nil, 200)
		api("DELETE", "/v1/snapshots/"+snap.ID, nil, nil, 200)
		api("DELETE", "/v1/snapshots/"+ready.ID, nil, nil, 200)

		c, w := median(cold), median(warm)
		fmt.Printf("POST /v1/vms to first HTTP answer, median of %d (QEMU, TCG, 256 MiB): cold boot %s; restore of the ready snapshot %s; %.1fx faster (goal >= 5x)\n",
			rounds, c.Round(time.Millisecond), w.Round(time.Millisecond), float64(c)/float64(w))
		fmt.Printf("  cold %v, restore %v; first ready create (template boot + snapshot + restore) %s\n", rounded(cold), rounded(warm), first.Round(time.Millisecond))
		fmt.Printf("  of which POST /v1/vms itself: cold %v, restore %v\n", rounded(createTimes[:rounds]), rounded(createTimes[rounds+1:2*rounds+1]))
		fmt.Printf("snapshot of a running VM: %.1f MiB, POST /v1/vms/{id}/snapshots %s, guest paused %d ms; the ready snapshot: %.1f MiB, paused %d ms\n",
			float64(snap.SizeBytes)/(1<<20), took.Round(time.Millisecond), snap.DurationMs, float64(ready.SizeBytes)/(1<<20), ready.DurationMs)
	}
}

func rounded(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
