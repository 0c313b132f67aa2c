package vmnet

import (
	"strings"
	"testing"
)

// Interface and namespace names: 1 to 15 bytes (IFNAMSIZ less the NUL).
func TestInterfaceNamesAreBoundedInLength(t *testing.T) {
	for name, want := range map[string]bool{
		strings.Repeat("a", 15): true, strings.Repeat("a", 16): false,
		"tap-1.x_y": true, "": false, "a b": false,
	} {
		if got := validIfName(name); got != want {
			t.Errorf("validIfName(%q) = %v, want %v", name, got, want)
		}
	}
}
