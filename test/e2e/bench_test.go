package e2e

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/testenv/nspawn"
	"github.com/mergenhq/mergen/internal/wire"
)

// BenchmarkControlPlane measures, through the real HTTP API of the built
// daemon (`mergen server`, a process of its own, as on a host) on
// loopback: 1,000 creates (8 clients in parallel) as creates per second
// and p50/p99 latency, then GET /v1/vms with those 1,000 VMs defined, the
// daemon's resident size, and last the 1,000 deletes (the same clients).
// Its daemon has the systemd supervisor but no system bus, so it never
// waits for systemd: BenchmarkControlPlaneSystemd gives it one.
//
//	go test -run '^$' -bench ControlPlane -benchtime 1x ./test/e2e/
//
// -daemon (after -args) names another daemon binary to measure the same
// way (bench/controlplane.sh builds a baseline commit's).
func BenchmarkControlPlane(b *testing.B) {
	for i := 0; i < b.N; i++ {
		controlPlane(b, "control plane", nil, nil)
	}
}

// BenchmarkControlPlaneSystemd is BenchmarkControlPlane with a real
// systemd (booted in a container, root) answering the daemon on its
// system bus, as on a host: a create's answer carries the new VM's unit
// state, a delete stops and forgets its unit.
func BenchmarkControlPlaneSystemd(b *testing.B) {
	testenv.RequireRoot(b)
	for i := 0; i < b.N; i++ {
		c := nspawn.Boot(b, nspawn.Config{})
		c.UseBus(b)
		// The units name the lifecycle binary by path: the one built
		// here, not whichever an install put on PATH.
		env := map[string]string{"MGR_LIFECYCLE_BIN": testenv.Build(b, "./cmd/mergen-lifecycle")}
		controlPlane(b, "control plane (systemd)", env, func(cfg config.Config) {
			if err := supervisor.InstallUnits(context.Background(), supervisor.OptionsFrom(cfg), filepath.Join(c.Root, "etc/systemd/system")); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// controlPlane runs the benchmark's steps and prints their figures after
// label; env (optional) adds to the daemon's environment, prepare
// (optional) sees its configuration before it starts.
func controlPlane(b *testing.B, label string, env map[string]string, prepare func(config.Config)) {
	const creates, clients, lists = 1000, 8, 20
	all := map[string]string{"MGR_SUPERVISOR": "systemd", "MGR_GUEST_CIDR": "172.30.0.0/20", "MGR_PORT_START": "20000", "MGR_PORT_END": "40000"}
	maps.Copy(all, env)
	h := newHost(b, all)
	if prepare != nil {
		prepare(h.config(b))
	}
	bin := benchDaemon(b)
	d := h.startBinary(b, bin, freePort(b))
	base := d.base
	// The binaries just built (tens of MB) are still being written back:
	// flushed first, so that the creates' fsyncs do not wait behind them.
	syscall.Sync()
	cpu0, daemonCPU0 := testenv.ProcessCPU(), testenv.PidCPU(b, d.cmd.Process.Pid)
	total, lat := byClients(clients, creates, func(j int) {
		code, body := call(b, "POST", base+"/v1/vms", map[string]any{"ports": []map[string]any{{"guest": 80}}}, nil)
		if code != 201 {
			b.Errorf("create %d: %d %s", j, code, body)
		}
	})
	clientCPU, daemonCPU := testenv.ProcessCPU().Sub(cpu0), testenv.PidCPU(b, d.cmd.Process.Pid).Sub(daemonCPU0)

	listLat := timedList(b, base, lists)

	b.ReportMetric(float64(creates)/total.Seconds(), "creates/s")
	b.ReportMetric(ms(lat[creates/2]), "create-p50-ms")
	b.ReportMetric(ms(lat[creates*99/100]), "create-p99-ms")
	b.ReportMetric(ms(listLat[lists/2]), "list1000-p50-ms")
	fmt.Printf(label+": %d creates by %d clients in %s = %.0f creates/s; create p50 %.2f ms, p99 %.2f ms; GET /v1/vms with %d VMs p50 %.1f ms, max %.1f ms\n",
		creates, clients, total.Round(time.Millisecond), float64(creates)/total.Seconds(), ms(lat[creates/2]), ms(lat[creates*99/100]),
		creates, ms(listLat[lists/2]), ms(listLat[lists-1]))
	// Daemon and clients share the machine's processors: what a create
	// costs them, apart from what it waits for (the disk's flushes), and
	// the ceiling that puts on creates/s here.
	cpu := daemonCPU.Add(clientCPU)
	fmt.Printf(label+": processor time per create %.2f ms (daemon %.2f: user %.2f, system %.2f; clients %.2f), at most %.0f creates/s on %d processors\n",
		ms(cpu.Total())/creates, ms(daemonCPU.Total())/creates, ms(daemonCPU.User)/creates, ms(daemonCPU.System)/creates, ms(clientCPU.Total())/creates,
		float64(runtime.NumCPU())*creates/cpu.Total().Seconds(), runtime.NumCPU())
	made := vmRSS(b, d.cmd.Process.Pid)
	rss, idle := daemonRSS(b, bin, h, lists), daemonRSS(b, bin, newHost(b, nil), lists)
	fmt.Printf(label+": daemon VmRSS with %d VMs defined %s; baseline in the same run: with no VMs %s (the built daemon started again, after %d lists); the daemon that made them, right after %s\n",
		creates, rss, idle, lists, made)

	// Then the same clients delete the VMs.
	var listed wire.VMList
	if code, body := call(b, "GET", base+"/v1/vms", nil, &listed); code != 200 || len(listed.VMs) != creates {
		b.Fatalf("list before the deletes: %d, %d VMs: %.200s", code, len(listed.VMs), body)
	}
	list := listed.VMs
	total, lat = byClients(clients, len(list), func(j int) {
		if code, body := call(b, "DELETE", base+"/v1/vms/"+list[j].ID, nil, nil); code != 200 {
			b.Errorf("delete %s: %d %s", list[j].ID, code, body)
		}
	})
	b.ReportMetric(float64(creates)/total.Seconds(), "deletes/s")
	fmt.Printf(label+": %d deletes by %d clients in %s = %.0f deletes/s; delete p50 %.2f ms, p99 %.2f ms\n",
		creates, clients, total.Round(time.Millisecond), float64(creates)/total.Seconds(), ms(lat[creates/2]), ms(lat[creates*99/100]))
}

// daemonFlag names a daemon binary for the control-plane benchmarks to
// run instead of this tree's.
var daemonFlag = flag.String("daemon", "", "daemon binary the control-plane benchmarks measure (default: this tree's, built)")

// benchDaemon is the daemon binary the control-plane benchmarks run: this
// tree's, or -daemon's.
func benchDaemon(b *testing.B) string {
	if *daemonFlag != "" {
		return *daemonFlag
	}
	return testenv.Build(b, "./cmd/mergen")
}

// timedList asks for GET /v1/vms n times in a row and returns each
// answer's latency, sorted.
func timedList(b *testing.B, base string, n int) []time.Duration {
	return timed(n, func(int) {
		if code, body := call(b, "GET", base+"/v1/vms", nil, nil); code != 200 {
			b.Fatalf("list: %d %.200s", code, body)
		}
	})
}

// timed runs op for 0..n-1 in turn and returns each run's latency, sorted.
func timed(n int, op func(j int)) []time.Duration {
	_, lat := byClients(1, n, op)
	return lat
}

// byClients runs op for 0..n-1 from clients goroutines at once and returns
// the time they took and each op's latency, sorted.
func byClients(clients, n int, op func(j int)) (time.Duration, []time.Duration) {
	lat := make([]time.Duration, n)
	next := make(chan int, n)
	for j := range n {
		next <- j
	}
	close(next)
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for j := range next {
				t0 := time.Now()
				op(j)
				lat[j] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	total := time.Since(start)
	sort.Slice(lat, func(x, y int) bool { return lat[x] < lat[y] })
	return total, lat
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
