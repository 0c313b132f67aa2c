package guest

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// outb writes val to the I/O port port (exitdev_linux_amd64.s).
func outb(port uint16, val uint8)

// writeExitDevice writes status to the VMM's exit device at I/O port port.
// On QEMU's isa-debug-exit the VMM exits right there, with status<<1|1.
func writeExitDevice(port uint16, status byte) error {
	// The port permission is the calling thread's: the write must happen
	// on the same thread, or it faults.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Ioperm(int(port), 1, 1); err != nil {
		return err
	}
	outb(port, status)
	return nil
}
