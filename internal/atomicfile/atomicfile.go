// Package atomicfile writes files so that readers see either the old content
// or the new content, never a mix, and so that the new content survives a
// crash once WriteFile returns: temp file in the same directory, fsync,
// rename over the target, fsync of the directory.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/mergenhq/mergen/internal/regfile"
)

// WriteFile atomically replaces path with data and the given permissions.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	p, err := Prepare(path, data, perm)
	if err != nil {
		return err
	}
	if err := p.Sync(); err != nil {
		p.Discard()
		return err
	}
	if err := p.Place(); err != nil {
		return err
	}
	return SyncDir(p.dir)
}

// Pending is a replacement of a file written under a temporary name beside
// it, neither flushed nor in place yet. WriteFile is Prepare, Sync, Place
// and SyncDir in a row; a writer that makes many files durable at once
// flushes all its Pendings together, places each and syncs each directory
// once.
type Pending struct {
	f         *os.File
	dir, path string
}

// Prepare writes data under a temporary name beside path (one Sweep-able
// as ".<name>.tmp-*"), with the given permissions.
func Prepare(path string, data []byte, perm os.FileMode) (*Pending, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	p := &Pending{f: f, dir: dir, path: path}
	if err := f.Chmod(perm); err != nil {
		p.Discard()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		p.Discard()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return p, nil
}

// Sync flushes the content to stable storage.
func (p *Pending) Sync() error {
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", p.path, err)
	}
	return nil
}

// Place renames the content over the target: readers see it from now on.
// It survives a crash once the directory is synced (SyncDir).
func (p *Pending) Place() error {
	err := p.f.Close()
	if err == nil {
		err = os.Rename(p.f.Name(), p.path)
	}
	if err != nil {
		os.Remove(p.f.Name())
		return fmt.Errorf("write %s: %w", p.path, err)
	}
	return nil
}

// Discard removes the temporary file; the target is left as it was.
func (p *Pending) Discard() {
	p.f.Close()
	os.Remove(p.f.Name())
}

// SyncDir makes a rename or create inside dir durable.
func SyncDir(dir string) error {
	d, err := regfile.Open(dir, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// Create writes a new file at path with data and the given permissions,
// whole or not at all, and fails with an error satisfying
// errors.Is(err, fs.ErrExist) when path already exists: the content is
// written and synced under a temporary name and then linked into place, so
// two writers racing for the same path never overwrite each other and no
// reader ever sees a partial file.
func Create(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	defer f.Close()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("create %s: sync: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return SyncDir(dir)
}
