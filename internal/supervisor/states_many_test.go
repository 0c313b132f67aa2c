package supervisor_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/supervisor"
)

// The detached supervisor reads the states of a long list in parts at
// once: each VM still gets its own state, as State gives it, and an
// invalid id is an error naming it that hides no other VM.
func TestDetachedStatesOfManyVMs(t *testing.T) {
	runRoot, configRoot := t.TempDir(), t.TempDir()
	s, err := supervisor.New("detached", supervisor.Options{RunRoot: runRoot, ConfigRoot: configRoot, UnitPrefix: "mergen"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < 300; i++ {
		id := store.NewID()
		ids = append(ids, id)
		if i%3 == 0 {
			continue // never ran: no state recorded
		}
		rec := fmt.Sprintf(`{"activeState":"failed","subState":"failed","result":"exit-code","restarts":%d,"updated":"2026-11-30T18:00:00Z"}`, i)
		if i%3 == 1 {
			rec = `{"activeState":"inactive","subState":"dead","result":"success","updated":"2026-11-30T18:00:00Z"}`
		}
		if err := os.MkdirAll(filepath.Join(runRoot, id), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.WriteFile(filepath.Join(runRoot, id, "supervisor.state.json"), []byte(rec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ids = append(ids, "../bad")
	ctx := context.Background()
	got, err := s.States(ctx, ids)
	if err == nil || !strings.Contains(err.Error(), `"../bad"`) {
		t.Errorf("States with an invalid id: %v, want an error naming it", err)
	}
	if len(got) != len(ids) {
		t.Fatalf("States = %d VMs, want %d", len(got), len(ids))
	}
	for i, id := range ids[:len(ids)-1] {
		want, err := s.State(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got[id] != want {
			t.Fatalf("States[%s] = %+v, State = %+v", id, got[id], want)
		}
		if i%3 == 2 && (got[id].ActiveState != "failed" || got[id].Restarts != i) {
			t.Fatalf("VM %d: %+v, want failed with %d restarts", i, got[id], i)
		}
	}
}
