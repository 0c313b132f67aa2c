package lock

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestAHeldLockMakesOthersWaitUntilTheirContextEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "vm.lock")
	held, err := Acquire(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := Acquire(ctx, path); !errors.Is(err, ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Acquire while held: %v, want ErrBusy and the context's error", err)
	}
	if _, err := Try(path); !errors.Is(err, ErrBusy) {
		t.Fatalf("Try while held: %v", err)
	}

	// A waiter gets the lock as soon as it is released.
	got := make(chan error, 1)
	go func() {
		l, err := Acquire(context.Background(), path)
		if err == nil {
			l.Release()
		}
		got <- err
	}()
	held.Release()
	if err := <-got; err != nil {
		t.Fatalf("waiter after release: %v", err)
	}
	l, err := Try(path)
	if err != nil {
		t.Fatalf("Try when free: %v", err)
	}
	l.Release()
}
