// Package filecache keeps values decoded from files so that a reader pays
// one stat, not a read and a decode, while a file is unchanged.
//
// Guarantees:
//   - A cached value is used only while the file at the path has the
//     device, inode, size, modification time and change time of the file it
//     was decoded from: the path is stat'ed on every Load. A file replaced
//     by rename (a new inode) is read and decoded again, whichever process
//     wrote it; so is one rewritten in place, unless with the same size
//     within one tick of the file system's clock: write files that are
//     cached by temp + rename (atomicfile), as the store does.
//   - The identity stored is that of the open file that was read (fstat),
//     so a replacement between the stat and the read is never cached under
//     the old file's identity.
//   - A path that is gone is forgotten on the next Load; Forget and Retain
//     drop entries eagerly. The cache never holds more than Max entries.
//
// Values are shared between callers: a T holding maps, slices or pointers
// must be copied by the caller before it is modified.
package filecache

import (
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"

	"github.com/mergenhq/mergen/internal/regfile"
)

// Max bounds the number of entries of a cache; past it the cache starts over.
const Max = 1 << 16

// Cache maps paths to values decoded from them. The zero value is ready;
// a nil *Cache caches nothing.
type Cache[T any] struct {
	mu sync.Mutex
	m  map[string]entry[T]
}

type entry[T any] struct {
	id Identity
	v  T
}

// Identity is what changes when a file is replaced or rewritten: a value
// kept beside the Identity of the file it came from is current while Stat
// returns that Identity again (with the guarantees above). The zero
// Identity, which Stat returns for anything but a regular file, is never
// that of a file: keep nothing under it.
type Identity struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds
}

// Stat returns the identity of the file at path (following symbolic
// links); the zero Identity when it is not a regular file. It costs one
// system call and, unlike os.Stat, no FileInfo: a list stats every VM's
// files.
func Stat(path string) (Identity, error) {
	var st syscall.Stat_t
	for {
		err := syscall.Stat(path, &st)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return Identity{}, &fs.PathError{Op: "stat", Path: path, Err: err}
		}
		return identityOfStat(&st), nil
	}
}

func identityOfStat(st *syscall.Stat_t) Identity {
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return Identity{}
	}
	return Identity{
		dev: uint64(st.Dev), ino: uint64(st.Ino), size: st.Size,
		mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec, ctime: st.Ctim.Sec*1e9 + st.Ctim.Nsec,
	}
}

// IdentityOf is the Identity of the file a stat described (os.Stat's
// FileInfo); the zero Identity when it is not a regular file.
func IdentityOf(fi os.FileInfo) Identity {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Identity{}
	}
	return identityOfStat(st)
}

// Load returns the value decoded from the file at path: the cached one
// while the file is unchanged, else decode's result on the file's bytes.
// decode says whether its value may be cached (a value that depends on
// other files must not be). Errors of stat, open and read are returned
// as they are (fs.ErrNotExist for a missing file).
func (c *Cache[T]) Load(path string, decode func([]byte) (T, bool, error)) (T, error) {
	var zero T
	if c != nil {
		id, err := Stat(path)
		if err != nil {
			c.Forget(path)
			return zero, err
		}
		if id != (Identity{}) {
			c.mu.Lock()
			e, hit := c.m[path]
			c.mu.Unlock()
			if hit && e.id == id {
				return e.v, nil
			}
		}
	}
	f, err := regfile.Open(path, os.O_RDONLY, 0)
	if err != nil {
		c.Forget(path)
		return zero, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return zero, err
	}
	b := make([]byte, 0, fi.Size()+1)
	for {
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return zero, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
	v, cacheable, err := decode(b)
	if err != nil {
		return zero, err
	}
	if c != nil {
		id := IdentityOf(fi)
		c.mu.Lock()
		if id != (Identity{}) && cacheable && id.size == int64(len(b)) {
			if c.m == nil || len(c.m) >= Max {
				c.m = map[string]entry[T]{}
			}
			c.m[path] = entry[T]{id: id, v: v}
		} else {
			delete(c.m, path)
		}
		c.mu.Unlock()
	}
	return v, nil
}

// Forget drops the entry of path.
func (c *Cache[T]) Forget(path string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.m, path)
	c.mu.Unlock()
}

// Retain drops every entry whose path keep rejects.
func (c *Cache[T]) Retain(keep func(path string) bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	for p := range c.m {
		if !keep(p) {
			delete(c.m, p)
		}
	}
	c.mu.Unlock()
}

// Len is the number of entries.
func (c *Cache[T]) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
