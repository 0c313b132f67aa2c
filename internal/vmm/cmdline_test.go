package vmm

import (
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/errdefs"
)

// A kernel command line Firecracker would refuse at boot, once it has
// added its own arguments, is refused when vm.json is rendered, naming the
// request fields it carries; one that fits is rendered. QEMU's lower limit
// (its configuration file's) stays its own.
func TestFirecrackersCommandLineMustFitWithWhatItAdds(t *testing.T) {
	fc := newFirecracker(config.Driver{Vsock: true, Entropy: true})
	s := testSpec(t, t.TempDir())
	base := s.BootArgs
	s.BootArgs = base + " mergen.env=" + strings.Repeat("A", 1500)
	if _, err := fc.Config(s); err != nil {
		t.Fatalf("a %d-byte command line: %v; want it rendered", len(s.BootArgs), err)
	}
	// Exactly the limit before Firecracker's own arguments: too long once
	// its devices and root drive are announced.
	s.BootArgs = base + " x=" + strings.Repeat("A", fcMaxCommandLine-len(base)-len(" x=")-len(" pci=off"))
	_, err := fc.Config(s)
	if !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "bootArgs, extraEnv and argv") || !strings.Contains(err.Error(), "at most 2047") {
		t.Fatalf("a %d-byte command line: %v; want it refused as invalid, naming the fields and the limit", len(s.BootArgs)+len(" pci=off"), err)
	}

	if _, err := newQEMU(config.Driver{QEMUAccel: "tcg"}).Config(s); err == nil || !strings.Contains(err.Error(), "bootArgs") {
		t.Fatalf("QEMU with a %d-byte command line: %v; want it refused, naming bootArgs", len(s.BootArgs), err)
	}
}
