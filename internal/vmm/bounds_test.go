package vmm

import (
	"strings"
	"testing"
)

// Instance and drive ids are taken up to their bounds and refused past
// them (the length is checked apart from the character class).
func TestIDsAreBoundedInLength(t *testing.T) {
	for _, tc := range []struct {
		name  string
		valid func(string) bool
		id    string
		want  bool
	}{
		{"instance id of 64", validID, "a" + strings.Repeat("-", 63), true},
		{"instance id of 65", validID, strings.Repeat("a", 65), false},
		{"instance id starting with a hyphen", validID, "-a", false},
		{"instance id empty", validID, "", false},
		{"drive id of 32", validDriveID, strings.Repeat("_", 32), true},
		{"drive id of 33", validDriveID, strings.Repeat("a", 33), false},
		{"drive id empty", validDriveID, "", false},
	} {
		if got := tc.valid(tc.id); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
