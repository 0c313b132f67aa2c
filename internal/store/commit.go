package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/regfile"
)

// A new VM reaches the store in three steps, each safe to be cut short by a
// SIGKILL or a power failure:
//
//  1. stage: its files are written into a hidden staging directory
//     (".tmp-<id>-*"), not flushed. No reader takes a hidden entry for a
//     VM, and Sweep removes it.
//  2. flush: every file and the staging directory itself are fsynced. The
//     directory now holds the VM whole on disk, still under its hidden
//     name.
//  3. place: the staging directory is renamed to the VM's id, and the config
//     root is fsynced. rename(2) is atomic: a reader, a killed daemon on
//     restart, or a host after a power failure sees either no VM or the
//     whole flushed directory, never part of one. The root's fsync makes
//     the rename itself survive a power failure: only after it is a create
//     acknowledged.
//
// Step 2 comes before step 3 so that no rename can reach the disk ahead of
// the contents it names (a filesystem may commit a rename of a directory
// whose files' data it has not written yet). A SIGKILL alone never loses
// written data (it stays in the page cache), so for a killed daemon the
// rename is what makes a VM appear whole; the flushes are for the host
// losing power.
//
// A VM leaves the store by one rename too: its config directory is renamed
// to a hidden trash name (".trash-<id>-*", which Sweep removes) and the
// config root is synced; only then are its directories deleted. A reader
// sees the whole VM or none, and a VM whose delete was acknowledged stays
// gone after a power failure.
//
// The flushes are what a create or delete waits for; a Committer shares
// them among the changes that arrive together (group commit).

// staged is a VM directory written under its staging name, its files
// still open for the flush.
type staged struct {
	id, dir string
	files   []*os.File
}

// stage checks the VM and writes its files into a new staging directory,
// without flushing them.
func (s *Store) stage(id string, files map[string][]byte) (*staged, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	if _, ok := files[FileMeta]; !ok {
		return nil, fmt.Errorf("create vm %s: %s missing", id, FileMeta)
	}
	for name := range files {
		if !storedFile(name) {
			return nil, errdefs.Invalid("create vm %s: %q is not a stored file", id, name)
		}
	}
	if _, err := os.Lstat(s.Layout.ConfigDir(id)); err == nil {
		return nil, errdefs.Conflict("vm %s already exists", id)
	}
	tmp, err := os.MkdirTemp(s.Layout.ConfigRoot, s.Layout.StagingPattern(id))
	if err != nil {
		return nil, fmt.Errorf("create vm %s: %w", id, err)
	}
	st := &staged{id: id, dir: tmp}
	if err := os.Chmod(tmp, 0o755); err != nil {
		st.discard()
		return nil, fmt.Errorf("create vm %s: %w", id, err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f, err := regfile.Open(filepath.Join(tmp, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm(name))
		if err != nil {
			st.discard()
			return nil, fmt.Errorf("create vm %s: %w", id, err)
		}
		st.files = append(st.files, f)
		if _, err := f.Write(files[name]); err != nil {
			st.discard()
			return nil, fmt.Errorf("create vm %s: %w", id, err)
		}
	}
	return st, nil
}

// flush makes the staged directory whole on disk: its files' contents,
// then its entries. The files are closed after.
//
// The writeback of every file's data is started first, all at once: the
// device takes those writes together, and the file system gives each
// file its blocks now, so the inodes are final before the first fsync
// (without it each fsync allocated its own file's blocks and wrote the
// inode block again: a VM's flush alone took ~40% longer). Then the
// files and the directory are fsynced all at once: on a file system
// without a journal each fsync ends with a flush of the device's cache,
// and flushes asked for together are sent as one, where fsyncs in turn
// waited for one flush each (bench/controlplane.sh, in turn with fsyncs
// one after another: 800–843 creates/s in turn, 875–980 at once; see
// docs/performance.md). With a journal, the first fsync's commit
// carries the others. The VMs of a group are flushed at once too
// (Committer.commit).
func (st *staged) flush() error {
	for _, f := range st.files {
		// Only a start: durability is the fsyncs' below, which also
		// report a write that failed.
		_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	errs := make([]error, len(st.files)+1)
	var wg sync.WaitGroup
	for i, f := range st.files {
		wg.Go(func() { errs[i] = f.Sync() })
	}
	wg.Go(func() { errs[len(st.files)] = atomicfile.SyncDir(st.dir) })
	wg.Wait()
	st.close()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("create vm %s: flush: %w", st.id, err)
	}
	return nil
}

func (st *staged) close() {
	for _, f := range st.files {
		f.Close()
	}
	st.files = nil
}

// discard removes the staging directory.
func (st *staged) discard() {
	st.close()
	os.RemoveAll(st.dir)
}

// stageFlushed is stage and flush; nothing is left when either fails.
func (s *Store) stageFlushed(id string, files map[string][]byte) (*staged, error) {
	st, err := s.stage(id, files)
	if err != nil {
		return nil, err
	}
	if err := st.flush(); err != nil {
		st.discard()
		return nil, err
	}
	return st, nil
}

// place puts flushed staged directories into place and makes that
// durable: rename, then one sync of the config root (a Committer runs the
// two apart: see settle). errs[i] is the outcome of sts[i]; nothing is
// left of a VM that failed.
func (s *Store) place(sts []*staged) []error {
	errs, placed := s.rename(sts)
	if len(placed) == 0 {
		return errs
	}
	if err := atomicfile.SyncDir(s.Layout.ConfigRoot); err != nil {
		s.unplace(sts, placed)
		for _, i := range placed {
			errs[i] = fmt.Errorf("create vm %s: %w", sts[i].id, err)
		}
	}
	return errs
}

// rename puts flushed staged directories into place, each by its rename.
// errs[i] is the outcome of sts[i]; placed lists the indexes of the ones
// renamed; a directory that was not placed is removed. A VM whose rename
// fails (its id was taken) fails alone. Until the config root is synced
// the renames may not survive a power failure.
func (s *Store) rename(sts []*staged) (errs []error, placed []int) {
	errs = make([]error, len(sts))
	for i, st := range sts {
		if err := os.Rename(st.dir, s.Layout.ConfigDir(st.id)); err != nil {
			os.RemoveAll(st.dir)
			if errors.Is(err, fs.ErrExist) || errors.Is(err, errNotEmpty) {
				errs[i] = errdefs.Conflict("vm %s already exists", st.id)
			} else {
				errs[i] = fmt.Errorf("create vm %s: %w", st.id, err)
			}
			continue
		}
		placed = append(placed, i)
	}
	return errs, placed
}

// unplace removes the VMs placed by rename whose sync failed: they were
// never acknowledged, and a create that fails leaves nothing behind. Hold
// the allocation lock.
func (s *Store) unplace(sts []*staged, placed []int) {
	for _, i := range placed {
		trash := s.Layout.Trash(sts[i].id, strconv.FormatInt(time.Now().UnixNano(), 36))
		if os.Rename(s.Layout.ConfigDir(sts[i].id), trash) == nil {
			os.RemoveAll(trash)
		}
	}
}

// maxInFlight bounds the VMs a group stages and flushes at once.
const maxInFlight = 16

// A Plan decides one new VM under the allocation lock: its id and the
// files of its directory (see Create). The plans of a group run one at a
// time, in the order their Creates were called, and each must see what the
// earlier ones decided (the caller keeps that in its own index: see
// CommitterOptions.Committed). gen is the store's generation as the group
// found it under the lock: no other process changes the set of VMs before
// the group is done, so a view of the store made at gen, with the earlier
// plans' decisions on top, is current; the plan need not read it again.
type Plan func(gen uint64) (id string, files map[string][]byte, err error)

// A Drop forgets a VM's allocations under the allocation lock, before the
// VM is taken out of the store (see Remove); gen is as a Plan's.
type Drop func(gen uint64) error

// CommitterOptions are a Committer's collaborators.
type CommitterOptions struct {
	// Committed runs at the end of every group, still under the
	// allocation lock, with the store's generation after the group and
	// whether every VM whose plan succeeded was stored (false: some were
	// planned but are not in the store, and what the caller derived from
	// the plans is ahead of it).
	Committed func(gen uint64, complete bool)
}

// errBusy is a create's answer when its caller gave up before its turn
// came: what LockAlloc says when the wait for the lock runs out.
var errBusy = errdefs.Conflict("allocation is busy: another operation holds its lock")

// maxGroup bounds the creates committed together.
const maxGroup = 128

// Committer changes the set of VMs for many concurrent callers, in groups:
// the creates and removals that arrive while a group is being written form
// the next one, which takes the allocation lock once, runs its plans one
// after another while the VMs already planned are staged and flushed at
// once (their fsyncs share the filesystem's journal commits), bumps the
// generation once, renames the new VMs into place and the removed ones
// away, and releases the lock; the config root's one sync then runs beside
// the next group. A create or removal returns when it is durable (or has
// failed); each member of a group gets its own outcome.
//
// The guarantees are Create's and Remove's: allocations are decided and
// made visible under the allocation lock (plans see earlier members; other
// processes see the VMs, placed before the lock is released), and the
// order of flush and rename (see the top of this file) makes every VM
// appear whole or not at all, and vanish in one rename.
type Committer struct {
	s         *Store
	committed func(gen uint64, complete bool)
	// syncRoot makes the renames into the config root durable; tests
	// make it fail or wait.
	syncRoot func() error

	mu      sync.Mutex
	queue   []*member // waiting for a group, oldest first
	running bool      // a goroutine is committing groups
}

// member is one create or removal in a Committer.
type member struct {
	ctx     context.Context
	plan    Plan     // a create's
	removal *removal // or a removal
	// taken (guarded by the Committer's mu) is set when the member leaves
	// the queue: from then on its waiter waits for done, whatever ctx says.
	taken bool
	id    string // the created VM
	err   error
	done  chan struct{}
}

// removal is a VM to take out of the store.
type removal struct {
	id    string
	drop  Drop   // run under the allocation lock, before
	trash string // where its config directory went
}

// NewCommitter returns a Committer creating VMs in s.
func (s *Store) NewCommitter(o CommitterOptions) *Committer {
	return &Committer{s: s, committed: o.Committed, syncRoot: func() error { return atomicfile.SyncDir(s.Layout.ConfigRoot) }}
}

// Create runs plan in the next group and writes the VM it decides. It
// returns the VM's id once the VM is durably stored, or the plan's error,
// or why the VM could not be stored (then nothing of it is left). When ctx
// ends before the plan has run, the plan never runs and Create returns a
// conflict: the allocation lock stayed busy; once it has run, Create waits
// for the outcome, which takes no longer than the group's flush.
func (c *Committer) Create(ctx context.Context, plan Plan) (string, error) {
	m := &member{ctx: ctx, plan: plan, done: make(chan struct{})}
	err := c.submit(m)
	return m.id, err
}

// Remove takes VM id out of the store in the next group: drop runs first,
// under the allocation lock, in the order of the group's plans (the caller
// forgets the VM's allocations there; an error from drop keeps the VM);
// then the VM's config directory is renamed away, so that readers see it
// whole until it is gone, and the config root is synced. Once that is
// durable, Remove deletes the VM's config, run and data directories,
// outside the lock. A VM that is not in the store is not found. When ctx
// ends before drop has run, Remove returns a conflict and the VM stays.
func (c *Committer) Remove(ctx context.Context, id string, drop Drop) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	m := &member{ctx: ctx, removal: &removal{id: id, drop: drop}, done: make(chan struct{})}
	if err := c.submit(m); err != nil {
		if err == errBusy {
			return fmt.Errorf("delete vm %s: %w", id, err)
		}
		return err
	}
	return c.s.removeDirs(id, m.removal.trash)
}

// submit queues m for the next group and waits for its outcome: m.err, or
// errBusy when ctx ended before m was taken into a group.
func (c *Committer) submit(m *member) error {
	ctx := m.ctx
	c.mu.Lock()
	c.queue = append(c.queue, m)
	if !c.running {
		c.running = true
		go c.run()
	}
	c.mu.Unlock()
	select {
	case <-m.done:
		return m.err
	case <-ctx.Done():
	}
	c.mu.Lock()
	if !m.taken {
		c.dequeue(m)
		c.mu.Unlock()
		return errBusy
	}
	c.mu.Unlock()
	<-m.done
	return m.err
}

// dequeue removes m from the queue. Hold mu.
func (c *Committer) dequeue(m *member) bool {
	for i, q := range c.queue {
		if q == m {
			c.queue = append(c.queue[:i], c.queue[i+1:]...)
			m.taken = true
			return true
		}
	}
	return false
}

// run commits groups until the queue is empty.
func (c *Committer) run() {
	for {
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.running = false
			c.mu.Unlock()
			return
		}
		head := c.queue[0]
		c.mu.Unlock()
		// Waiting for the lock as long as the oldest caller waits: when it
		// gives up, the next oldest's wait begins.
		unlock, err := c.s.LockAlloc(head.ctx)
		if err != nil {
			c.mu.Lock()
			gone := c.dequeue(head)
			c.mu.Unlock()
			if gone {
				// Given up while waiting: the same answer as a caller
				// that gave up in the queue (a removal's names its VM).
				head.err = errBusy
				if head.ctx.Err() == nil {
					head.err = fmt.Errorf("%s: %w", head.op(), err)
				}
				close(head.done)
			}
			continue
		}
		c.mu.Lock()
		n := min(len(c.queue), maxGroup)
		group := append([]*member(nil), c.queue[:n]...)
		c.queue = append(c.queue[:0], c.queue[n:]...)
		for _, m := range group {
			m.taken = true
		}
		c.mu.Unlock()
		placed := c.commit(group)
		unlock()
		// The config root's sync runs beside the next group: the VMs are
		// in place (the next plans, in this process or another, see
		// them), and only their answers wait for it.
		go func() {
			c.settle(placed)
			for _, m := range group {
				close(m.done)
			}
		}()
	}
}

// settle syncs the config root after a group's renames. When that fails,
// the group's new VMs are removed again under the allocation lock (the set
// of VMs changes: the generation is bumped first), and their creates fail.
// The removals fail too, but their VMs stay out of the store: their config
// directories are left where they were renamed, for the start-up sweep,
// since after a power failure the rename may be undone and the directory
// back under its id.
func (c *Committer) settle(placed []placement) {
	if len(placed) == 0 {
		return
	}
	err := c.syncRoot()
	if err == nil {
		return
	}
	var sts []*staged
	for _, p := range placed {
		if p.st == nil {
			p.m.err = fmt.Errorf("delete vm %s: sync the config root: %w (its config directory is left at %s)", p.m.removal.id, err, p.m.removal.trash)
			continue
		}
		p.m.err, p.m.id = fmt.Errorf("create vm %s: sync the config root: %w", p.st.id, err), ""
		sts = append(sts, p.st)
	}
	if len(sts) == 0 {
		return
	}
	unlock, lerr := c.s.LockAlloc(context.Background())
	if lerr != nil {
		for _, p := range placed {
			if p.st != nil {
				p.m.err = fmt.Errorf("%w; the VM is left in the store: %w", p.m.err, lerr)
			}
		}
		return
	}
	defer unlock()
	gen, gerr := c.s.BumpGeneration()
	idx := make([]int, len(sts))
	for i := range sts {
		idx[i] = i
	}
	c.s.unplace(sts, idx)
	if gerr != nil {
		gen = 0 // unknown: the caller's view is dropped anyway
	}
	if c.committed != nil {
		c.committed(gen, false)
	}
}

// placement is a member whose VM was renamed: a new one into place (st),
// or a removed one away (st nil).
type placement struct {
	m  *member
	st *staged
}

// commit writes one group up to the renames, and returns the VMs renamed
// into place or away, which settle makes durable. Hold the allocation
// lock.
func (c *Committer) commit(group []*member) (placed []placement) {
	gen, err := c.s.Generation()
	if err != nil {
		for _, m := range group {
			m.err = fmt.Errorf("%s: %w", m.op(), err)
		}
		return nil
	}
	// The generation's replacement is written and flushed beside the VMs.
	next := make(chan *atomicfile.Pending, 1)
	var nextErr error
	go func() {
		p, err := atomicfile.Prepare(c.s.Layout.Generation(), generationFile(gen+1), 0o644)
		if err == nil {
			if err = p.Sync(); err != nil {
				p.Discard()
			}
		}
		if err != nil {
			p, nextErr = nil, err
		}
		next <- p
	}()
	// The plans run one at a time and in order: each decides from what the
	// earlier ones decided. Each VM is staged and flushed as soon as its
	// plan has run, beside the next plans: nothing in one VM's directory
	// depends on another's.
	var (
		dirs     = make([]*staged, len(group))
		removals []*member // whose drop ran
		wg       sync.WaitGroup
		slots    = make(chan struct{}, maxInFlight)
	)
	for i, m := range group {
		if m.ctx.Err() != nil {
			m.err = errBusy
			continue
		}
		if r := m.removal; r != nil {
			if m.err = runDrop(r, gen); m.err == nil {
				removals = append(removals, m)
			}
			continue
		}
		id, files, err := runPlan(m.plan, gen)
		if err != nil {
			m.err = err
			continue
		}
		m.id = id
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			dirs[i], m.err = c.s.stageFlushed(id, files)
		}()
	}
	wg.Wait()
	pending := <-next
	var (
		sts      []*staged
		owners   []*member
		complete = true
	)
	for i, m := range group {
		switch {
		case dirs[i] != nil:
			sts, owners = append(sts, dirs[i]), append(owners, m)
		case m.id != "":
			complete = false // planned, not stored
		}
	}
	if len(sts) == 0 && len(removals) == 0 {
		if pending != nil {
			pending.Discard()
		}
	} else {
		var ok bool
		gen, placed, ok = c.change(gen, pending, nextErr, sts, owners, removals)
		complete = complete && ok
	}
	for _, m := range group {
		if m.err != nil {
			m.id = ""
		}
	}
	if c.committed != nil {
		c.committed(gen, complete)
	}
	return placed
}

// change makes a group's changes to the set of VMs, once every new VM is
// flushed: the generation's replacement (pending, or the error that kept
// it from being written) is placed first, so that a cache checked against
// the generation never holds a set older than the store's; then the new
// VMs (sts, of owners) are renamed into place and the removed ones away.
// Without the generation nothing changes and every member fails. It
// returns the generation after, the VMs renamed, and whether every change
// was made.
func (c *Committer) change(gen uint64, pending *atomicfile.Pending, bumpErr error, sts []*staged, owners, removals []*member) (after uint64, placed []placement, complete bool) {
	if pending != nil {
		bumpErr = pending.Place()
	}
	if bumpErr != nil {
		for i, st := range sts {
			st.discard()
			owners[i].err = fmt.Errorf("create vm %s: bump the store's generation: %w", st.id, bumpErr)
		}
		for _, m := range removals {
			m.err = fmt.Errorf("delete vm %s: bump the store's generation: %w", m.removal.id, bumpErr)
		}
		return gen, nil, false
	}
	complete = true
	errs, renamed := c.s.rename(sts)
	for i, err := range errs {
		if err != nil {
			owners[i].err, complete = err, false
		}
	}
	for _, i := range renamed {
		placed = append(placed, placement{owners[i], sts[i]})
	}
	for _, m := range removals {
		trash, err := c.s.toTrash(m.removal.id)
		if err != nil {
			m.err, complete = err, false
			continue
		}
		m.removal.trash = trash
		placed = append(placed, placement{m: m})
	}
	return gen + 1, placed, complete
}

// runPlan runs a plan, turning a panic into its member's error: the plan
// runs in the Committer's goroutine, where a panic would end the daemon,
// not one request.
func runPlan(p Plan, gen uint64) (id string, files map[string][]byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("create vm: plan failed: %v", r)
		}
	}()
	return p(gen)
}

// runDrop runs a removal's drop, as runPlan runs a plan.
func runDrop(r *removal, gen uint64) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("delete vm %s: %v", r.id, p)
		}
	}()
	if r.drop == nil {
		return nil
	}
	return r.drop(gen)
}

// op names what m does, for its errors.
func (m *member) op() string {
	if m.removal != nil {
		return "delete vm " + m.removal.id
	}
	return "create vm"
}
