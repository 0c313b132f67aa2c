package forwarder

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// System calls on the relay loops' descriptors, made directly rather
// than through syscall.Syscall. Every one of them returns at once: the
// sockets are non-blocking, epoll is polled with a zero timeout, and
// shutdown and close (no SO_LINGER) only queue work for the kernel.
//
// syscall.Syscall tells the scheduler that the goroutine may block
// (entersyscall/exitsyscall): bookkeeping that costs more than a short
// socket call, and a call the runtime's monitor thread sees in progress
// on two of its ticks gets its processor handed to another thread.
// Measured on the forwarder benchmark: keep-alive requests/s up by about
// a fifth with the direct calls.
//
// Only non-blocking calls belong here: a direct call that blocked would
// hold its processor, and everything queued on it, until it returned.

// readFD and writeFD retry a call a signal interrupted; writeFD reports
// 0 bytes, never -1, with its error.
func readFD(fd int, p []byte) (int, error) {
	for {
		r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(bufPtr(p)), uintptr(len(p)))
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return -1, e
	}
}

func writeFD(fd int, p []byte) (int, error) {
	for {
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(bufPtr(p)), uintptr(len(p)))
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// rawEpollPoll returns the events that are ready now, without waiting.
func rawEpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func rawShutdown(fd, how int) error {
	if _, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0); e != 0 {
		return e
	}
	return nil
}

func rawClose(fd int) error {
	if _, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0); e != 0 {
		return e
	}
	return nil
}

func bufPtr(p []byte) unsafe.Pointer {
	if len(p) == 0 {
		return nil
	}
	return unsafe.Pointer(&p[0])
}
