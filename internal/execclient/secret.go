package execclient

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/mergenhq/mergen/internal/execproto"
)

// EnsureSecret returns the VM's secret kept at path (the VM's layout
// AgentSecret), creating it (execproto.SecretLen random bytes, mode 0600)
// when absent. A file that is not a regular file of that size, readable
// by its owner alone and owned by this process's user is refused, not
// repaired: someone else made it, and its bytes may be known.
func EnsureSecret(path string) ([]byte, error) {
	b, err := readSecret(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return b, err
	}
	secret := make([]byte, execproto.SecretLen)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("agent secret %s: %w", path, err)
	}
	// Written whole under a temporary name, then linked into place: a
	// concurrent caller reads the whole secret or none, and the first
	// link wins.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".agent.secret-*")
	if err != nil {
		return nil, fmt.Errorf("agent secret %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(secret)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("agent secret %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("agent secret %s: %w", path, err)
	}
	return readSecret(path)
}

func readSecret(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("agent secret %s: a symbolic link: refused", path)
		}
		return nil, fmt.Errorf("agent secret %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("agent secret %s: %w", path, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("agent secret %s: not a regular file: refused", path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("agent secret %s: mode %#o, want 0600: refused", path, fi.Mode().Perm())
	case st != nil && int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("agent secret %s: owned by uid %d, not %d: refused", path, st.Uid, os.Geteuid())
	case fi.Size() != execproto.SecretLen:
		return nil, fmt.Errorf("agent secret %s: %d bytes, want %d: refused", path, fi.Size(), execproto.SecretLen)
	}
	b := make([]byte, execproto.SecretLen)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("agent secret %s: %w", path, err)
	}
	return b, nil
}
