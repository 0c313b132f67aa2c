package guest

import (
	"sync"

	"golang.org/x/sys/unix"
)

// children hands the exit statuses of the commands the exec agent starts
// to their sessions. As PID 1, mergen-init collects every child with one
// wait4(-1) loop (supervise), so a session cannot wait for its own: the
// loop gives the status of a registered child here. mu is held by the
// loop around its wait4 calls and by start around fork and registration,
// so no child can be collected before it is registered.
type children struct {
	mu      sync.Mutex
	waiting map[int]chan unix.WaitStatus
	// ownWait: not PID 1 (tests): nothing collects every child, so each
	// is waited for by a goroutine of its own.
	ownWait bool
}

func newChildren(ownWait bool) *children {
	return &children{waiting: map[int]chan unix.WaitStatus{}, ownWait: ownWait}
}

// start runs fork, which starts one child and returns its pid, and
// returns a channel that receives the child's status once it has exited.
func (c *children) start(fork func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pid, err := fork()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	if c.ownWait {
		go func() {
			var ws unix.WaitStatus
			for {
				_, err := unix.Wait4(pid, &ws, 0, nil)
				if err != unix.EINTR {
					break
				}
			}
			ch <- ws
		}()
		return pid, ch, nil
	}
	c.waiting[pid] = ch
	return pid, ch, nil
}

// collected passes on the status of a child the reaper collected; it
// reports whether the child was one of start's. Callers hold mu.
func (c *children) collected(pid int, ws unix.WaitStatus) bool {
	ch, ok := c.waiting[pid]
	if ok {
		delete(c.waiting, pid)
		ch <- ws
	}
	return ok
}
