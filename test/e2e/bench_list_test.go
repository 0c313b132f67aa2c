package e2e

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// BenchmarkList measures GET /v1/vms with 1,000 VMs defined, through the
// real HTTP API of the built daemon (`mergen server`) on loopback with the
// supervisor this host can run (detached), next to two baselines from the
// same run: the per-VM path (GET /v1/vms/{id} for each VM in turn, which
// asks the service manager and the VMM about one VM at a time, as lists
// did) and reading the 1,000 records from the store alone. It also prints
// the daemon's resident size (VmRSS) with the 1,000 VMs defined, after the
// lists.
//
//	go test -run '^$' -bench 'BenchmarkList$' -benchtime 1x ./test/e2e/
func BenchmarkList(b *testing.B) {
	const vms, clients, lists, perVM = 1000, 8, 50, 5
	for i := 0; i < b.N; i++ {
		h := newHost(b, map[string]string{"MGR_SUPERVISOR": "detached", "MGR_GUEST_CIDR": "172.30.0.0/20", "MGR_PORT_START": "20000", "MGR_PORT_END": "40000"})
		d := h.startBinary(b, testenv.Build(b, "./cmd/mergen"), freePort(b))
		base := d.base
		// The baseline of the resident size: the same daemon before any VM.
		idle := vmRSS(b, d.cmd.Process.Pid)
		byClients(clients, vms, func(j int) {
			if code, body := call(b, "POST", base+"/v1/vms", map[string]any{"ports": []map[string]any{{"guest": 80}}}, nil); code != 201 {
				b.Errorf("create %d: %d %s", j, code, body)
			}
		})

		// GET /v1/vms, batched; the body is decoded once, outside the timing.
		var list wire.VMList
		if code, body := call(b, "GET", base+"/v1/vms", nil, &list); code != 200 || len(list.VMs) != vms {
			b.Fatalf("list: %d, %d VMs %.200s", code, len(list.VMs), body)
		}
		listLat := timedList(b, base, lists)

		// Baseline 1: the per-VM path, one GET per VM.
		perLat := timed(perVM, func(int) {
			for _, v := range list.VMs {
				if code, body := call(b, "GET", base+"/v1/vms/"+v.ID, nil, nil); code != 200 {
					b.Fatalf("get %s: %d %.200s", v.ID, code, body)
				}
			}
		})

		// Baseline 2: the records alone, read from the store in-process.
		st := h.store(b)
		readLat := timed(lists, func(int) {
			if metas, err := st.List(); err != nil || len(metas) != vms {
				b.Fatalf("store list: %d records, %v", len(metas), err)
			}
		})

		rss := vmRSS(b, d.cmd.Process.Pid)

		b.ReportMetric(ms(listLat[lists/2]), "list1000-p50-ms")
		b.ReportMetric(ms(listLat[lists*99/100]), "list1000-p99-ms")
		b.ReportMetric(ms(perLat[perVM/2]), "get-each-1000-ms")
		b.ReportMetric(ms(readLat[lists/2]), "records-1000-ms")
		b.ReportMetric(float64(rss.total)/1024, "daemon-rss-MiB")
		b.ReportMetric(float64(idle.total)/1024, "daemon-idle-rss-MiB")
		fmt.Printf("list: GET /v1/vms with %d VMs (detached supervisor) p50 %.1f ms, p99 %.1f ms; baselines in the same run: a GET per VM for all %d %.1f ms (median of %d), the %d records alone from the store %.1f ms (p50); daemon VmRSS with %d VMs defined %s right after the lists, the same daemon before any VM %s\n",
			vms, ms(listLat[lists/2]), ms(listLat[lists*99/100]), vms, ms(perLat[perVM/2]), perVM, vms, ms(readLat[lists/2]), vms, rss, idle)
	}
}

// daemonRSS is the resident size of the built daemon (`mergen
// server`) over h's VMs after it answered GET /v1/vms lists times: a
// daemon of its own, on an API socket of its own beside any daemon
// serving h (one in the benchmark's process has no resident size of its
// own). It is stopped after, its VMs left as they are.
func daemonRSS(b *testing.B, bin string, h *host, lists int) residentSize {
	b.Helper()
	own := &host{root: h.root, env: maps.Clone(h.env)}
	own.env["MGR_API_SOCKET"] = h.env["MGR_API_SOCKET"] + ".rss"
	d := own.startBinary(b, bin, freePort(b))
	defer func() { d.cmd.Process.Kill(); d.cmd.Wait() }()
	for j := 0; j < lists; j++ {
		if code, body := call(b, "GET", d.base+"/v1/vms", nil, nil); code != 200 {
			b.Fatalf("list: %d %.200s", code, body)
		}
	}
	return vmRSS(b, d.cmd.Process.Pid)
}

// residentSize is a process's resident size (VmRSS) and its two parts:
// anonymous memory (the Go heap, stacks, the runtime's own) and pages of
// files (the executable's), all in KiB.
type residentSize struct{ total, anon, file int }

func (r residentSize) String() string {
	return fmt.Sprintf("%.1f MiB (anonymous %.1f, file %.1f)", float64(r.total)/1024, float64(r.anon)/1024, float64(r.file)/1024)
}

// vmRSS is the resident size of process pid, from /proc/PID/status.
func vmRSS(t testing.TB, pid int) residentSize {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var r residentSize
	fields := map[string]*int{"VmRSS:": &r.total, "RssAnon:": &r.anon, "RssFile:": &r.file}
	for _, line := range strings.Split(string(b), "\n") {
		for name, dst := range fields {
			if v, ok := strings.CutPrefix(line, name); ok {
				kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
				if err != nil {
					t.Fatalf("%s of %d: %q", name, pid, line)
				}
				*dst = kb
				delete(fields, name)
			}
		}
	}
	if len(fields) > 0 {
		t.Fatalf("/proc/%d/status lacks %v", pid, slices.Collect(maps.Keys(fields)))
	}
	return r
}
