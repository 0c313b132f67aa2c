package manager_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// hookCalls is a hook endpoint that records what it is called with and
// answers status.
func hookCalls(t *testing.T, status int) (string, chan map[string]any) {
	calls := make(chan map[string]any, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		calls <- body
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, calls
}

// Every operation's transition is in the stream, in order, with the
// VM's name; a strict onDelete hook that fails vetoes the delete, and the
// stream says so right after the deleting it refused.
func TestOperationsRecordTheirEventsInOrder(t *testing.T) {
	h := newHost(t, nil)
	ctx := context.Background()
	failing, _ := hookCalls(t, http.StatusInternalServerError)
	from := h.mgr.LastEvent()

	a, err := h.mgr.Create(ctx, wire.CreateRequest{Tags: map[string]string{"name": "alpha"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.mgr.Create(ctx, wire.CreateRequest{Hooks: json.RawMessage(`{"onDelete":[{"url":"` + failing + `","strict":true}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.mgr.Create(ctx, wire.CreateRequest{VCPU: 99}); err == nil {
		t.Fatal("a create with 99 vCPUs succeeded")
	}
	if err := h.mgr.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := h.mgr.Delete(ctx, b.ID); err == nil {
		t.Fatal("a strict onDelete hook that fails did not veto the delete")
	}

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	evs, err := h.mgr.Events(wctx, from, 100)
	if err != nil {
		t.Fatal(err)
	}
	type step struct {
		typ events.Type
		vm  string
	}
	want := []step{{events.Created, a.ID}, {events.Created, b.ID}, {events.Deleting, a.ID}, {events.Deleted, a.ID}, {events.Deleting, b.ID}, {events.Vetoed, b.ID}}
	var got []step
	for i, ev := range evs {
		got = append(got, step{ev.Type, ev.VM})
		if ev.Seq != from+uint64(i)+1 || ev.Source != events.SourceDaemon || ev.Time.IsZero() {
			t.Errorf("event %d: %+v", i, ev)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if evs[0].Name != "alpha" || evs[5].Reason != "hook" || evs[5].Attrs["op"] != "delete" {
		t.Errorf("name %q, veto %+v", evs[0].Name, evs[5])
	}
}

// Events the lifecycle stages record — another process, appending to the
// same journal — reach the daemon's watchers and fire the VM's hooks for
// them (onFailed here, with the reason); a failing hook is counted.
func TestStageEventsReachWatchersAndFireHooks(t *testing.T) {
	h := newHost(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	url, calls := hookCalls(t, http.StatusBadGateway)
	vm, err := h.mgr.Create(ctx, wire.CreateRequest{Hooks: json.RawMessage(`{"onFailed":[{"url":"` + url + `"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	go h.mgr.Run(ctx)
	from := h.mgr.LastEvent()

	stage := events.NewJournal(h.cfg.Layout().Events())
	if _, err := stage.Append(ctx, events.Event{Type: events.Failed, VM: vm.ID, Source: events.SourceLifecycle, Reason: wire.ReasonKernelPanic, Message: "the guest kernel panicked"}); err != nil {
		t.Fatal(err)
	}
	evs, err := h.mgr.Events(ctx, from, 10)
	if err != nil || len(evs) != 1 || evs[0].Type != events.Failed || evs[0].VM != vm.ID {
		t.Fatalf("watcher got %+v, %v", evs, err)
	}
	select {
	case call := <-calls:
		if call["event"] != "onFailed" || call["vmId"] != vm.ID || call["reason"] != wire.ReasonKernelPanic || call["seq"] != float64(evs[0].Seq) {
			t.Fatalf("the onFailed hook got %v", call)
		}
	case <-ctx.Done():
		t.Fatal("the onFailed hook was not called for the stage's event")
	}
	// The hook's failure is counted once it has returned.
	testenv.Eventually(t, 10*time.Second, "the failed onFailed hook to be counted", func() bool {
		return metricValue(t, h.scrape(t), "mergen_hook_failures_total", map[string]string{"event": "onFailed"}) == 1
	})
}
