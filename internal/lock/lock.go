// Package lock is mergen's one file lock: an exclusive flock(2) on a file,
// waited for until a context ends. Locks serialise operations across
// processes (the daemon, the lifecycle stages, the detached supervisors);
// the kernel releases them when their holder dies, so a crash never leaves
// a VM locked.
package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
)

// Poll is how often a waiter retries.
const Poll = 10 * time.Millisecond

// ErrBusy is returned when ctx ends before the lock is free.
var ErrBusy = errors.New("locked by another holder")

// Lock is a held lock.
type Lock struct{ f *flock.Flock }

// Release unlocks. The file stays: removing it would let a waiter lock an
// unlinked inode while a newcomer locks a fresh file.
func (l *Lock) Release() {
	if l != nil && l.f != nil {
		l.f.Unlock()
	}
}

// Acquire takes the lock on path, creating the file (and its directory)
// when missing, waiting until ctx is done. The error wraps ErrBusy (and
// ctx's error) when the wait ran out.
func Acquire(ctx context.Context, path string) (*Lock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f := flock.New(path)
	ok, err := f.TryLockContext(ctx, Poll)
	if err == nil && ok {
		return &Lock{f}, nil
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		cause := ctx.Err()
		if cause == nil {
			cause = err
		}
		return nil, fmt.Errorf("lock %s: %w (%w)", path, ErrBusy, cause)
	}
	return nil, fmt.Errorf("lock %s: %w", path, err)
}

// Try takes the lock only if it is free now; otherwise the error wraps
// ErrBusy.
func Try(path string) (*Lock, error) {
	f := flock.New(path)
	ok, err := f.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if !ok {
		return nil, fmt.Errorf("lock %s: %w", path, ErrBusy)
	}
	return &Lock{f}, nil
}

// AcquireShared takes a shared lock on path, which any number of holders
// may have at once and which keeps Try (exclusive) out: readers of
// something its owner must not remove while they read. It waits as Acquire
// does.
func AcquireShared(ctx context.Context, path string) (*Lock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f := flock.New(path)
	ok, err := f.TryRLockContext(ctx, Poll)
	if err == nil && ok {
		return &Lock{f}, nil
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return nil, fmt.Errorf("lock %s: %w", path, ErrBusy)
	}
	return nil, fmt.Errorf("lock %s: %w", path, err)
}
