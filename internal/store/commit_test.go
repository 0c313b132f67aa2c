package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/testenv"
)

// groupHost is a store with a Committer whose groups the test shapes: it
// holds the allocation lock while creates queue up, so that releasing it
// lets them commit as one group.
type groupHost struct {
	t *testing.T
	s *Store
	c *Committer

	mu     sync.Mutex
	groups []groupEnd // one per Committed call
}

type groupEnd struct {
	gen      uint64
	complete bool
}

func newGroupHost(t *testing.T) *groupHost {
	h := &groupHost{t: t, s: newStore(t)}
	h.c = h.s.NewCommitter(CommitterOptions{Committed: func(gen uint64, complete bool) {
		h.mu.Lock()
		h.groups = append(h.groups, groupEnd{gen, complete})
		h.mu.Unlock()
	}})
	return h
}

// hold takes the allocation lock; the returned func releases it.
func (h *groupHost) hold() func() {
	h.t.Helper()
	unlock, err := h.s.LockAlloc(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return unlock
}

// result is one Create's outcome.
type result struct {
	id  string
	err error
}

// start calls Create in the background and waits until it is queued, so
// that the creates of a test queue in the order they were started.
func (h *groupHost) start(ctx context.Context, plan Plan) <-chan result {
	h.t.Helper()
	out := make(chan result, 1)
	h.queued("create", func() {
		id, err := h.c.Create(ctx, plan)
		out <- result{id, err}
	})
	return out
}

// queued runs call (a Create or Remove) in the background and waits until
// it has joined the Committer's queue.
func (h *groupHost) queued(what string, call func()) {
	h.t.Helper()
	h.c.mu.Lock()
	before := len(h.c.queue)
	h.c.mu.Unlock()
	go call()
	testenv.Eventually(h.t, 10*time.Second, "the "+what+" to queue", func() bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		return len(h.c.queue) > before
	})
}

func (h *groupHost) ends() []groupEnd {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]groupEnd(nil), h.groups...)
}

// planOf is a plan that stores VM id with the usual files.
func planOf(id string) Plan {
	return func(uint64) (string, map[string][]byte, error) { return id, files(id), nil }
}

// hidden lists the hidden staging and trash entries of the config root.
func hidden(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.Layout.ConfigRoot)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") || strings.HasPrefix(e.Name(), ".trash-") || isAtomicTemp(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// Creates that arrive while the allocation lock is busy are committed
// together: one group, one generation bump, every VM whole in the store
// when its Create returns.
func TestCreatesThatArriveTogetherAreCommittedAsOneGroup(t *testing.T) {
	h := newGroupHost(t)
	gen0, _ := h.s.Generation()
	release := h.hold()
	const n = 6
	ids := make([]string, n)
	outs := make([]<-chan result, n)
	for i := range ids {
		ids[i] = NewID()
		outs[i] = h.start(context.Background(), planOf(ids[i]))
	}
	release()
	for i, out := range outs {
		r := <-out
		if r.err != nil || r.id != ids[i] {
			t.Fatalf("create %d = %q, %v; want %s", i, r.id, r.err, ids[i])
		}
		for name, want := range files(ids[i]) {
			got, err := h.s.ReadFile(ids[i], name)
			if err != nil || string(got) != string(want) {
				t.Fatalf("vm %d: %s = %q, %v; want what was planned", i, name, got, err)
			}
		}
	}
	if ends := h.ends(); len(ends) != 1 || ends[0] != (groupEnd{gen0 + 1, true}) {
		t.Fatalf("groups committed: %+v; want one, complete, at generation %d", ends, gen0+1)
	}
	if gen, _ := h.s.Generation(); gen != gen0+1 {
		t.Fatalf("generation %d after one group; want %d", gen, gen0+1)
	}
	if left := hidden(t, h.s); len(left) != 0 {
		t.Fatalf("staging left behind: %v", left)
	}
}

// Plans run one at a time in the order their creates were made, each
// after the earlier ones of its group: what an earlier plan decided (here:
// the next number to hand out) the later ones see.
func TestPlansRunInOrderAndSeeEarlierDecisions(t *testing.T) {
	h := newGroupHost(t)
	release := h.hold()
	var (
		next  = 1 // the "allocator": guarded by the allocation lock
		order []int
		got   = map[string]int{}
	)
	const n = 5
	outs := make([]<-chan result, n)
	for i := range outs {
		outs[i] = h.start(context.Background(), func(uint64) (string, map[string][]byte, error) {
			id := NewID()
			order = append(order, i)
			got[id] = next
			next++
			return id, files(id), nil
		})
	}
	release()
	seen := map[int]bool{}
	for _, out := range outs {
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		if seen[got[r.id]] {
			t.Fatalf("number %d handed out twice", got[r.id])
		}
		seen[got[r.id]] = true
	}
	if fmt.Sprint(order) != "[0 1 2 3 4]" {
		t.Fatalf("plans ran in the order %v; want the order of the creates", order)
	}
}

// Plans and drops are given the store's generation as their group found
// it under the lock: the one the group before left, which another process
// may have bumped in between (a rebuilt view is then due), and not the
// one their own group will leave.
func TestPlansAndDropsAreGivenTheStoresGeneration(t *testing.T) {
	h := newGroupHost(t)
	first := NewID()
	if _, err := h.c.Create(context.Background(), planOf(first)); err != nil {
		t.Fatal(err)
	}
	// Another process changes the set of VMs.
	bumped, err := h.s.BumpGeneration()
	if err != nil {
		t.Fatal(err)
	}
	release := h.hold()
	var planned, dropped []uint64
	created := h.start(context.Background(), func(gen uint64) (string, map[string][]byte, error) {
		planned = append(planned, gen)
		id := NewID()
		return id, files(id), nil
	})
	removed := h.startRemove(context.Background(), first, func(gen uint64) error {
		dropped = append(dropped, gen)
		return nil
	})
	release()
	if r := <-created; r.err != nil {
		t.Fatal(r.err)
	}
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(planned, dropped) != fmt.Sprint([]uint64{bumped}, []uint64{bumped}) {
		t.Fatalf("the plan was given %v, the drop %v; want the generation another process left, %d", planned, dropped, bumped)
	}
	if ends := h.ends(); len(ends) != 2 || ends[1].gen != bumped+1 {
		t.Fatalf("groups ended at %+v; want the second one group after %d", ends, bumped)
	}
}

// One member's failure is its own: a plan that refuses, a panicking plan,
// a VM that cannot be staged and an id already taken within the group fail
// those creates alone, with their own errors; the others are stored, and
// nothing of the failed ones is left.
func TestOneMembersFailureFailsItAlone(t *testing.T) {
	h := newGroupHost(t)
	release := h.hold()
	good1, good2, dup := NewID(), NewID(), NewID()
	outs := []<-chan result{
		h.start(context.Background(), planOf(good1)),
		h.start(context.Background(), func(uint64) (string, map[string][]byte, error) {
			return "", nil, errdefs.Conflict("tags.name: %q is already the name of vm x", "web")
		}),
		h.start(context.Background(), func(uint64) (string, map[string][]byte, error) { panic("a bug") }),
		h.start(context.Background(), func(uint64) (string, map[string][]byte, error) {
			id := NewID()
			f := files(id)
			f["../escape"] = []byte("x")
			return id, f, nil
		}),
		h.start(context.Background(), planOf(dup)),
		h.start(context.Background(), planOf(dup)),
		h.start(context.Background(), planOf(good2)),
	}
	release()
	var rs []result
	for _, out := range outs {
		rs = append(rs, <-out)
	}
	for _, i := range []int{0, 4, 6} {
		if rs[i].err != nil {
			t.Errorf("create %d failed with the others: %v", i, rs[i].err)
		}
	}
	if err := rs[1].err; !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "tags.name") {
		t.Errorf("refused plan: %v; want its own conflict", err)
	}
	if err := rs[2].err; err == nil || !strings.Contains(err.Error(), "a bug") {
		t.Errorf("panicking plan: %v; want an error naming the panic", err)
	}
	if err := rs[3].err; !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "../escape") {
		t.Errorf("unstageable VM: %v; want invalid, naming the file", err)
	}
	if err := rs[5].err; !errdefs.IsConflict(err) || !strings.Contains(err.Error(), dup) {
		t.Errorf("second create of %s: %v; want a conflict naming it", dup, err)
	}
	ids, _ := h.s.IDs()
	if len(ids) != 3 {
		t.Errorf("stored %v; want the three good VMs", ids)
	}
	// Some planned VMs were not stored: the caller is told so.
	if ends := h.ends(); len(ends) != 1 || ends[0].complete {
		t.Errorf("groups: %+v; want one, not complete", ends)
	}
	if left := hidden(t, h.s); len(left) != 0 {
		t.Errorf("staging left behind: %v", left)
	}
}

// A group that cannot be committed at all fails every member, each with an
// error that names its VM and the cause, and leaves nothing.
func TestAGroupThatCannotCommitFailsEveryMemberClearly(t *testing.T) {
	h := newGroupHost(t)
	// A generation that cannot be replaced: the set of VMs must not
	// change without it.
	if err := os.Mkdir(h.s.Layout.Generation(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.s.Layout.Generation(), "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	release := h.hold()
	ids := []string{NewID(), NewID(), NewID()}
	var outs []<-chan result
	for _, id := range ids {
		outs = append(outs, h.start(context.Background(), planOf(id)))
	}
	release()
	for _, out := range outs {
		r := <-out
		if r.err == nil || !strings.Contains(r.err.Error(), "generation") {
			t.Fatalf("create in a group that cannot commit: %v; want an error naming the generation", r.err)
		}
	}
	if got, _ := h.s.IDs(); len(got) != 0 {
		t.Fatalf("stored %v; want nothing", got)
	}
	if left := hidden(t, h.s); len(left) != 0 {
		t.Fatalf("staging left behind: %v", left)
	}
}

// When the generation cannot be bumped after the group was flushed, no
// VM of the group is placed and none removed: the set of VMs never
// changes behind a cache's back.
func TestAGenerationThatCannotBeReplacedChangesNoVM(t *testing.T) {
	s := newStore(t)
	c := s.NewCommitter(CommitterOptions{})
	kept := NewID()
	if err := s.Create(kept, files(kept)); err != nil {
		t.Fatal(err)
	}
	var (
		sts    []*staged
		owners []*member
	)
	for range 3 {
		id := NewID()
		st, err := s.stageFlushed(id, files(id))
		if err != nil {
			t.Fatal(err)
		}
		sts, owners = append(sts, st), append(owners, &member{id: id})
	}
	removal := &member{removal: &removal{id: kept}}
	// A rename over a non-empty directory fails.
	blocked := filepath.Join(s.Layout.ConfigRoot, "blocked")
	if err := os.MkdirAll(filepath.Join(blocked, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	gen, err := atomicfile.Prepare(blocked, []byte("1"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	after, placed, complete := c.change(7, gen, nil, sts, owners, []*member{removal})
	if after != 7 || len(placed) != 0 || complete {
		t.Errorf("change = generation %d, %d placed, complete %v; want 7, none, false", after, len(placed), complete)
	}
	for i, m := range append(owners, removal) {
		id := m.id
		if m.removal != nil {
			id = m.removal.id
		}
		if m.err == nil || !strings.Contains(m.err.Error(), "generation") || !strings.Contains(m.err.Error(), id) {
			t.Errorf("member %d: %v; want an error naming its VM and the generation", i, m.err)
		}
	}
	if ids, _ := s.IDs(); len(ids) != 1 || ids[0] != kept {
		t.Errorf("stored %v; want only %s, which was to be removed", ids, kept)
	}
	if left := hidden(t, s); len(left) != 0 {
		t.Errorf("staging left behind: %v", left)
	}
}

// No create is answered before the config root is synced after its
// rename; the next group does not wait for that sync: its plans run
// meanwhile.
func TestACreateIsAnsweredOnlyOnceTheRootIsSynced(t *testing.T) {
	h := newGroupHost(t)
	gate := make(chan struct{})
	h.c.syncRoot = func() error {
		<-gate
		return atomicfile.SyncDir(h.s.Layout.ConfigRoot)
	}
	first := NewID()
	out := make(chan result, 1)
	go func() {
		id, err := h.c.Create(context.Background(), planOf(first))
		out <- result{id, err}
	}()
	testenv.Eventually(t, 10*time.Second, "the first VM to be renamed into place", func() bool { return h.s.Exists(first) })
	secondPlanned := make(chan struct{})
	second := make(chan result, 1)
	go func() {
		id, err := h.c.Create(context.Background(), func(uint64) (string, map[string][]byte, error) {
			close(secondPlanned)
			id := NewID()
			return id, files(id), nil
		})
		second <- result{id, err}
	}()
	<-secondPlanned // the allocation lock was released before the sync
	select {
	case r := <-out:
		t.Fatalf("the create was answered (%v) before the config root was synced", r.err)
	default:
	}
	close(gate)
	for _, c := range []chan result{out, second} {
		if r := <-c; r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// When the config root cannot be synced after the renames, the group's VMs
// were never durable: they are removed again (after a generation bump) and
// their creates fail, naming the cause.
func TestAFailedSyncOfTheRootUndoesTheGroup(t *testing.T) {
	h := newGroupHost(t)
	h.c.syncRoot = func() error { return errors.New("input/output error") }
	gen0, _ := h.s.Generation()
	release := h.hold()
	var outs []<-chan result
	for range 3 {
		outs = append(outs, h.start(context.Background(), planOf(NewID())))
	}
	release()
	for _, out := range outs {
		r := <-out
		if r.err == nil || r.id != "" || !strings.Contains(r.err.Error(), "sync the config root: input/output error") {
			t.Fatalf("create = %q, %v; want no id and an error naming the failed sync", r.id, r.err)
		}
	}
	if ids, _ := h.s.IDs(); len(ids) != 0 {
		t.Fatalf("stored %v; want the group undone", ids)
	}
	if left := hidden(t, h.s); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
	ends := h.ends()
	if gen, _ := h.s.Generation(); gen != gen0+2 || len(ends) != 2 || ends[1].complete {
		t.Fatalf("generation %d (from %d), groups %+v; want one bump to add the VMs and one to remove them, the caller told its view is stale", gen, gen0, ends)
	}
}

// A caller that gives up while its create waits for the allocation lock
// gets a conflict, and its plan never runs: no VM appears after the
// caller was told the create failed.
func TestACreateGivenUpBeforeItsPlanNeverRuns(t *testing.T) {
	h := newGroupHost(t)
	release := h.hold()
	ctx, cancel := context.WithCancel(context.Background())
	ran := false
	out := h.start(ctx, func(uint64) (string, map[string][]byte, error) {
		ran = true
		id := NewID()
		return id, files(id), nil
	})
	cancel()
	r := <-out
	if !errdefs.IsConflict(r.err) || !strings.Contains(r.err.Error(), "allocation is busy") {
		t.Fatalf("given-up create = %v; want a conflict saying the allocation is busy", r.err)
	}
	// The next create commits; the given-up plan is not part of it.
	later := h.start(context.Background(), planOf(NewID()))
	release()
	if r := <-later; r.err != nil {
		t.Fatal(r.err)
	}
	if ran {
		t.Fatal("the plan of a create given up before it ran was run")
	}
	if ids, _ := h.s.IDs(); len(ids) != 1 {
		t.Fatalf("stored %v; want only the later VM", ids)
	}
}

// Many callers at once: every create is stored whole, and there are
// fewer groups than creates (they shared flushes).
func TestConcurrentCreatesAreAllStored(t *testing.T) {
	h := newGroupHost(t)
	const n = 64
	var wg sync.WaitGroup
	errs := make([]error, n)
	ids := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = h.c.Create(context.Background(), planOf(NewID()))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		if _, err := h.s.ReadMeta(ids[i]); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	ends := h.ends()
	if gen, _ := h.s.Generation(); gen != uint64(len(ends)) {
		t.Fatalf("generation %d after %d groups; want one bump per group", gen, len(ends))
	}
	for _, e := range ends {
		if !e.complete {
			t.Fatalf("a group was not complete: %+v", ends)
		}
	}
}
