package converter

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

// cache is a content-addressed store of layer blobs as the source serves
// them (compressed), plus one record per source and platform naming the
// manifest, the config and the layers, so a later run can convert without
// contacting the source at all.
//
// A blob is present only under its digest and only after its content was
// hashed and matched: a torn or corrupt download never looks complete.
type cache struct{ dir string }

// record is what the cache keeps per source and platform.
type record struct {
	Source   string          `json:"source"`
	Platform string          `json:"platform"`
	Digest   string          `json:"digest"` // manifest digest
	Config   json.RawMessage `json:"config"`
	Layers   []string        `json:"layers"` // blob digests, "sha256:<hex>", bottom first
}

func (c cache) blobPath(digest string) (string, error) {
	hexd, ok := cutSHA256(digest)
	if !ok {
		return "", fmt.Errorf("layer digest %q: only sha256 digests are supported", digest)
	}
	return filepath.Join(c.dir, "blobs", "sha256", hexd), nil
}

func cutSHA256(d string) (string, bool) {
	const p = "sha256:"
	if len(d) != len(p)+64 || d[:len(p)] != p {
		return "", false
	}
	if _, err := hex.DecodeString(d[len(p):]); err != nil {
		return "", false
	}
	return d[len(p):], true
}

func (c cache) has(digest string) bool {
	p, err := c.blobPath(digest)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// put stores r under digest, verifying the content against it. Every byte
// read is also written to seen (progress).
func (c cache) put(digest string, r io.Reader, seen io.Writer) error {
	p, err := c.blobPath(digest)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	w := io.MultiWriter(f, h, seen)
	if _, err := io.Copy(w, r); err != nil {
		f.Close()
		return fmt.Errorf("download %s: %w", digest, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("layer %s: content digest is %s: corrupt or truncated download", digest, got)
	}
	return os.Rename(f.Name(), p)
}

// open returns the uncompressed tar stream of a cached blob.
func (c cache) open(digest string) (io.ReadCloser, error) {
	p, err := c.blobPath(digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("layer %s not in cache: %w", digest, err)
	}
	br := bufio.NewReaderSize(f, 1<<20)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("layer %s: %w", digest, err)
		}
		return readCloser{zr, func() error { zr.Close(); return f.Close() }}, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("layer %s: %w", digest, err)
		}
		return readCloser{zr, func() error { zr.Close(); return f.Close() }}, nil
	default:
		return readCloser{br, f.Close}, nil
	}
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

func (c cache) recordPath(source, platform string) string {
	sum := sha256.Sum256([]byte(source + "\x00" + platform))
	return filepath.Join(c.dir, "refs", hex.EncodeToString(sum[:16])+".json")
}

func (c cache) saveRecord(r record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.recordPath(r.Source, r.Platform)), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(c.recordPath(r.Source, r.Platform), b, 0o644)
}

// loadRecord returns the record for source and platform and checks that every
// layer it names is in the cache.
func (c cache) loadRecord(source, platform string) (record, error) {
	var r record
	b, err := os.ReadFile(c.recordPath(source, platform))
	if errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("cache %s has no record of %s for %s: convert once without --skip-pull", c.dir, source, platform)
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("cache record of %s: %w", source, err)
	}
	for _, l := range r.Layers {
		if !c.has(l) {
			return r, fmt.Errorf("cache %s is incomplete for %s: layer %s missing: convert without --skip-pull", c.dir, source, l)
		}
	}
	return r, nil
}
