// Package auth holds the API's bearer tokens: the token file (one token per
// line, the first is the one the CLI sends; blank lines and '#' comments
// ignored), created with one random 256-bit token when it is missing, and
// the check of an Authorization header against every token in it.
//
// Guarantees: a file that others could read or write, that holds no token,
// a token too short or one that cannot travel in a header is refused with an
// error naming the file and the fix; tokens are compared in constant time
// (SHA-256 digests, so a token's length does not leak either); no token ever
// appears in an error. The file is read again when it changes (checked at
// most once a second), so tokens are rotated by editing it; if it becomes
// unusable, every check fails until it is fixed.
package auth

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

const (
	// MinTokenLen is the shortest token the file may hold, in characters.
	MinTokenLen = 32
	// maxFileSize bounds what is read of the token file.
	maxFileSize = 64 << 10
	// recheck is how often, at most, the file is looked at for changes.
	recheck = time.Second
)

// The answers of Check; none holds anything of the header.
var (
	ErrNoToken = errors.New("no bearer token: send the header \"Authorization: Bearer TOKEN\" with a token from the daemon's token file")
	ErrScheme  = errors.New("the Authorization header does not use the Bearer scheme: send the header \"Authorization: Bearer TOKEN\" with a token from the daemon's token file")
	ErrInvalid = errors.New("the bearer token is not valid")
	// ErrUnusable wraps the reason the token file cannot be used since it
	// last changed; the reason names the file and the fix, not a token.
	ErrUnusable = errors.New("the API token file is not usable")
)

// Generate returns a new random token: 256 bits, base64url without padding
// (43 characters).
func Generate() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate a token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Tokens are the tokens of one token file.
type Tokens struct {
	path string

	mu      sync.Mutex
	digests [][sha256.Size]byte
	stamp   stamp
	checked time.Time
	err     error // the file's problem since it last changed, or nil
}

// stamp tells whether the file changed since it was read.
type stamp struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
	mode     fs.FileMode
	uid      uint32
}

func stampOf(fi fs.FileInfo) stamp {
	s := stamp{size: fi.Size(), mtime: fi.ModTime(), mode: fi.Mode()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino, s.uid = uint64(st.Dev), st.Ino, st.Uid
	}
	return s
}

// Load reads the token file at path, refusing it when it is not fit to hold
// the keys to this host. A missing file is an error satisfying
// errors.Is(err, fs.ErrNotExist).
func Load(path string) (*Tokens, error) {
	tokens, st, err := read(path)
	if err != nil {
		return nil, err
	}
	t := &Tokens{path: path, stamp: st, checked: time.Now()}
	t.digests = digests(tokens)
	return t, nil
}

// Open loads the token file at path, creating it first when it is missing:
// its directory (0755) if need be, and the file itself with one new token,
// mode 0600, whole or not at all. created tells whether it did.
func Open(path string) (t *Tokens, created bool, err error) {
	t, err = Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return t, false, err
	}
	if _, lerr := os.Lstat(path); lerr == nil {
		// A link to nothing: creating the file would write wherever it
		// points.
		return nil, false, fmt.Errorf("token file %s is a symbolic link to a file that does not exist: point it at the token file, or remove it to have one created", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, false, fmt.Errorf("token file %s: create its directory: %w", path, err)
	}
	token, err := Generate()
	if err != nil {
		return nil, false, err
	}
	err = atomicfile.Create(path, []byte(token+"\n"), 0o600)
	created = err == nil
	if err != nil && !errors.Is(err, fs.ErrExist) { // else another process made it first
		return nil, false, fmt.Errorf("token file %s: %w", path, err)
	}
	t, err = Load(path)
	return t, created && err == nil, err
}

// First returns the first token of the file at path: the one the CLI sends.
func First(path string) (string, error) {
	tokens, _, err := read(path)
	if err != nil {
		return "", err
	}
	return tokens[0], nil
}

// Path is the token file's path.
func (t *Tokens) Path() string { return t.path }

// Check tells whether an Authorization header value carries one of the
// file's tokens: nil, ErrNoToken, ErrScheme, ErrInvalid, or an error
// wrapping ErrUnusable when the file has become unfit since it was loaded.
func (t *Tokens) Check(authorization string) error {
	token, err := bearer(authorization)
	if err != nil {
		return err
	}
	presented := sha256.Sum256([]byte(token))
	digests, err := t.current()
	if err != nil {
		return err
	}
	match := 0
	for i := range digests {
		match |= subtle.ConstantTimeCompare(digests[i][:], presented[:])
	}
	if match != 1 {
		return ErrInvalid
	}
	return nil
}

// bearer takes the token out of an Authorization header value. The scheme
// is case-insensitive (RFC 9110).
func bearer(h string) (string, error) {
	h = strings.TrimSpace(h)
	if h == "" {
		return "", ErrNoToken
	}
	scheme, rest, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", ErrScheme
	}
	token := strings.TrimLeft(rest, " ")
	if token == "" {
		return "", ErrNoToken
	}
	return token, nil
}

// current returns the digests, reading the file again when it changed.
func (t *Tokens) current() ([][sha256.Size]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now := time.Now(); now.Sub(t.checked) >= recheck {
		t.checked = now
		t.reload()
	}
	if t.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnusable, t.err)
	}
	return t.digests, nil
}

func (t *Tokens) reload() {
	fi, err := os.Stat(t.path)
	if err != nil {
		t.err, t.digests, t.stamp = unreadable(t.path, err), nil, stamp{}
		return
	}
	if stampOf(fi) == t.stamp {
		return
	}
	tokens, st, err := read(t.path)
	if err != nil {
		t.err, t.digests, t.stamp = err, nil, stamp{}
		return
	}
	t.err, t.digests, t.stamp = nil, digests(tokens), st
}

func digests(tokens []string) [][sha256.Size]byte {
	out := make([][sha256.Size]byte, len(tokens))
	for i, tok := range tokens {
		out[i] = sha256.Sum256([]byte(tok))
	}
	return out
}

// read reads and checks the token file. Its errors name the file and what
// to do, and hold no token.
func read(path string) ([]string, stamp, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, stamp{}, unreadable(path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, stamp{}, unreadable(path, err)
	}
	st := stampOf(fi)
	switch {
	case !fi.Mode().IsRegular():
		return nil, st, fmt.Errorf("token file %s is not a regular file (%s): put the tokens in a file, one per line", path, fi.Mode().Type())
	case fi.Mode().Perm()&0o077 != 0:
		return nil, st, fmt.Errorf("token file %s can be read or written by group or others (mode %04o): anyone who reads it controls this host through the API; run chmod 600 %s (and replace the tokens if others may have read them)", path, fi.Mode().Perm(), path)
	case st.uid != 0 && int(st.uid) != os.Geteuid():
		return nil, st, fmt.Errorf("token file %s belongs to uid %d, neither root nor the daemon's user: its owner could add tokens; run chown root %s", path, st.uid, path)
	case fi.Size() > maxFileSize:
		return nil, st, fmt.Errorf("token file %s is larger than %d bytes: it should hold a few tokens, one per line", path, maxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, st, unreadable(path, err)
	}
	if len(data) > maxFileSize {
		return nil, st, fmt.Errorf("token file %s is larger than %d bytes: it should hold a few tokens, one per line", path, maxFileSize)
	}
	var tokens []string
	for i, line := range bytes.Split(data, []byte("\n")) {
		tok := strings.TrimSpace(string(line))
		if tok == "" || strings.HasPrefix(tok, "#") {
			continue
		}
		for _, c := range []byte(tok) {
			if c < 0x21 || c > 0x7e {
				return nil, st, fmt.Errorf("token file %s: line %d holds a space or a character that cannot travel in an HTTP header: one token per line, printable ASCII only", path, i+1)
			}
		}
		if len(tok) < MinTokenLen {
			return nil, st, fmt.Errorf("token file %s: line %d holds a token shorter than %d characters: replace it with a longer one (or remove the file to have one generated)", path, i+1, MinTokenLen)
		}
		tokens = append(tokens, tok)
	}
	if len(tokens) == 0 {
		return nil, st, fmt.Errorf("token file %s holds no token: write one token per line (at least %d characters), or remove the file to have one generated", path, MinTokenLen)
	}
	return tokens, st, nil
}

func unreadable(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // the path is named below
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("token file %s does not exist: %w", path, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("token file %s cannot be read by the daemon's user (uid %d): %w; the daemon must run as its owner (root)", path, os.Geteuid(), err)
	}
	return fmt.Errorf("token file %s cannot be read: %w", path, err)
}
