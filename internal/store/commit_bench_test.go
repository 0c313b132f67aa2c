package store

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"
)

// BenchmarkCreates stores VMs from 8 callers at once, two ways in the same
// run: one flush per create under the allocation lock (how creates were
// written before they were grouped: bump the generation, then Create), and
// through a Committer. It prints creates/s and the p50/p99 latency of each.
//
//	go test -run '^$' -bench Creates -benchtime 2000x ./internal/store/
func BenchmarkCreates(b *testing.B) {
	const callers = 8
	modes := []struct {
		name   string
		create func(s *Store, c *Committer) error
	}{
		{"flush-per-create", func(s *Store, _ *Committer) error {
			unlock, err := s.LockAlloc(context.Background())
			if err != nil {
				return err
			}
			defer unlock()
			if _, err := s.BumpGeneration(); err != nil {
				return err
			}
			id := NewID()
			return s.Create(id, files(id))
		}},
		{"group-commit", func(_ *Store, c *Committer) error {
			_, err := c.Create(context.Background(), planOf(NewID()))
			return err
		}},
	}
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			s := newStore(b)
			c := s.NewCommitter(CommitterOptions{})
			lat := make([]time.Duration, b.N)
			next := make(chan int, b.N)
			for i := range b.N {
				next <- i
			}
			close(next)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range next {
						t0 := time.Now()
						if err := mode.create(s, c); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(t0)
					}
				}()
			}
			wg.Wait()
			total := time.Since(start)
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			perSec := float64(b.N) / total.Seconds()
			p50, p99 := lat[b.N/2], lat[b.N*99/100]
			b.ReportMetric(perSec, "creates/s")
			b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
			fmt.Printf("store creates, %s: %d by %d callers in %s = %.0f creates/s; p50 %.2f ms, p99 %.2f ms\n",
				mode.name, b.N, callers, total.Round(time.Millisecond), perSec,
				float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000)
		})
	}
}
