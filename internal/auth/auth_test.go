package auth_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/auth"
	"github.com/mergenhq/mergen/internal/testenv"
)

const (
	tokA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" // 43 characters, like a generated one
	tokB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func writeFile(t *testing.T, content string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return p
}

// A missing file is created, with its directory, holding one generated
// token of 256 bits (43 base64url characters), mode 0600; opening it again
// creates nothing and accepts the same token.
func TestOpenCreatesAMissingFileWithOneToken(t *testing.T) {
	p := filepath.Join(t.TempDir(), "etc", "mergen", "api-token")
	tokens, created, err := auth.Open(p)
	if err != nil || !created {
		t.Fatalf("Open(missing) = created %v, %v; want created", created, err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("created with mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(p)); di.Mode().Perm() != 0o755 {
		t.Errorf("directory created with mode %04o, want 0755", di.Mode().Perm())
	}
	b, _ := os.ReadFile(p)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 1 || len(lines[0]) != 43 || strings.ContainsAny(lines[0], "+/=") {
		t.Fatalf("created file holds %d lines, first of %d characters; want one base64url token of 43", len(lines), len(lines[0]))
	}
	if err := tokens.Check("Bearer " + lines[0]); err != nil {
		t.Errorf("the created token is refused: %v", err)
	}
	first, err := auth.First(p)
	if err != nil || first != lines[0] {
		t.Errorf("First = %v; want the created token", err)
	}
	again, created, err := auth.Open(p)
	if err != nil || created {
		t.Fatalf("Open(existing) = created %v, %v; want the same file loaded", created, err)
	}
	if err := again.Check("Bearer " + lines[0]); err != nil {
		t.Errorf("reopened file refuses its token: %v", err)
	}
	left, _ := os.ReadDir(filepath.Dir(p))
	if len(left) != 1 {
		t.Errorf("directory holds %d entries after create, want the file only", len(left))
	}
}

// Every token in the file is accepted, comments and blank lines are not
// tokens; anything else is refused with the matching error, and no error
// repeats what was sent.
func TestCheckAcceptsEveryTokenOfTheFileAndNothingElse(t *testing.T) {
	p := writeFile(t, "# rotated 2024-05-01\n"+tokA+"\n\n  "+tokB+"  \r\n", 0o600)
	tokens, err := auth.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"Bearer " + tokA, "Bearer " + tokB, "bearer " + tokA, "BEARER  " + tokB} {
		if err := tokens.Check(h); err != nil {
			t.Errorf("Check(%.12q…) = %v; want accepted", h, err)
		}
	}
	oneOff := tokA[:len(tokA)-1] + "b"
	cases := []struct {
		header string
		want   error
	}{
		{"", auth.ErrNoToken},
		{"Bearer", auth.ErrNoToken},
		{"Bearer   ", auth.ErrNoToken},
		{"Basic " + tokA, auth.ErrScheme},
		{tokA, auth.ErrScheme},
		{"Token " + tokA, auth.ErrScheme},
		{"Bearer " + oneOff, auth.ErrInvalid},
		{"Bearer " + tokA + "a", auth.ErrInvalid},
		{"Bearer " + tokA[:40], auth.ErrInvalid},
		{"Bearer # rotated 2024-05-01", auth.ErrInvalid},
		{"Bearer " + tokA + " " + tokB, auth.ErrInvalid},
	}
	for _, c := range cases {
		err := tokens.Check(c.header)
		if !errors.Is(err, c.want) {
			t.Errorf("Check(%.20q) = %v; want %v", c.header, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), tokA[:8]) || strings.Contains(err.Error(), tokB[:8])) {
			t.Errorf("Check error %q repeats a token", err)
		}
	}
}

// A file unfit to hold the keys to the host is refused with an error that
// names the file and the fix, and never holds a token.
func TestLoadRefusesUnfitFilesSayingWhy(t *testing.T) {
	short := "tooshort-but-secret"
	cases := []struct {
		name    string
		content string
		perm    os.FileMode
		want    []string
	}{
		{"world-readable", tokA + "\n", 0o644, []string{"group or others", "0644", "chmod 600"}},
		{"group-readable", tokA + "\n", 0o640, []string{"group or others", "0640", "chmod 600"}},
		{"world-writable", tokA + "\n", 0o602, []string{"group or others", "chmod 600"}},
		{"empty", "", 0o600, []string{"holds no token"}},
		{"comments only", "# nothing yet\n\n", 0o600, []string{"holds no token"}},
		{"short token", tokA + "\n" + short + "\n", 0o600, []string{"line 2", "shorter than 32"}},
		{"token with a space", "aaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n", 0o600, []string{"line 1", "space"}},
		{"non-ASCII", "ééééééééééééééééééééééééééééééééé\n", 0o600, []string{"line 1", "printable ASCII"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, c.content, c.perm)
			_, err := auth.Load(p)
			if err == nil {
				t.Fatal("loaded; want refused")
			}
			msg := err.Error()
			for _, w := range append(c.want, p) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			for _, secret := range []string{tokA[:8], short, "bbbbbbbbbbbbbbbb"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q repeats the file's content", msg)
				}
			}
			// Open refuses it the same way and leaves it as it was.
			if _, created, err := auth.Open(p); err == nil || created {
				t.Errorf("Open = created %v, %v; want the same refusal", created, err)
			}
			if b, _ := os.ReadFile(p); string(b) != c.content {
				t.Error("Open changed a refused file")
			}
		})
	}
}

// A file the daemon cannot read, a directory in its place and a link to
// nothing are refused with the reason; none is replaced by a new file.
func TestUnreadableFilesAreRefused(t *testing.T) {
	dir := t.TempDir()
	d := filepath.Join(dir, "a-directory")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := auth.Open(d); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Open(directory) = %v; want not a regular file", err)
	}
	link := filepath.Join(dir, "dangling")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), link); err != nil {
		t.Fatal(err)
	}
	if _, _, err := auth.Open(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("Open(dangling link) = %v; want refused naming the link", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "nowhere")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("Open wrote through a dangling link")
	}
	if _, err := auth.Load(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v; want fs.ErrNotExist", err)
	}
	if os.Geteuid() != 0 { // root reads anything
		p := writeFile(t, tokA+"\n", 0o600)
		os.Chmod(p, 0o000)
		if _, _, err := auth.Open(p); err == nil || !strings.Contains(err.Error(), "cannot be read") {
			t.Errorf("Open(mode 000) = %v; want cannot be read", err)
		}
	}
}

// Tokens are rotated by editing the file: the new set applies within a
// second, without a restart. A file that becomes unfit stops every check
// (fails closed) until it is fixed.
func TestTheFileIsReadAgainWhenItChanges(t *testing.T) {
	p := writeFile(t, tokA+"\n", 0o600)
	tokens, err := auth.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, ok func() bool) { t.Helper(); testenv.Eventually(t, 5*time.Second, what, ok) }
	if err := os.WriteFile(p, []byte(tokB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor("the rotated token accepted", func() bool { return tokens.Check("Bearer "+tokB) == nil })
	if err := tokens.Check("Bearer " + tokA); !errors.Is(err, auth.ErrInvalid) {
		t.Errorf("the removed token: %v; want ErrInvalid", err)
	}
	os.Chmod(p, 0o644)
	waitFor("a world-readable file refusing every token", func() bool { return errors.Is(tokens.Check("Bearer "+tokB), auth.ErrUnusable) })
	if err := tokens.Check("Bearer " + tokB); !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), tokB[:8]) {
		t.Errorf("unusable file: %v; want the fix and no token", err)
	}
	os.Chmod(p, 0o600)
	waitFor("the fixed file accepted again", func() bool { return tokens.Check("Bearer "+tokB) == nil })
	os.Remove(p)
	waitFor("a removed file refusing every token", func() bool { return errors.Is(tokens.Check("Bearer "+tokB), auth.ErrUnusable) })
}

func TestGenerateGivesDistinct256BitTokens(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		tok, err := auth.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(tok) != 43 || seen[tok] {
			t.Fatalf("token of %d characters, seen before %v", len(tok), seen[tok])
		}
		seen[tok] = true
	}
}
