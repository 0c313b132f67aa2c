package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/api"
	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/testenv/hosttest"
	"github.com/mergenhq/mergen/internal/wire"
)

// BenchmarkListHandler measures the list answer of 1,000 VMs (QEMU, each
// run and stopped under the detached supervisor) built by the API's
// handler in-process, next to the old path (manager.List, documents built
// anew, encoded by encoding/json) and the store's list of the same records
// from the same run. No root needed:
//
//	go test -run '^$' -bench ListHandler -benchtime 1x ./internal/api/
func BenchmarkListHandler(b *testing.B) {
	const vms, lists = 1000, 30
	for i := 0; i < b.N; i++ {
		hh := hosttest.New(b, map[string]string{"MGR_SUPERVISOR": "detached", "MGR_VMM": "qemu", "MGR_GUEST_CIDR": "172.30.0.0/20", "MGR_PORT_START": "20000", "MGR_PORT_END": "40000"})
		sup, err := supervisor.New("detached", supervisor.OptionsFrom(hh.Cfg))
		if err != nil {
			b.Fatal(err)
		}
		log := slog.New(slog.DiscardHandler)
		m := manager.New(manager.Options{Config: hh.Cfg, Store: hh.Store, Supervisor: sup, Log: log})
		h := api.New(m, log, nil, nil)
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
		// The three are timed in turn, lists times each, so that the load
		// of the machine weighs on all alike; the p50 of each is printed.
		var size int
		req := httptest.NewRequest(http.MethodGet, "/v1/vms", nil)
		fs := []func() int{
			func() int { // the API's answer
				w := &countingWriter{header: http.Header{}}
				h.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("list: %d", w.code)
				}
				size = w.n
				return vms
			},
			func() int { // the old path: documents built anew and encoded
				out, err := m.List(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := json.Marshal(wire.VMList{VMs: out, Count: len(out)}); err != nil {
					b.Fatal(err)
				}
				return len(out)
			},
			func() int { // the records alone
				metas, err := hh.Store.List()
				if err != nil {
					b.Fatal(err)
				}
				return len(metas)
			},
		}
		lat := make([][]time.Duration, len(fs))
		alloc := make([]uint64, len(fs))
		var ms runtime.MemStats
		for j := 0; j < lists; j++ {
			for k, f := range fs {
				runtime.ReadMemStats(&ms)
				before := ms.TotalAlloc
				t0 := time.Now()
				if n := f(); n != vms {
					b.Fatalf("listed %d VMs, want %d", n, vms)
				}
				lat[k] = append(lat[k], time.Since(t0))
				runtime.ReadMemStats(&ms)
				alloc[k] += ms.TotalAlloc - before
			}
		}
		p50 := make([]time.Duration, len(fs))
		for k := range lat {
			sort.Slice(lat[k], func(x, y int) bool { return lat[k][x] < lat[k][y] })
			p50[k] = lat[k][lists/2]
		}
		handler, old, records := p50[0], p50[1], p50[2]
		msf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		b.ReportMetric(msf(handler), "handler-p50-ms")
		b.ReportMetric(msf(old), "old-path-p50-ms")
		b.ReportMetric(msf(records), "records-p50-ms")
		kib := func(k int) float64 { return float64(alloc[k]) / lists / 1024 }
		fmt.Printf("list handler: %d stopped VMs (detached supervisor) p50 %.1f ms, %d bytes, %.0f KiB allocated per list; baselines in the same run: the old path (manager.List, encoded) %.1f ms, %.0f KiB; the records alone from the store %.1f ms, %.0f KiB (p50, mean)\n",
			vms, msf(handler), size, kib(0), msf(old), kib(1), msf(records), kib(2))
	}
}

// countingWriter is a ResponseWriter that counts the answer's bytes and
// keeps none: what a list allocates is the server's alone.
type countingWriter struct {
	header http.Header
	code   int
	n      int
}

func (w *countingWriter) Header() http.Header  { return w.header }
func (w *countingWriter) WriteHeader(code int) { w.code = code }
func (w *countingWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.n += len(p)
	return len(p), nil
}
