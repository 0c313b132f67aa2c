package envfile

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadFollowsSystemdSyntax(t *testing.T) {
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
			got, err := Read(path)
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
	if got, err := Read(filepath.Join(t.TempDir(), "missing")); err != nil || got != nil {
		t.Fatalf("missing file: %q, %v", got, err)
	}
}

func TestRenderQuotesWhatSystemdWouldReadDifferentlyAndParseReadsItBack(t *testing.T) {
	env := []string{"PLAIN=abc", "SPACE=two words", "QUOTES=say \"hi\"", "DOLLAR=$HOME", "HASH=a#b", "SEMI=a;b", "BACKSLASH=a\\b", "EMPTY="}
	b, err := Render("a comment\nover two lines", env)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# a comment\n# over two lines\n", "PLAIN=abc\n", `SPACE="two words"`, `DOLLAR="\$HOME"`, `BACKSLASH="a\\b"`, `EMPTY=""`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("rendered file lacks %q:\n%s", want, b)
		}
	}
	got, err := Parse(b)
	if err != nil || !slices.Equal(got, env) {
		t.Fatalf("round trip: got %q, %v; want %q", got, err, env)
	}
}

func TestRenderRefusesWhatWouldChangeTheFilesMeaning(t *testing.T) {
	for _, kv := range []string{"NOEQUALS", "1BAD=x", "NL=a\nEVIL=1", "CR=a\rb", "NUL=a\x00b"} {
		if _, err := Render("", []string{kv}); err == nil {
			t.Errorf("Render(%q) succeeded", kv)
		}
	}
}

func TestLookupTakesTheLastValue(t *testing.T) {
	env := []string{"A=1", "B=2", "A=3"}
	if v, ok := Lookup(env, "A"); !ok || v != "3" {
		t.Errorf("Lookup(A) = %q, %v; want 3", v, ok)
	}
	if _, ok := Lookup(env, "C"); ok {
		t.Error("Lookup(C) found something")
	}
}
