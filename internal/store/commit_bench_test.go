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
	modes := []struct {
		name   string
		create func(s *Store, c *Committer) error
	}{
		{"flush-per-create", func(s *Store, _ *Committer) error {
			return bumpedAlone(s, func() error {
				id := NewID()
				return s.Create(id, files(id))
			})
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
			byCallers(b, "creates", mode.name, func(int) error { return mode.create(s, c) })
		})
	}
}

// BenchmarkRemovals deletes VMs from 8 callers at once, two ways in the
// same run: one flush per delete under the allocation lock (how deletes
// were made before they were grouped: bump the generation, then Delete),
// and through a Committer's Remove. The VMs are created beforehand,
// untimed.
//
//	go test -run '^$' -bench Removals -benchtime 2000x ./internal/store/
func BenchmarkRemovals(b *testing.B) {
	modes := []struct {
		name   string
		remove func(s *Store, c *Committer, id string) error
	}{
		{"flush-per-delete", func(s *Store, _ *Committer, id string) error {
			return bumpedAlone(s, func() error { return s.Delete(id) })
		}},
		{"group-commit", func(_ *Store, c *Committer, id string) error {
			return c.Remove(context.Background(), id, nil)
		}},
	}
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			s := newStore(b)
			c := s.NewCommitter(CommitterOptions{})
			ids := make([]string, b.N)
			for i := range ids {
				ids[i] = NewID()
				if _, err := c.Create(context.Background(), planOf(ids[i])); err != nil {
					b.Fatal(err)
				}
			}
			byCallers(b, "deletes", mode.name, func(i int) error { return mode.remove(s, c, ids[i]) })
		})
	}
}

// bumpedAlone makes one change to the set of VMs the way it was made
// before changes were grouped: under the allocation lock, after its own
// generation bump.
func bumpedAlone(s *Store, change func() error) error {
	unlock, err := s.LockAlloc(context.Background())
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.BumpGeneration(); err != nil {
		return err
	}
	return change()
}

// byCallers runs op for 0..b.N-1 from 8 callers at once, timed, and prints
// the rate and the p50/p99 latency.
func byCallers(b *testing.B, what, mode string, op func(i int) error) {
	const callers = 8
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
				if err := op(i); err != nil {
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
	b.ReportMetric(perSec, what+"/s")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	fmt.Printf("store %s, %s: %d by %d callers in %s = %.0f %s/s; p50 %.2f ms, p99 %.2f ms\n",
		what, mode, b.N, callers, total.Round(time.Millisecond), perSec, what,
		float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000)
}
