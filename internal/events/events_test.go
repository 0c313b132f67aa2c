package events_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/layout"
)

func newJournal(t *testing.T) (*events.Journal, layout.Events) {
	p := layout.Layout{DataRoot: t.TempDir()}.Events()
	return events.NewJournal(p), p
}

func TestAppendNumbersEventsInOneSequenceAcrossWriters(t *testing.T) {
	j, p := newJournal(t)
	// Two journals on the same files stand for the daemon and a stage.
	other := events.NewJournal(p)
	var wg sync.WaitGroup
	for w, jr := range []*events.Journal{j, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if _, err := jr.Append(context.Background(), events.Event{Type: events.Created, VM: fmt.Sprintf("vm-%d-%d", w, i), Source: events.SourceDaemon}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	all, err := j.After(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 100 {
		t.Fatalf("%d events, want 100", len(all))
	}
	for i, ev := range all {
		if ev.Seq != uint64(i+1) || ev.Time.IsZero() {
			t.Fatalf("event %d: seq %d time %v", i, ev.Seq, ev.Time)
		}
	}
	fi, err := os.Stat(p.Journal)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("journal mode: %v %v", fi, err)
	}
}

// Appends made at once in one process are written together; each gets
// its own number, the one its line in the journal carries, with no gap.
func TestConcurrentAppendsInOneProcessGetTheNumbersOfTheirLines(t *testing.T) {
	j, _ := newJournal(t)
	const n = 64
	got := make([]events.Event, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev, err := j.Append(context.Background(), events.Event{Type: events.Created, VM: fmt.Sprintf("vm-%d", i), Source: events.SourceDaemon})
			if err != nil {
				t.Error(err)
			}
			got[i] = ev
		}()
	}
	wg.Wait()
	all, err := j.After(0, 0)
	if err != nil || len(all) != n {
		t.Fatalf("%d events (%v), want %d", len(all), err, n)
	}
	for i, ev := range all {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("line %d has seq %d", i, ev.Seq)
		}
	}
	for i, ev := range got {
		if ev.Seq == 0 || ev.Seq > n || all[ev.Seq-1].VM != ev.VM {
			t.Fatalf("append %d returned seq %d for %s, which is not its line", i, ev.Seq, ev.VM)
		}
	}
}

func TestAppendRefusesEventsWithoutTypeOrVM(t *testing.T) {
	j, _ := newJournal(t)
	for _, ev := range []events.Event{{Type: "exploded", VM: "x"}, {Type: events.Created}} {
		if _, err := j.Append(context.Background(), ev); err == nil {
			t.Errorf("%+v appended", ev)
		}
	}
}

func TestRotationKeepsNumbersAndSaysWhatIsGone(t *testing.T) {
	j, p := newJournal(t)
	long := strings.Repeat("x", 1500)
	var n uint64
	for {
		ev, err := j.Append(context.Background(), events.Event{Type: events.Failed, VM: "vm", Message: long})
		if err != nil {
			t.Fatal(err)
		}
		n = ev.Seq
		if _, err := os.Stat(p.JournalOld); err == nil {
			// The first append after the rotation went to a new file.
			break
		}
	}
	ev, err := j.Append(context.Background(), events.Event{Type: events.Stopped, VM: "vm"})
	if err != nil || ev.Seq != n+1 {
		t.Fatalf("after rotation: seq %d (want %d), %v", ev.Seq, n+1, err)
	}
	got, err := j.After(n-1, 0)
	if err != nil || len(got) != 2 || got[0].Seq != n || got[1].Type != events.Stopped {
		t.Fatalf("across the rotation: %d events, %v", len(got), err)
	}
	// Rotate once more: the first file's events are gone.
	for {
		if _, err := j.Append(context.Background(), events.Event{Type: events.Failed, VM: "vm", Message: long}); err != nil {
			t.Fatal(err)
		}
		if all, _ := j.After(0, 1); len(all) == 1 && all[0].Seq > n {
			break
		}
	}
	if _, err := j.After(1, 0); !errors.Is(err, events.ErrGone) || !strings.Contains(err.Error(), "the oldest kept is") {
		t.Fatalf("a position no longer kept: %v", err)
	}
}

func TestMessagesAreBounded(t *testing.T) {
	j, _ := newJournal(t)
	ev, err := j.Append(context.Background(), events.Event{Type: events.Failed, VM: "vm", Message: strings.Repeat("m", 1<<20)})
	if err != nil || len(ev.Message) > 4096 {
		t.Fatalf("message of %d bytes, %v", len(ev.Message), err)
	}
}

func TestBusWakesWatchersForOtherWritersAndServesOldPositionsFromTheFile(t *testing.T) {
	j, p := newJournal(t)
	for range 3 {
		j.Append(context.Background(), events.Event{Type: events.Created, VM: "before"})
	}
	bus := events.NewBus(j, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if bus.Last() != 3 {
		t.Fatalf("last %d, want 3", bus.Last())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go bus.Run(ctx)

	got := make(chan []events.Event, 1)
	go func() {
		evs, err := bus.Next(ctx, 3, 10)
		if err != nil {
			t.Error(err)
		}
		got <- evs
	}()
	// Another process's append (a lifecycle stage) reaches the waiter.
	if _, err := events.NewJournal(p).Append(ctx, events.Event{Type: events.Restarted, VM: "vm-a", Source: events.SourceLifecycle}); err != nil {
		t.Fatal(err)
	}
	select {
	case evs := <-got:
		if len(evs) != 1 || evs[0].Seq != 4 || evs[0].Type != events.Restarted {
			t.Fatalf("woken with %+v", evs)
		}
	case <-ctx.Done():
		t.Fatal("the watcher was not woken by the other writer's event")
	}
	// The daemon's own append is visible as soon as Append returns.
	if ev, err := bus.Append(ctx, events.Event{Type: events.Deleted, VM: "vm-a"}); err != nil || bus.Last() != ev.Seq {
		t.Fatalf("own append: %+v last %d %v", ev, bus.Last(), err)
	}
	evs, err := bus.Next(ctx, 0, 2)
	if err != nil || len(evs) != 2 || evs[0].Seq != 1 || evs[1].Seq != 2 {
		t.Fatalf("from the start: %+v %v", evs, err)
	}
}

// However many events went by, a watcher gets the ones after its
// position, in order and without gaps, whether the Bus still holds them
// in memory or reads them from the file.
func TestBusServesEveryPositionAfterManyEvents(t *testing.T) {
	j, _ := newJournal(t)
	bus := events.NewBus(j, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	const total = 5000 // well past twice the events the Bus keeps in memory
	for i := range total {
		if _, err := bus.Append(ctx, events.Event{Type: events.Created, VM: fmt.Sprintf("vm-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for since := uint64(0); since < total; since += 97 {
		evs, err := bus.Next(ctx, since, 5)
		if err != nil {
			t.Fatalf("after %d: %v", since, err)
		}
		if want := min(5, total-int(since)); len(evs) != want {
			t.Fatalf("after %d: %d events, want %d", since, len(evs), want)
		}
		for i, ev := range evs {
			if seq := since + 1 + uint64(i); ev.Seq != seq || ev.VM != fmt.Sprintf("vm-%d", seq-1) {
				t.Fatalf("after %d: event %d is %d (%s), want %d", since, i, ev.Seq, ev.VM, seq)
			}
		}
	}
}

func TestLastOfIsTheVMsNewestEvent(t *testing.T) {
	j, _ := newJournal(t)
	for _, ev := range []events.Event{{Type: events.Created, VM: "a"}, {Type: events.Failed, VM: "a"}, {Type: events.Created, VM: "ab"}} {
		if _, err := j.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if ev, ok, err := j.LastOf("a"); err != nil || !ok || ev.Type != events.Failed || ev.Seq != 2 {
		t.Fatalf("LastOf(a) = %+v %v %v; want the failed event #2 (not ab's)", ev, ok, err)
	}
	if _, ok, err := j.LastOf("c"); err != nil || ok {
		t.Fatalf("LastOf(c) found one: %v %v", ok, err)
	}
}

// The daemon's own batches reach its watchers without being read back
// from the file; lines another writer (a lifecycle stage) put in between
// are read from the file first, so that watchers still get every event in
// order.
func TestBusServesItsOwnAndOtherWritersEventsInOrder(t *testing.T) {
	j, p := newJournal(t)
	bus := events.NewBus(j, slog.New(slog.NewTextHandler(io.Discard, nil)))
	stage := events.NewJournal(p)
	ctx := context.Background()
	var want []string
	for i := range 40 {
		if i%3 == 2 {
			_, err := stage.Append(ctx, events.Event{Type: events.Ready, VM: fmt.Sprintf("stage-%d", i), Source: events.SourceLifecycle})
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, fmt.Sprintf("stage-%d", i))
			continue
		}
		ev, err := bus.Append(ctx, events.Event{Type: events.Created, VM: fmt.Sprintf("daemon-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("daemon-%d", i))
		if bus.Last() != ev.Seq {
			t.Fatalf("after appending #%d the Bus is at %d", ev.Seq, bus.Last())
		}
	}
	evs, err := bus.Next(ctx, 0, 100)
	if err != nil || len(evs) != len(want) {
		t.Fatalf("%d events (%v), want %d", len(evs), err, len(want))
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) || ev.VM != want[i] {
			t.Fatalf("event %d is #%d of %s, want #%d of %s", i, ev.Seq, ev.VM, i+1, want[i])
		}
	}
}
