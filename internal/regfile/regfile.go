// Package regfile opens files the way the store, the event journal and the
// file caches use them: regular files and directories read, written and
// synced by blocking system calls, never waited on by the runtime's poller.
//
// os.OpenFile offers every descriptor it opens to the poller: it sets the
// descriptor non-blocking, asks epoll to watch it, and for a regular file
// (which epoll refuses) sets it blocking again: four fcntl calls and a
// failed epoll_ctl per open. A create opens about ten files; those five
// calls were about a quarter of all the system calls it made. Open makes one
// openat and, in os.NewFile, one fcntl.
package regfile

import (
	"os"

	"golang.org/x/sys/unix"
)

// Open opens path with os.OpenFile's flags and permissions (before the
// umask), close-on-exec, as a blocking *os.File. Errors are *os.PathError,
// as os.OpenFile's.
func Open(path string, flag int, perm os.FileMode) (*os.File, error) {
	for {
		fd, err := unix.Open(path, flag|unix.O_CLOEXEC, uint32(perm.Perm()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
}
