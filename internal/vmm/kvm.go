package vmm

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// ioctl numbers from linux/kvm.h (_IO(0xAE, n)).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12 // stable since Linux 2.6.22
)

// kvmDevice is where KVM lives.
const kvmDevice = "/dev/kvm"

func openKVM() error { return probeKVM(kvmDevice) }

// probeKVM checks that the KVM device opens read-write, speaks the stable API and
// lets this process create a VM. That is as far as a probe can go: it
// cannot tell whether guests will then run correctly (see kvmTrusted).
func probeKVM(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("%s: KVM_GET_API_VERSION: %w", dev, errno)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%s: API version %d, want %d", dev, v, kvmAPIVersion)
	}
	vm, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("%s: KVM_CREATE_VM: %w", dev, errno)
	}
	syscall.Close(int(vm))
	return nil
}

// kvmTrusted reports whether QEMU should pick KVM on its own (see
// probeKVMTrust). Every create renders a QEMU config and asks, and the
// probe makes a VM, which takes milliseconds: its answer is reused for
// kvmVerdictTTL, as what it finds changes only when the host's KVM does.
func kvmTrusted() (bool, string) { return kvmVerdict.get(time.Now()) }

const kvmVerdictTTL = 2 * time.Second

var kvmVerdict = &verdictMemo{probe: probeKVMTrust, ttl: kvmVerdictTTL}

// verdictMemo reuses a probe's answer for ttl.
type verdictMemo struct {
	probe func() (bool, string)
	ttl   time.Duration

	mu  sync.Mutex
	at  time.Time // when the answer was probed; zero: never
	ok  bool
	why string
}

func (m *verdictMemo) get(now time.Time) (bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.at.IsZero() || now.Sub(m.at) >= m.ttl || now.Before(m.at) {
		m.ok, m.why = m.probe()
		m.at = now
	}
	return m.ok, m.why
}

// probeKVMTrust: /dev/kvm must work (openKVM), and it must not be the PVM
// flavour of nested KVM (kvm_pvm), under which stock distribution kernels
// die within a minute with "emulation failure". A PVM host can still force
// KVM with MGR_QEMU_ACCEL=kvm.
func probeKVMTrust() (bool, string) {
	if err := openKVM(); err != nil {
		return false, err.Error()
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return false, "/dev/kvm is PVM nested virtualisation (kvm_pvm), which crashes stock guest kernels"
	}
	return true, "/dev/kvm works"
}
