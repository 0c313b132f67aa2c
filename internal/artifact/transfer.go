package artifact

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/progress"
)

// countingFile counts the bytes the uploader reads, once each: request
// signing reads a part a second time, so only reads past the furthest point
// already reached in that part count. Parts start at multiples of partSize.
type countingFile struct {
	*os.File
	c        *progress.Counter
	partSize int64
	mu       sync.Mutex
	reached  map[int64]int64 // part index → furthest offset read
}

func (f *countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	if n > 0 {
		part, end := off/f.partSize, off+int64(n)
		f.mu.Lock()
		if prev, ok := f.reached[part]; !ok || end > prev {
			if !ok || off > prev {
				prev = off
			}
			f.c.Add(end - prev)
			f.reached[part] = end
		}
		f.mu.Unlock()
	}
	return n, err
}

// upload sends every file of dir (multipart for large ones), then the
// manifest: a reader who sees the manifest sees complete files.
func (c *Client) upload(ctx context.Context, dir, keyDir string, m Manifest) error {
	up := manager.NewUploader(c.s3, func(u *manager.Uploader) {
		u.PartSize = c.opt.PartSize
		u.Concurrency = c.opt.Concurrency
	})
	for _, f := range m.Files {
		ctr := c.opt.Progress.File(f.Name, f.Size)
		fh, err := os.Open(filepath.Join(dir, f.Local))
		if err != nil {
			ctr.Finish("failed")
			return err
		}
		_, err = up.Upload(ctx, &s3.PutObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(keyDir + "/" + f.Name), Body: &countingFile{File: fh, c: ctr, partSize: c.opt.PartSize, reached: map[int64]int64{}}})
		fh.Close()
		if err != nil {
			ctr.Finish("failed")
			return c.explain(err, "upload "+f.Name)
		}
		ctr.Set(f.Size)
		ctr.Finish("done")
	}
	return c.putSmall(ctx, keyDir+"/"+ManifestName, m)
}

// install downloads the files of m from keyDir into dir: staging first,
// verification of size and SHA-256, then one rename per file. On any error
// the staging directory is removed and dir is as it was.
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
	for _, f := range need {
		ctr := c.opt.Progress.File(f.Name, f.Size)
		if err := c.fetch(ctx, keyDir+"/"+f.Name, filepath.Join(stage, f.Local), f, ctr); err != nil {
			ctr.Finish("failed")
			return nil, err
		}
		ctr.Finish("done")
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
