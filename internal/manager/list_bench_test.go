package manager_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv/hosttest"
	"github.com/mergenhq/mergen/internal/wire"
)

// BenchmarkListStopped measures manager.List over 1,000 VMs under the
// detached supervisor that have each run and stopped (a state record in
// its run directory, as the supervising process leaves it), next to the
// store's list of the same records from the same run. No root needed:
//
//	go test -run '^$' -bench ListStopped -benchtime 1x ./internal/manager/
func BenchmarkListStopped(b *testing.B) {
	const vms, lists = 1000, 30
	for i := 0; i < b.N; i++ {
		hh := hosttest.New(b, map[string]string{"MGR_SUPERVISOR": "detached", "MGR_GUEST_CIDR": "172.30.0.0/20", "MGR_PORT_START": "20000", "MGR_PORT_END": "40000"})
		sup, err := supervisor.New("detached", supervisor.OptionsFrom(hh.Cfg))
		if err != nil {
			b.Fatal(err)
		}
		m := manager.New(manager.Options{Config: hh.Cfg, Store: hh.Store, Supervisor: sup})
		ctx := context.Background()
		for j := 0; j < vms; j++ {
			vm, err := m.Create(ctx, wire.CreateRequest{Ports: []wire.Port{{Guest: 80}}})
			if err != nil {
				b.Fatal(err)
			}
			p := hh.Store.Paths(vm.ID)
			if err := os.MkdirAll(p.RunDir, 0o755); err != nil {
				b.Fatal(err)
			}
			rec := `{"activeState":"inactive","subState":"dead","result":"success","updated":"2026-11-30T18:00:00Z","exitCode":"exited","exitStatus":"0","exited":"2026-11-30T18:00:00Z"}` + "\n"
			if err := atomicfile.WriteFile(p.SupervisorState, []byte(rec), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		p50 := func(f func() int) time.Duration {
			lat := make([]time.Duration, lists)
			for j := range lat {
				t0 := time.Now()
				if n := f(); n != vms {
					b.Fatalf("listed %d VMs, want %d", n, vms)
				}
				lat[j] = time.Since(t0)
			}
			sort.Slice(lat, func(x, y int) bool { return lat[x] < lat[y] })
			return lat[lists/2]
		}
		list := p50(func() int {
			out, err := m.List(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if out[0].Service.ActiveState != "inactive" || out[0].State != wire.StateStopped {
				b.Fatalf("a stopped VM listed as %s (service %s)", out[0].State, out[0].Service.ActiveState)
			}
			return len(out)
		})
		records := p50(func() int {
			metas, err := hh.Store.List()
			if err != nil {
				b.Fatal(err)
			}
			return len(metas)
		})
		b.ReportMetric(float64(list.Microseconds())/1000, "list-p50-ms")
		b.ReportMetric(float64(records.Microseconds())/1000, "records-p50-ms")
		fmt.Printf("manager list: %d stopped VMs (detached supervisor) p50 %.1f ms; baseline in the same run: the %d records alone from the store %.1f ms (p50)\n",
			vms, float64(list.Microseconds())/1000, vms, float64(records.Microseconds())/1000)
	}
}
