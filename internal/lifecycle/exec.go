package lifecycle

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// lookPath resolves the VMM binary before the process image is replaced, so
// that a missing binary is a clear error instead of a failed exec.
func lookPath(bin string) (string, error) {
	if filepath.IsAbs(bin) {
		return bin, nil
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("vmm binary %q not found: %w", bin, err)
	}
	return p, nil
}
