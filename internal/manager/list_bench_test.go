package manager_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/manager/managertest"
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
		hh, m := managertest.StoppedVMs(b, vms, nil)
		ctx := context.Background()
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
