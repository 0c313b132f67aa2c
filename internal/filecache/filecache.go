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
	"os"
	"sync"
	"syscall"
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
	id identity
	v  T
}

// identity is what changes when a file is replaced or rewritten.
type identity struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds
}

func identityOf(fi os.FileInfo) (identity, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return identity{}, false
	}
	return identity{
		dev: uint64(st.Dev), ino: uint64(st.Ino), size: st.Size,
		mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec, ctime: st.Ctim.Sec*1e9 + st.Ctim.Nsec,
	}, true
}

// Load returns the value decoded from the file at path: the cached one
// while the file is unchanged, else decode's result on the file's bytes.
// decode says whether its value may be cached (a value that depends on
// other files must not be). Errors of stat, open and read are returned
// as they are (fs.ErrNotExist for a missing file).
func (c *Cache[T]) Load(path string, decode func([]byte) (T, bool, error)) (T, error) {
	var zero T
	if c != nil {
		fi, err := os.Stat(path)
		if err != nil {
			c.Forget(path)
			return zero, err
		}
		if id, ok := identityOf(fi); ok {
			c.mu.Lock()
			e, hit := c.m[path]
			c.mu.Unlock()
			if hit && e.id == id {
				return e.v, nil
			}
		}
	}
	f, err := os.Open(path)
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
		id, ok := identityOf(fi)
		c.mu.Lock()
		if ok && cacheable && id.size == int64(len(b)) {
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
