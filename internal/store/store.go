// Package store keeps every VM as a directory of files under the config root:
// the only state mergen has. The daemon can be killed at any instant; what it
// finds on disk afterwards is always whole.
//
// Guarantees:
//   - A VM directory appears whole or not at all: Create writes every file
//     into a hidden temporary directory, flushes it and renames it into
//     place (see commit.go); a Committer does the same for many concurrent
//     creates with shared flushes.
//   - A VM directory disappears whole: Delete renames it to a hidden trash
//     name before removing it. Hidden entries (".tmp-*", ".trash-*") are never
//     VMs and are swept by Sweep at start-up, together with the run and data
//     directories and lock files of VMs that have no record (what a delete
//     killed half-way leaves).
//   - Single files are replaced atomically (temp + fsync + rename).
//   - Lock serialises lifecycle operations on one VM across processes (flock
//     on a file under the run root); LockAlloc does the same for allocation of
//     guest IPs and host ports, which are derived from the stored metadata.
//   - Records of an older version are read in the current form (ReadMeta)
//     and rewritten in it under the VM's lock (Migrate).
//
// Every path comes from the layout (internal/layout); the store joins no
// root with an id itself.
package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/envfile"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/filecache"
	"github.com/mergenhq/mergen/internal/jsondoc"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/lock"
	"github.com/mergenhq/mergen/internal/proc"
)

// Store keeps VMs under the layout's roots.
type Store struct {
	Layout layout.Layout

	// metas keeps decoded records, each used while its meta.json is the
	// file it was decoded from (see internal/filecache): a list decodes
	// only the records that changed since the last one, whoever wrote
	// them. Nil (a Store not from Open) caches nothing.
	metas *filecache.Cache[Meta]
	// roots are the disk roots the cached records share (see share.go).
	roots sharedRoots

	// allocTurn (a one-slot semaphore) queues this process's takers of the
	// allocation lock before they take the file lock: waiters in one
	// process take turns at once instead of polling the flock. Nil (a
	// Store not from Open) leaves it to the flock alone.
	allocTurn chan struct{}
}

// Open creates the roots when missing and returns the store.
func Open(l layout.Layout) (*Store, error) {
	for _, d := range []string{l.ConfigRoot, l.LocksDir(), l.DataRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, errdefs.Unavailable("open store: %w", err)
		}
	}
	spreadVMDirs(l.ConfigRoot)
	return &Store{Layout: l, metas: &filecache.Cache[Meta]{}, allocTurn: make(chan struct{}, 1)}, nil
}

// ValidateID accepts only canonical lowercase UUIDs: ids become directory and
// unit names, so nothing else (no "..", no "/") may pass.
func ValidateID(id string) error {
	u, err := uuid.Parse(id)
	if err != nil || u.String() != id {
		return errdefs.Invalid("id %q is not a lowercase UUID", id)
	}
	return nil
}

// NewID returns a fresh random VM id.
func NewID() string { return uuid.NewString() }

// Paths are the host paths of VM id.
func (s *Store) Paths(id string) layout.VM { return s.Layout.VM(id) }

// Create writes the VM's files (name → content) as one new directory,
// durably, before it returns. It fails with a conflict when the VM already
// exists. meta.json must be among the files. The caller holds the
// allocation lock when the files hold allocations; the daemon creates
// through a Committer instead, which flushes concurrent creates together.
func (s *Store) Create(id string, files map[string][]byte) error {
	st, err := s.stageFlushed(id, files)
	if err != nil {
		return err
	}
	return s.place([]*staged{st})[0]
}

// filePerm: every stored file may carry secrets (extraEnv in the record
// and on the kernel command line in vm.json, hook headers, the env file),
// so all are private to root; readers of records (the forwarder) run as
// root.
func filePerm(string) os.FileMode { return 0o600 }

// Exists reports whether the VM directory exists.
func (s *Store) Exists(id string) bool {
	if ValidateID(id) != nil {
		return false
	}
	st, err := os.Stat(s.Layout.VM(id).Meta)
	return err == nil && st.Mode().IsRegular()
}

// ReadFile returns one of the VM's stored files.
func (s *Store) ReadFile(id, name string) ([]byte, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	if !storedFile(name) {
		return nil, errdefs.Invalid("vm %s: %q is not a stored file", id, name)
	}
	b, err := os.ReadFile(filepath.Join(s.Layout.ConfigDir(id), name))
	if errors.Is(err, fs.ErrNotExist) {
		if !s.Exists(id) {
			return nil, errdefs.NotFound("vm %s not found", id)
		}
		return nil, errdefs.NotFound("vm %s has no %s", id, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s of vm %s: %w", name, id, err)
	}
	return b, nil
}

func storedFile(name string) bool {
	switch name {
	case FileVMConfig, FileMeta, FileHooks, FileLifecycleHooks, FileEnv:
		return true
	}
	return false
}

// WriteFile atomically replaces one of the VM's files.
func (s *Store) WriteFile(id, name string, data []byte) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	if !storedFile(name) {
		return errdefs.Invalid("vm %s: %q is not a stored file", id, name)
	}
	if !s.Exists(id) {
		return errdefs.NotFound("vm %s not found", id)
	}
	return atomicfile.WriteFile(filepath.Join(s.Layout.ConfigDir(id), name), data, filePerm(name))
}

// ReadMeta loads the VM's record, in the current form whatever version is
// stored (see Migrate).
//
// A record unchanged since it was last read is not decoded again; the
// caller gets its own copy, free to modify.
func (s *Store) ReadMeta(id string) (Meta, error) {
	if err := ValidateID(id); err != nil {
		return Meta{}, err
	}
	return s.readMeta(id, s.Layout.MetaFile(id))
}

// readMeta is ReadMeta of a valid id whose record is at path.
func (s *Store) readMeta(id, path string) (Meta, error) {
	m, err := s.metas.Load(path, func(b []byte) (Meta, bool, error) {
		m, upgraded, err := decodeMeta(b, func() ([]string, error) { return envfile.Read(s.Layout.VM(id).Env) })
		// An upgraded record depends on its env file too: not cached.
		if err == nil && !upgraded {
			m.shareCommon()
			m.DiskRoots = s.roots.share(m.DiskRoots)
		}
		return m, !upgraded, err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return Meta{}, errdefs.NotFound("vm %s not found", id)
	}
	if err != nil {
		return Meta{}, fmt.Errorf("read record of vm %s: %w", id, err)
	}
	if m.ID != id {
		return Meta{}, fmt.Errorf("read record of vm %s: it names vm %q", id, m.ID)
	}
	return m.clone(), nil
}

// MarshalMeta renders meta.json.
func MarshalMeta(m Meta) ([]byte, error) {
	m.Version = RecordVersion
	b, err := jsondoc.Encode(m)
	if err != nil {
		return nil, fmt.Errorf("encode meta of vm %s: %w", m.ID, err)
	}
	return b, nil
}

// IDs lists the ids of all stored VMs, sorted.
func (s *Store) IDs() ([]string, error) {
	entries, err := os.ReadDir(s.Layout.ConfigRoot)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") || ValidateID(e.Name()) != nil {
			continue
		}
		ids = append(ids, e.Name())
	}
	return ids, nil
}

// List loads meta.json of every VM. A VM deleted while listing is skipped; a
// VM whose meta.json cannot be read is reported in the error but does not
// hide the others.
func (s *Store) List() ([]Meta, error) {
	ids, err := s.IDs()
	if err != nil {
		return nil, err
	}
	metas := make([]Meta, 0, len(ids))
	var errs []error
	// Records of VMs no longer stored leave the cache.
	paths := make([]string, len(ids))
	present := make(map[string]bool, len(ids))
	for i, id := range ids {
		paths[i] = s.Layout.MetaFile(id)
		present[paths[i]] = true
	}
	s.metas.Retain(func(path string) bool { return present[path] })
	for i, id := range ids {
		m, err := s.readMeta(id, paths[i])
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		metas = append(metas, m)
	}
	return metas, errors.Join(errs...)
}

// Delete removes the VM's config directory, run directory and data directory.
// The config directory vanishes in one rename, so no reader sees half a VM.
// The caller bumps the generation first, under the allocation lock; a
// Committer's Remove does all of it, for many VMs at once.
func (s *Store) Delete(id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	trash, err := s.toTrash(id)
	if err != nil {
		return err
	}
	if err := atomicfile.SyncDir(s.Layout.ConfigRoot); err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	return s.removeDirs(id, trash)
}

// toTrash renames the VM's config directory to a trash name (which Sweep
// removes), taking the VM out of the store in one step. Until the config
// root is synced the rename may not survive a power failure.
func (s *Store) toTrash(id string) (string, error) {
	p := s.Layout.VM(id)
	trash := s.Layout.Trash(id, strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.Rename(p.ConfigDir, trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", errdefs.NotFound("vm %s not found", id)
		}
		return "", fmt.Errorf("delete vm %s: %w", id, err)
	}
	s.metas.Forget(p.Meta)
	return trash, nil
}

// removeDirs deletes what is left of a VM taken out of the store: its
// config directory at trash, its run and data directories.
func (s *Store) removeDirs(id, trash string) error {
	p := s.Layout.VM(id)
	var errs []error
	for _, d := range []string{trash, p.RunDir, p.DataDir} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	return nil
}

// RemoveLock deletes the VM's lock files. Call it while holding the lock, as
// the last step of a delete: a waiter that then acquires the orphaned lock
// finds the VM gone.
func (s *Store) RemoveLock(id string) error {
	p := s.Layout.VM(id)
	for _, p := range []string{p.StageLock, p.Lock} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove lock of vm %s: %w", id, err)
		}
	}
	return nil
}

// Sweep removes what interrupted creates, deletes and atomic writes left
// behind: hidden temporary and trash directories in the config root,
// temporary files of atomic writes there and inside VM directories, and the
// run directories, data directories and lock files of VMs without a record.
//
// It holds the allocation lock throughout (waiting until ctx ends): creates
// write a VM's directory under it and deletes remove a VM's record, its
// directories and its locks under it, so neither is half-way meanwhile. An
// orphan whose lifecycle, stage or supervisor lock is held, or whose VMM
// still runs, is left alone and reported.
func (s *Store) Sweep(ctx context.Context) error {
	unlock, err := s.LockAlloc(ctx)
	if err != nil {
		return fmt.Errorf("sweep store: %w", err)
	}
	defer unlock()
	root := s.Layout.ConfigRoot
	entries, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("sweep store: %w", err)
	}
	var errs []error
	remove := func(p string) {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, layout.StagingPrefix), strings.HasPrefix(n, layout.TrashPrefix), isAtomicTemp(n):
			remove(filepath.Join(root, n))
		case e.IsDir() && ValidateID(n) == nil:
			dir := s.Layout.ConfigDir(n)
			inner, _ := os.ReadDir(dir)
			for _, f := range inner {
				if isAtomicTemp(f.Name()) {
					remove(filepath.Join(dir, f.Name()))
				}
			}
		}
	}
	errs = append(errs, s.sweepOrphans())
	return errors.Join(errs...)
}

// sweepOrphans removes the run and data directories and the lock files of
// ids that have no VM directory. Call it under the allocation lock.
func (s *Store) sweepOrphans() error {
	ids, err := s.IDs()
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, id := range ids {
		known[id] = true
	}
	orphans := map[string]bool{}
	for _, dir := range []string{s.Layout.RunRoot, s.Layout.VMsDataDir()} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() && ValidateID(e.Name()) == nil && !known[e.Name()] {
				orphans[e.Name()] = true
			}
		}
	}
	locks, _ := os.ReadDir(s.Layout.LocksDir())
	for _, e := range locks {
		id, _, _ := strings.Cut(e.Name(), ".")
		if ValidateID(id) != nil || known[id] {
			continue
		}
		p := s.Layout.VM(id)
		if e.Name() == filepath.Base(p.Lock) || e.Name() == filepath.Base(p.StageLock) {
			orphans[id] = true
		}
	}
	var errs []error
	for id := range orphans {
		if err := s.removeOrphan(id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeOrphan removes what VM id, which has no record, left under the run
// and data roots, unless something still uses it.
func (s *Store) removeOrphan(id string) error {
	p := s.Layout.VM(id)
	if s.Exists(id) {
		return nil
	}
	var held []*lock.Lock
	defer func() {
		for _, l := range held {
			l.Release()
		}
	}()
	for _, lp := range []string{p.Lock, p.StageLock, p.SupervisorLock} {
		if _, err := os.Stat(lp); err != nil {
			continue // nobody can hold a lock on a missing file
		}
		l, err := lock.Try(lp)
		if err != nil {
			return fmt.Errorf("sweep vm %s (no record): left alone: %w", id, err)
		}
		held = append(held, l)
	}
	if vmm, err := proc.ReadPIDFile(p.PIDFile); err == nil && vmm.Alive() {
		return fmt.Errorf("sweep vm %s (no record): left alone: its VMM (pid %d) still runs", id, vmm.PID)
	}
	var errs []error
	for _, d := range []string{p.RunDir, p.DataDir, p.StageLock, p.Lock} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweep vm %s (no record): %w", id, err)
	}
	return nil
}

// isAtomicTemp matches the temporary files of internal/atomicfile
// (".<name>.tmp-<random>").
func isAtomicTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-")
}

// Unlock releases a lock taken with Lock, LockStage or LockAlloc.
type Unlock func()

// Lock takes the VM's lifecycle lock, waiting until ctx is done.
func (s *Store) Lock(ctx context.Context, id string) (Unlock, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	return acquire(ctx, s.Layout.VM(id).Lock, "vm "+id)
}

// LockStage takes the VM's stage lock. Lifecycle stages run by the service
// manager hold it while they change the VM's network and runtime files, and
// the delete stage holds it while it tears them down, so the two never
// interleave. It is distinct from Lock because the daemon holds Lock for a
// whole start or stop, during which the service manager runs the stages.
func (s *Store) LockStage(ctx context.Context, id string) (Unlock, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	return acquire(ctx, s.Layout.VM(id).StageLock, "stages of vm "+id)
}

// LockAlloc takes the host-wide allocation lock, waiting until ctx is
// done. It excludes every other holder, in this process or another.
func (s *Store) LockAlloc(ctx context.Context) (Unlock, error) {
	if s.allocTurn == nil {
		return acquire(ctx, s.Layout.AllocLock(), "allocation")
	}
	select {
	case s.allocTurn <- struct{}{}:
	case <-ctx.Done():
		return nil, errdefs.Conflict("allocation is busy: another operation holds its lock")
	}
	unlock, err := acquire(ctx, s.Layout.AllocLock(), "allocation")
	if err != nil {
		<-s.allocTurn
		return nil, err
	}
	return func() {
		unlock()
		<-s.allocTurn
	}, nil
}

func acquire(ctx context.Context, path, what string) (Unlock, error) {
	l, err := lock.Acquire(ctx, path)
	if errors.Is(err, lock.ErrBusy) {
		return nil, errdefs.Conflict("%s is busy: another operation holds its lock", what)
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	return l.Release, nil
}

// Generation is a counter bumped before every change to the set of VMs. A
// cache derived from the store is valid while the generation is unchanged.
func (s *Store) Generation() (uint64, error) {
	b, err := os.ReadFile(s.Layout.Generation())
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read generation: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, nil // a torn or foreign file: treat as unknown, caches rebuild
	}
	return n, nil
}

// BumpGeneration advances the generation. Hold the allocation lock.
func (s *Store) BumpGeneration() (uint64, error) {
	g, err := s.Generation()
	if err != nil {
		return 0, err
	}
	g++
	if err := atomicfile.WriteFile(s.Layout.Generation(), generationFile(g), 0o644); err != nil {
		return 0, err
	}
	return g, nil
}

func generationFile(g uint64) []byte { return []byte(strconv.FormatUint(g, 10)) }
