package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/sync/errgroup"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/progress"
)

// hashingReader hashes and counts what the uploader reads, in order: the
// uploader reads a plain reader (no ReaderAt) from start to end into its
// part buffers, so the digest comes with the upload and the file is read
// once. Parts are signed and sent from those buffers.
type hashingReader struct {
	f *os.File
	h hash.Hash
	c *progress.Counter
	n int64
}

func (r *hashingReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	r.h.Write(p[:n])
	r.c.Add(int64(n))
	r.n += int64(n)
	return n, err
}

// unsignedBody sends a request's body with UNSIGNED-PAYLOAD in its
// signature instead of the body's SHA-256. A file's bodies need none: the
// SHA-256 of the whole file is in its manifest, which goes up signed with
// its own body's hash (putSmall), and every pull checks each file against
// it before installing, so a body changed on the way is refused as one
// changed in the bucket is. Over plain HTTP the SDK would otherwise hash
// every part for the signature beside the file's own hash (twice the
// push's processor time); over HTTPS it already sends parts unsigned. The
// SDK's CRC32 of each part, a signed header, still lets the server refuse
// a part damaged in transit at once.
func unsignedBody(o *s3.Options) {
	o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
		// Set before the finalize step, where the checksum and
		// payload-hash middlewares look for a hash already given.
		return st.Build.Add(middleware.BuildMiddlewareFunc("mergenUnsignedBody", func(ctx context.Context, in middleware.BuildInput, next middleware.BuildHandler) (middleware.BuildOutput, middleware.Metadata, error) {
			return next.HandleBuild(v4.SetPayloadHash(ctx, "UNSIGNED-PAYLOAD"), in)
		}), middleware.After)
	})
}

// upload sends every file of m.Files from dir (multipart for large ones),
// hashing each while it is read, then the manifest with the sizes and
// SHA-256 of what was sent: a reader who sees the manifest sees complete
// files. A file that already carries a digest (checked before) must have
// sent exactly that, or nothing more is uploaded and no manifest written.
// Memory: the uploader's pool of Concurrency+1 buffers of PartSize plus
// its first part, about 96 MiB per file with the defaults.
func (c *Client) upload(ctx context.Context, dir, keyDir string, m Manifest) (Manifest, error) {
	up := manager.NewUploader(c.s3, func(u *manager.Uploader) {
		u.PartSize = c.opt.PartSize
		u.Concurrency = c.opt.Concurrency
		u.ClientOptions = append(u.ClientOptions, unsignedBody)
	})
	files := slices.Clone(m.Files)
	for i, f := range files {
		ctr := c.opt.Progress.File(f.Name, f.Size)
		fh, err := os.Open(filepath.Join(dir, f.Local))
		if err != nil {
			ctr.Finish("failed")
			return m, err
		}
		r := &hashingReader{f: fh, h: sha256.New(), c: ctr}
		_, err = up.Upload(ctx, &s3.PutObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(keyDir + "/" + f.Name), Body: r})
		fh.Close()
		if err != nil {
			ctr.Finish("failed")
			return m, c.explain(err, "upload "+f.Name)
		}
		sum := hex.EncodeToString(r.h.Sum(nil))
		if f.SHA256 != "" && (r.n != f.Size || sum != f.SHA256) {
			ctr.Finish("failed")
			return m, fmt.Errorf("upload %s: %d bytes, sha256 %s sent; %d bytes, %s expected (the file changed while it was pushed; no manifest written)", f.Name, r.n, sum, f.Size, f.SHA256)
		}
		files[i].Size, files[i].SHA256 = r.n, sum
		ctr.Finish("done")
	}
	m.Files = files
	if err := m.Validate(); err != nil {
		return m, err
	}
	return m, c.putSmall(ctx, keyDir+"/"+ManifestName, m)
}

// install downloads the files of m from keyDir into dir: staging first,
// verification of size and SHA-256, an fsync of each, then one rename per
// file. On any error the staging directory is removed and dir is as it
// was.
func (c *Client) install(ctx context.Context, keyDir, dir string, m Manifest) (fetched []string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// One pull at a time per directory; the lock dies with its holder, so
	// staging left by a killed pull is swept by the next one.
	lock, err := os.OpenFile(filepath.Join(dir, ".pull.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if stale, _ := filepath.Glob(filepath.Join(dir, ".pull-*")); len(stale) > 0 {
		for _, s := range stale {
			os.RemoveAll(s)
		}
	}
	var need []File
	var needBytes int64
	for _, f := range m.Files {
		if n, sum, err := hashFile(filepath.Join(dir, f.Local)); err == nil && n == f.Size && sum == f.SHA256 {
			ctr := c.opt.Progress.File(f.Name, f.Size)
			ctr.Set(f.Size)
			ctr.Finish("skipped")
			continue
		}
		need = append(need, f)
		needBytes += f.Size
	}
	if err := enoughSpace(dir, needBytes); err != nil {
		return nil, err
	}
	// Staging lives inside dir so the final renames stay on one file
	// system; its hidden name keeps it out of inventories.
	stage, err := os.MkdirTemp(dir, ".pull-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	// Each file's fsync runs while the next one downloads; all of them
	// have returned before anything is renamed, or staging removed.
	var flushes errgroup.Group
	defer flushes.Wait()
	for _, f := range need {
		ctr := c.opt.Progress.File(f.Name, f.Size)
		if err := c.fetch(ctx, keyDir+"/"+f.Name, filepath.Join(stage, f.Local), f, ctr, &flushes); err != nil {
			ctr.Finish("failed")
			return nil, err
		}
		ctr.Finish("done")
	}
	if err := flushes.Wait(); err != nil {
		return nil, err
	}
	// A payload's image-meta.json says the directory is complete
	// (imagemeta.Complete): it goes before anything is replaced and comes
	// back last.
	sort.SliceStable(need, func(i, j int) bool {
		return need[i].Local != imagemeta.ImageMetaFile && need[j].Local == imagemeta.ImageMetaFile
	})
	if n := len(need); n > 0 && need[n-1].Local == imagemeta.ImageMetaFile {
		if err := os.Remove(filepath.Join(dir, imagemeta.ImageMetaFile)); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	for _, f := range need {
		if err := os.Rename(filepath.Join(stage, f.Local), filepath.Join(dir, f.Local)); err != nil {
			return fetched, err
		}
		fetched = append(fetched, f.Local)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fetched, err
	}
	sort.Strings(fetched)
	return fetched, nil
}

// enoughSpace refuses a pull that cannot fit, before a byte is written.
func enoughSpace(dir string, need int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return nil // unknown: let the writes tell
	}
	avail := int64(st.Bavail) * int64(st.Bsize)
	if need > avail {
		return fmt.Errorf("not enough space in %s: need %s, %s available", dir, progress.Bytes(need), progress.Bytes(avail))
	}
	return nil
}

func writeLocalManifest(dir string, m Manifest) error {
	b, err := jsonIndent(m)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, LocalManifest), b, 0o644)
}

// ReadLocalManifest returns the manifest of the last pull into dir.
func ReadLocalManifest(dir string) (Manifest, error) {
	f, err := os.Open(filepath.Join(dir, LocalManifest))
	if err != nil {
		return Manifest{}, err
	}
	defer f.Close()
	return decodeManifest(f)
}
