package artifact

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/mergenhq/mergen/internal/progress"
)

// fetch downloads the object key into dst and checks it against f. The
// object is fetched in ranges of PartSize, Concurrency at a time; each part
// is written where it belongs while it arrives and hashed in order, so the
// file is never read back. Memory is bounded by Concurrency buffers of
// PartSize (64 MiB with the defaults). The file is sized first and its
// all-zero blocks are not written: a sparse disk arrives sparse. Writeback
// of each hashed part starts at once; once size and SHA-256 matched, the
// one fsync runs on flushes, in the background, while the caller fetches
// its next file, and nothing may be installed before flushes.Wait
// returned. On any error the file is left unsynced for the caller to
// remove with the rest of its staging.
func (c *Client) fetch(ctx context.Context, key, dst string, f File, ctr *progress.Counter, flushes *errgroup.Group) error {
	fh, err := createTarget(dst, c.bufferedWrites)
	if err != nil {
		return err
	}
	sum, err := c.receive(ctx, key, fh, f.Size, ctr)
	if err == nil && sum != f.SHA256 {
		fh.close()
		return fmt.Errorf("download %s: sha256 mismatch: manifest %s, received %s (object corrupt or changed; nothing installed)", f.Name, f.SHA256, sum)
	}
	if err != nil {
		fh.close()
		var se sizeError
		if errors.As(err, &se) {
			return fmt.Errorf("download %s: size %d, manifest says %d", f.Name, se.got, f.Size)
		}
		return c.explain(err, "download "+f.Name)
	}
	flushes.Go(func() error {
		if err := fh.sync(); err != nil {
			return fmt.Errorf("download %s: %w", f.Name, err)
		}
		return nil
	})
	return nil
}

// sizeError says the object is not as long as the manifest says.
type sizeError struct{ got int64 }

func (e sizeError) Error() string { return fmt.Sprintf("object size %d", e.got) }

// receive writes the object key (size bytes per the manifest) into fh and
// returns its hex SHA-256.
func (c *Client) receive(ctx context.Context, key string, fh *target, size int64, ctr *progress.Counter) (string, error) {
	if err := fh.f.Truncate(size); err != nil {
		return "", err
	}
	part := c.opt.PartSize
	// An empty object is still fetched once: it must exist and be empty.
	nparts := max(1, int((size+part-1)/part))
	var wg sync.WaitGroup
	defer wg.Wait() // after the cancel below; no write after return: the caller closes fh
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	type result struct {
		buf []byte
		err error
	}
	results := make([]chan result, nparts)
	for i := range results {
		results[i] = make(chan result, 1)
	}
	// Buffers are taken in part order and given back in part order, so
	// the lowest part in flight always holds one: no deadlock, and never
	// more than Concurrency of them.
	pool := make(chan []byte, c.opt.Concurrency)
	for range min(c.opt.Concurrency, nparts) {
		pool <- nil // allocated on first use
	}
	wg.Go(func() {
		for i := range nparts {
			var buf []byte
			select {
			case buf = <-pool:
			case <-ctx.Done():
				return
			}
			wg.Go(func() {
				off := int64(i) * part
				if buf == nil {
					buf = alignedBuf(int(min(part, size)))
				}
				buf = buf[:min(part, size-off)]
				results[i] <- result{buf, c.getRange(ctx, key, off, buf, size, ctr, fh)}
			})
		}
	})
	h := sha256.New()
	for i := range nparts {
		var r result
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			return "", context.Cause(ctx)
		}
		if r.err != nil {
			cancel(r.err)
			return "", r.err
		}
		h.Write(r.buf)
		// In part order, one part behind the network: the disk writes
		// while the rest arrives, and a disk slower than the network
		// holds the buffers back instead of leaving it all to the fsync.
		fh.startWriteback(int64(i)*part, int64(len(r.buf)))
		pool <- r.buf[:cap(r.buf)]
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// getRange fills buf with the object's bytes at off and writes them to fh
// at off. The SDK retries the request; a body cut short is fetched again,
// up to Attempts times in all.
func (c *Client) getRange(ctx context.Context, key string, off int64, buf []byte, size int64, ctr *progress.Counter, fh *target) error {
	in := &s3.GetObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key)}
	if size > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(len(buf))-1))
	}
	var err error
	for range c.opt.Attempts {
		var got int64
		var body bool
		got, body, err = c.getOnce(ctx, in, off, buf, size, ctr, fh)
		if err == nil {
			return nil
		}
		ctr.Add(-got) // counted again by the next attempt, or not at all
		if !body || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// getOnce makes one ranged GET into buf, writing each chunk to fh as it
// comes in; body says the error came while reading the answer (worth
// another attempt, which writes the range again from its start).
func (c *Client) getOnce(ctx context.Context, in *s3.GetObjectInput, off int64, buf []byte, size int64, ctr *progress.Counter, fh *target) (got int64, body bool, err error) {
	out, err := c.s3.GetObject(ctx, in)
	if err != nil {
		return 0, false, err
	}
	defer out.Body.Close()
	total := aws.ToInt64(out.ContentLength) + off // no range asked, or none honoured
	if cr := aws.ToString(out.ContentRange); cr != "" {
		if i := strings.LastIndexByte(cr, '/'); i >= 0 {
			if n, perr := strconv.ParseInt(cr[i+1:], 10, 64); perr == nil {
				total = n
			}
		}
	}
	if total != size {
		return 0, false, sizeError{total}
	}
	src := io.TeeReader(out.Body, ctr)
	chunk := fh.chunk()
	n := 0
	for n < len(buf) {
		m, err := io.ReadFull(src, buf[n:min(n+chunk, len(buf))])
		if m > 0 {
			if err := writeData(fh, buf[n:n+m], off+int64(n)); err != nil {
				return int64(n + m), false, err
			}
		}
		n += m
		if err != nil {
			return int64(n), true, err
		}
	}
	var one [1]byte
	if m, _ := out.Body.Read(one[:]); m > 0 {
		return int64(n), false, fmt.Errorf("range at %d: more than the %d bytes asked for", off, len(buf))
	}
	return int64(n), false, nil
}

// zeroBlock is one file-system block of zeros.
var zeroBlock [4096]byte

// writeData writes the blocks of p that hold data at off, skipping the
// all-zero ones: the file was sized beforehand, so they read as zeros and
// take no space.
func writeData(f *target, p []byte, off int64) error {
	blk := len(zeroBlock)
	isZero := func(i int) bool { return bytes.Equal(p[i:min(i+blk, len(p))], zeroBlock[:min(blk, len(p)-i)]) }
	for i := 0; i < len(p); {
		for i < len(p) && isZero(i) {
			i += blk
		}
		j := i
		for j < len(p) && !isZero(j) {
			j += blk
		}
		i, j = min(i, len(p)), min(j, len(p))
		if j > i {
			if err := f.writeAt(p[i:j], off+int64(i)); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}
