package supervisor

import (
	"regexp"
	"strings"
	"testing"
)

// validID accepts exactly what its specification, a regular expression,
// does.
func TestValidIDIsItsRegularExpression(t *testing.T) {
	spec := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	ids := []string{
		"", "a", "0", "-", ".", "_", "a-", "a.b", "a..b", "..", "a/b", "a b", "a@b", "é", "a\x00",
		"3f2b6c1e-8d4a-4b7e-9c2d-1a2b3c4d5e6f", "3F2B6C1E_x.y-z", strings.Repeat("a", 128), strings.Repeat("a", 129),
		"-leading", ".leading", "_leading", "trailing.", "a\n",
	}
	for c := 0; c < 256; c++ {
		ids = append(ids, "x"+string(rune(c)), string([]byte{byte(c)}), string([]byte{'x', byte(c)}))
	}
	for _, id := range ids {
		want := spec.MatchString(id) && !strings.Contains(id, "..")
		if got := validID(id); got != want {
			t.Errorf("validID(%q) = %v, want %v", id, got, want)
		}
	}
}
