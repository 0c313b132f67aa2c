package supervisor

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadEnvFile(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		want          []string
		err           string
	}{
		{name: "plain", content: "A=1\nB=two words\n", want: []string{"A=1", "B=two words"}},
		{name: "comments and blanks", content: "# c\n; c\n\n  A = 1 \n", want: []string{"A=1"}},
		{name: "double quotes", content: `A="x \"y\" z"` + "\n", want: []string{`A=x "y" z`}},
		{name: "single quotes", content: `A='$HOME \n'`, want: []string{`A=$HOME \n`}},
		{name: "empty value", content: "A=\n", want: []string{"A="}},
		{name: "no equals", content: "A=1\nnonsense\n", err: "line 2"},
		{name: "bad key", content: "1A=1\n", err: "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "env")
			if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := readEnvFile(path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	// Like systemd's "-" prefix: a VM without an env file has no extra
	// environment.
	if got, err := readEnvFile(filepath.Join(t.TempDir(), "missing")); err != nil || got != nil {
		t.Fatalf("missing file: %q, %v", got, err)
	}
}
