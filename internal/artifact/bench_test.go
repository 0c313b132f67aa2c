package artifact

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/mergenhq/mergen/internal/testenv"
)

// BenchmarkS3Transfer compares mergen's push and pull of a sparse disk
// (hashing, manifest, verification and staged install included) with the
// raw aws-sdk-go-v2 transfer manager moving the same file, same server,
// same part size and concurrency. MB/s and the client's CPU seconds are
// printed per sub-benchmark; raw-pull+fsync is the raw download made
// durable, printed beside the raw-pull baseline.
// MERGEN_BENCH_DISK_MIB sets the disk size (default 1024);
// MERGEN_BENCH_DISK_DENSE=1 fills the disk with random bytes instead.
func BenchmarkS3Transfer(b *testing.B) {
	size := int64(1024)
	if v := os.Getenv("MERGEN_BENCH_DISK_MIB"); v != "" {
		fmt.Sscan(v, &size)
	}
	size <<= 20
	dense := os.Getenv("MERGEN_BENCH_DISK_DENSE") == "1"
	srv := startS3(b)
	c, err := New(srv.Profile(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	src := b.TempDir()
	for n, sz := range map[string]int64{"vmlinux": 4 << 20, "agent-rootfs.ext4": 1 << 20, "golden-rootfs.ext4": size} {
		f, err := os.Create(filepath.Join(src, n))
		if err != nil {
			b.Fatal(err)
		}
		if dense && n == "golden-rootfs.ext4" {
			if _, err := io.CopyN(f, rand.Reader, sz); err != nil {
				b.Fatal(err)
			}
			f.Close()
			continue
		}
		// Sparse, with a little data at both ends like a fresh ext4 image.
		f.WriteAt([]byte("mergen"), 0)
		f.Truncate(sz)
		f.WriteAt([]byte("end"), sz-3)
		f.Close()
	}
	total := size + 5<<20
	ctx := b.Context()
	plat, flavor := "linux-amd64", "bench"
	var pushed string

	b.Run("mergen-push", func(b *testing.B) {
		defer reportCPU(b)()
		b.SetBytes(total)
		for i := 0; i < b.N; i++ {
			settle(b)
			pushed = fmt.Sprintf("v%d", time.Now().UnixNano())
			if _, err := c.PushBase(ctx, src, Base{plat, flavor, pushed}); err != nil {
				b.Fatal(err)
			}
		}
	})
	up := manager.NewUploader(c.s3, func(u *manager.Uploader) { u.PartSize, u.Concurrency = c.opt.PartSize, c.opt.Concurrency })
	dl := manager.NewDownloader(c.s3, func(d *manager.Downloader) { d.PartSize, d.Concurrency = c.opt.PartSize, c.opt.Concurrency })
	b.Run("raw-push", func(b *testing.B) {
		defer reportCPU(b)()
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			settle(b)
			f, err := os.Open(filepath.Join(src, "golden-rootfs.ext4"))
			if err != nil {
				b.Fatal(err)
			}
			_, err = up.Upload(ctx, &s3.PutObjectInput{Bucket: aws.String(testBucket), Key: aws.String("raw/disk"), Body: f})
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("mergen-pull", func(b *testing.B) {
		defer reportCPU(b)()
		b.SetBytes(total)
		for i := 0; i < b.N; i++ {
			settle(b)
			dst := filepath.Join(b.TempDir(), "current")
			if _, err := c.PullBase(ctx, dst, Base{plat, flavor, pushed}); err != nil {
				b.Fatal(err)
			}
			untimed(b, func() { os.RemoveAll(dst) })
		}
	})
	rawPull := func(b *testing.B, durable bool) {
		defer reportCPU(b)()
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			settle(b)
			f, err := os.Create(filepath.Join(b.TempDir(), "disk"))
			if err != nil {
				b.Fatal(err)
			}
			_, err = dl.Download(ctx, f, &s3.GetObjectInput{Bucket: aws.String(testBucket), Key: aws.String("raw/disk")})
			if err == nil && durable {
				err = f.Sync()
			}
			f.Close()
			untimed(b, func() { os.Remove(f.Name()) })
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("raw-pull", func(b *testing.B) { rawPull(b, false) })
	// Not the baseline, a second reference: the raw download made durable
	// with one fsync at the end, as a pull must be before it is installed.
	b.Run("raw-pull+fsync", func(b *testing.B) { rawPull(b, true) })
}

// reportCPU reports the processor time this process (the client; the
// server is another) spent per transfer, the untimed steps left out: on a
// busy machine a transfer's time follows its CPU, and this figure moves
// less.
func reportCPU(b *testing.B) func() {
	start, skipped := processCPU(), untimedCPU
	return func() {
		spent := processCPU() - start - (untimedCPU - skipped)
		b.ReportMetric(spent.Seconds()/float64(b.N), "cpu-s/op")
	}
}

func processCPU() time.Duration { return testenv.ProcessCPU().Total() }

// untimedCPU is the processor time spent in untimed steps so far.
var untimedCPU time.Duration

// untimed runs f outside the timer and the CPU figure.
func untimed(b *testing.B, f func()) {
	b.StopTimer()
	start := processCPU()
	f()
	untimedCPU += processCPU() - start
	b.StartTimer()
}

// settle writes back what the steps before left dirty (the source disk,
// the server's objects, the last pull), untimed: each figure is of its
// own transfer, not of the previous one's writeback sharing the disk.
func settle(b *testing.B) { untimed(b, syscall.Sync) }
