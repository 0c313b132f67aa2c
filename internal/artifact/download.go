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
	"sync/atomic"

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
	partSize := c.opt.PartSize
	// An empty object is still fetched once: it must exist and be empty.
	nparts := max(1, int((size+partSize-1)/partSize))
	var wg sync.WaitGroup
	defer wg.Wait() // after the cancel below; no write after return: the caller closes fh
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	started := make([]chan *part, nparts)
	for i := range started {
		started[i] = make(chan *part, 1)
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
			off := int64(i) * partSize
			if buf == nil {
				buf = alignedBuf(int(min(partSize, size)))
			}
			p := &part{off: off, buf: buf[:min(partSize, size-off)], more: make(chan struct{}, 1), done: make(chan error, 1)}
			started[i] <- p
			wg.Go(func() {
				err := c.getRange(ctx, key, p, size, ctr, fh)
				if err != nil {
					cancel(err)
				}
				p.done <- err
			})
		}
	})
	// The digest follows the lowest part in flight as its bytes come in,
	// while they are still in the processor's cache, instead of waiting
	// for the whole part: hashing a part after it arrived held its buffer
	// back from the next range, and on two cores it took longer than the
	// network.
	h := sha256.New()
	for i := range nparts {
		var p *part
		select {
		case p = <-started[i]:
		case <-ctx.Done():
			return "", context.Cause(ctx)
		}
		hashed := 0
		for complete := false; !complete; {
			select {
			case err := <-p.done:
				if err != nil {
					return "", err
				}
				complete = true
			case <-p.more:
			case <-ctx.Done():
				return "", context.Cause(ctx)
			}
			n := int(p.in.Load())
			h.Write(p.buf[hashed:n])
			hashed = n
		}
		// In part order: the disk writes while the rest arrives, and a
		// disk slower than the network holds the buffers back instead of
		// leaving it all to the fsync.
		fh.startWriteback(p.off, int64(len(p.buf)))
		pool <- p.buf[:cap(p.buf)]
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// part is one range of the object on its way into the file.
type part struct {
	off int64  // in the object and the file
	buf []byte // the range's bytes as they come in
	// in counts the bytes of buf received. They are never fetched again:
	// what was hashed is what is written.
	in      atomic.Int64
	more    chan struct{} // capacity 1: in moved
	done    chan error    // the range's outcome
	written int           // bytes of buf handed to be written; the receiving goroutine's
}

// getRange fills p.buf with the object's bytes at p.off, writing them to
// fh as they come. The SDK retries the request; a body cut short is asked
// for again from where it stopped, up to Attempts times in all.
func (c *Client) getRange(ctx context.Context, key string, p *part, size int64, ctr *progress.Counter, fh *target) error {
	// Whole chunks are written by a goroutine of their own, so the range
	// is read on while the device takes the chunk before (a direct write
	// returns once the device has it). They are regions of buf the
	// reader is done with; all are written before the range is.
	writes := make(chan [2]int, len(p.buf)/fh.chunk()+1)
	written := make(chan error, 1)
	go func() {
		var err error
		for w := range writes {
			if err == nil {
				err = writeData(fh, p.buf[w[0]:w[1]], p.off+int64(w[0]))
			}
		}
		written <- err
	}()
	err := c.getAttempts(ctx, key, p, size, ctr, fh.chunk(), writes)
	close(writes)
	if werr := <-written; err == nil {
		err = werr
	}
	return err
}

func (c *Client) getAttempts(ctx context.Context, key string, p *part, size int64, ctr *progress.Counter, chunk int, writes chan<- [2]int) error {
	var err error
	for range c.opt.Attempts {
		var body bool
		body, err = c.getOnce(ctx, key, p, size, ctr, chunk, writes)
		if err == nil || !body || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// getOnce makes one GET for the bytes of p not yet received, handing each
// whole chunk to writes as it is complete; body says the error came while
// reading the answer (worth another attempt).
func (c *Client) getOnce(ctx context.Context, key string, p *part, size int64, ctr *progress.Counter, chunk int, writes chan<- [2]int) (body bool, err error) {
	n := int(p.in.Load())
	from := p.off + int64(n)
	in := &s3.GetObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key)}
	if size > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", from, p.off+int64(len(p.buf))-1))
	}
	out, err := c.s3.GetObject(ctx, in)
	if err != nil {
		return false, err
	}
	defer out.Body.Close()
	total := aws.ToInt64(out.ContentLength) + from // no range asked, or none honoured
	if cr := aws.ToString(out.ContentRange); cr != "" {
		if i := strings.LastIndexByte(cr, '/'); i >= 0 {
			if t, perr := strconv.ParseInt(cr[i+1:], 10, 64); perr == nil {
				total = t
			}
		}
	}
	if total != size {
		return false, sizeError{total}
	}
	for n < len(p.buf) {
		m, rerr := out.Body.Read(p.buf[n:min(p.written+chunk, len(p.buf))])
		n += m
		ctr.Add(int64(m))
		p.in.Store(int64(n))
		select {
		case p.more <- struct{}{}:
		default: // already told
		}
		if n == len(p.buf) || n == p.written+chunk {
			writes <- [2]int{p.written, n}
			p.written = n
		}
		if n == len(p.buf) {
			break
		}
		if rerr == io.EOF {
			rerr = io.ErrUnexpectedEOF
		}
		if rerr != nil {
			return true, rerr
		}
	}
	var one [1]byte
	if m, _ := out.Body.Read(one[:]); m > 0 {
		return false, fmt.Errorf("range at %d: more than the %d bytes asked for", p.off, len(p.buf))
	}
	return false, nil
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
