package converter

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/converter/layer"
)

// cache is a content-addressed store of layer blobs as the source serves
// them (compressed), plus one record per source and platform naming the
// manifest, the config and the layers, so a later run can convert without
// contacting the source at all.
//
// A blob is present only under its digest and only after its content was
// hashed and matched: a torn or corrupt download never looks complete. Its
// content is hashed again each time it is read (see layerStream).
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

// layerSource is where one layer's bytes come from.
type layerSource struct {
	digest string
	size   int64                         // compressed; progress.Unknown when not known
	open   func() (io.ReadCloser, error) // the image source; nil: the layer is in the cache
}

// layerStream is one layer being read: Read returns its tar stream,
// decompressed, while a goroutine reads the blob once, hashing every byte
// and, for a layer not cached yet, writing it to a cache file. finish, called
// when the applier is done with the stream, says whether the whole blob
// matched its digest; only then does a new cache file take the digest's name.
// A cached blob is hashed again on every use, so a blob damaged on disk is
// found and dropped instead of being trusted for its name.
type layerStream struct {
	*chunkPipe
	digest string
	path   string // the blob's place in the cache
	src    io.Closer
	tmp    *os.File // nil when reading from the cache
	// abort, set before the reader leaves, tells the producer not to read
	// the rest of the blob: the applier gave up for a reason the content
	// cannot change (a limit, a cancelled context).
	abort atomic.Bool
	done  chan error
}

// errAborted is the producer's answer when it was told to stop reading.
var errAborted = errors.New("layer read aborted")

// stream starts reading the layer. Bytes read from the image source are also
// written to pulled (progress).
func (c cache) stream(ls layerSource, pulled io.Writer) (*layerStream, error) {
	p, err := c.blobPath(ls.digest)
	if err != nil {
		return nil, err
	}
	// 4 chunks of 256 KiB: enough for the decompressor to run ahead of
	// the file writes, a bounded amount of memory per layer.
	s := &layerStream{chunkPipe: newChunkPipe(4, 256<<10), digest: ls.digest, path: p, done: make(chan error, 1)}
	h := sha256.New()
	var src io.Reader
	sink := io.Writer(h)
	if ls.open == nil {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("layer %s not in cache: %w", ls.digest, err)
		}
		s.src, src = f, f
	} else {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		rc, err := ls.open()
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", ls.digest, err)
		}
		tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
		if err != nil {
			rc.Close()
			return nil, err
		}
		s.src, src, s.tmp = rc, rc, tmp
		sink = io.MultiWriter(h, tmp, pulled)
	}
	go s.produce(io.TeeReader(src, sink), h)
	return s, nil
}

// produce decompresses the blob into the pipe, then reads what the
// decompressor left (the archive's end, the compressor's trailer, or all of
// it after a decoding error) only to hash it, and reports the digest check.
func (s *layerStream) produce(hashed io.Reader, h hash.Hash) {
	br := bufio.NewReaderSize(hashed, 256<<10)
	derr := decompress(br, s.fill)
	if errors.Is(derr, errReaderGone) {
		derr = nil
	}
	s.closeWrite(derr)
	if s.abort.Load() {
		s.done <- errAborted
		return
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		s.done <- fmt.Errorf("read: %w", err)
		return
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != s.digest {
		s.done <- fmt.Errorf("content digest is %s: corrupt or truncated blob", got)
		return
	}
	s.done <- nil
}

// decompress sends the tar stream in br to fill, choosing the decoder by the
// blob's first bytes: gzip, zstd, or none. klauspost's gzip decodes the same
// stream in about two thirds of the standard library's time.
func decompress(br *bufio.Reader, fill func(io.Reader) error) error {
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		return fill(zr)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		return fill(zr)
	default:
		return fill(br)
	}
}

// finish ends the layer once the applier returned applyErr. It returns the
// error that explains the outcome: the blob's, when it did not match its
// digest or could not be read (a decoding error is then its symptom), else
// applyErr. A verified new blob is moved into the cache, even when the
// applier refused its content: the blob is what the image holds.
func (s *layerStream) finish(applyErr error) error {
	if errors.Is(applyErr, layer.ErrLimit) || errors.Is(applyErr, context.Canceled) || errors.Is(applyErr, context.DeadlineExceeded) {
		s.abort.Store(true)
	}
	s.closeRead()
	err := <-s.done
	s.src.Close()
	if s.tmp != nil {
		if err == nil {
			err = s.commit()
		}
		s.tmp.Close()
		if err != nil {
			os.Remove(s.tmp.Name())
		}
	} else if err != nil && !errors.Is(err, errAborted) {
		// A cached blob that no longer matches its name is damaged: the
		// next run fetches it again.
		os.Remove(s.path)
		err = fmt.Errorf("cached blob removed: %w", err)
	}
	if err != nil && !errors.Is(err, errAborted) {
		return err
	}
	return applyErr
}

// commit moves the verified temporary file under the digest, durably: a
// blob present under its name is whole.
func (s *layerStream) commit() error {
	if err := s.tmp.Sync(); err != nil {
		return err
	}
	return os.Rename(s.tmp.Name(), s.path)
}

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
