package converter

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mergenhq/mergen/internal/testenv"
)

// benchLayer is a layer of n files of size bytes each, half random (so it
// does not compress away) and half text, under dir/.
func benchLayer(b *testing.B, r *rand.Rand, dir string, n, size int) (v1.Layer, []byte) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755})
	body := make([]byte, size)
	for i := 0; i < n; i++ {
		r.Read(body[:size/2])
		for j := size / 2; j < size; j++ {
			body[j] = "abcdefgh\n"[j%9]
		}
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("%s/f%04d", dir, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)})
		tw.Write(body)
	}
	tw.Close()
	raw := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		b.Fatal(err)
	}
	return l, raw
}

// BenchmarkConvertAgainstTarAndMkfs converts a ~100 MB, 4-layer image from
// an OCI layout and prints, from the same run, the baseline (tar -x of the
// layers in order, then mkfs.ext4 -d), the ratio, and the time of a cached
// re-conversion; also the baseline with mkfs.ext4 given the converter's block
// size, and the load average, to read the figures by.
func BenchmarkConvertAgainstTarAndMkfs(b *testing.B) {
	testenv.RequireRoot(b)
	work := b.TempDir()
	r := rand.New(rand.NewSource(1))
	img := v1.Image(empty.Image)
	var raws [][]byte
	for i := 0; i < 4; i++ {
		l, raw := benchLayer(b, r, fmt.Sprintf("layer%d", i), 100, 256<<10)
		raws = append(raws, raw)
		var err error
		if img, err = mutate.AppendLayers(img, l); err != nil {
			b.Fatal(err)
		}
	}
	lp, err := layout.Write(filepath.Join(work, "oci"), empty.Index)
	if err != nil {
		b.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Baseline.
		base := filepath.Join(work, fmt.Sprintf("base%d", i))
		os.MkdirAll(filepath.Join(base, "root"), 0o755)
		// The flattened layers are on disk before the clock starts.
		for j, raw := range raws {
			os.WriteFile(filepath.Join(base, fmt.Sprintf("l%d.tar", j)), raw, 0o644)
		}
		var baseCPU time.Duration
		baselineWith := func(mkfsOpts ...string) time.Duration {
			root := filepath.Join(base, "root")
			os.RemoveAll(root)
			os.MkdirAll(root, 0o755)
			os.Remove(filepath.Join(base, "disk.ext4"))
			c0 := cpuTime()
			t0 := time.Now()
			for j := range raws {
				tf := filepath.Join(base, fmt.Sprintf("l%d.tar", j))
				if out, err := exec.Command("tar", "-xf", tf, "-C", root).CombinedOutput(); err != nil {
					b.Fatalf("tar: %v %s", err, out)
				}
			}
			os.WriteFile(filepath.Join(base, "disk.ext4"), nil, 0o644)
			os.Truncate(filepath.Join(base, "disk.ext4"), 200<<20)
			args := append(append([]string{"-q", "-F"}, mkfsOpts...), "-d", root, filepath.Join(base, "disk.ext4"))
			if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
				b.Fatalf("mkfs: %v %s", err, out)
			}
			took := time.Since(t0)
			baseCPU = cpuTime() - c0
			return took
		}
		baseline := baselineWith()
		baselineCPU := baseCPU
		// The same with the block size the converter asks for (mke2fs
		// alone picks 1 KiB blocks below 512 MiB): what the rest of the
		// pipeline costs, apart from that choice.
		baseline4k := baselineWith("-b", "4096")
		os.RemoveAll(base)

		o := Options{Source: "oci:" + filepath.Join(work, "oci"), Platform: "linux/amd64",
			ImagesRoot: work, OutputDir: filepath.Join(work, fmt.Sprintf("out%d", i)), NoTar: true, Keychain: authn.NewMultiKeychain()}
		c1 := cpuTime()
		t1 := time.Now()
		if _, err := Convert(ctx, o); err != nil {
			b.Fatal(err)
		}
		first := time.Since(t1)
		firstCPU := cpuTime() - c1
		t2 := time.Now()
		res, err := Convert(ctx, o)
		if err != nil {
			b.Fatal(err)
		}
		cached := time.Since(t2)
		if res.Pulled != 0 {
			b.Fatalf("re-conversion pulled %d layers", res.Pulled)
		}
		os.RemoveAll(o.OutputDir)
		load, _ := os.ReadFile("/proc/loadavg")
		fmt.Printf("convert ~100 MB / 4 layers: converter %v, baseline tar -x + mkfs.ext4 -d %v, ratio %.2f, cached re-conversion %v"+
			" (baseline with mkfs.ext4 -b 4096 %v, ratio %.2f; CPU converter %v, baseline %v; load %s)\n",
			first.Round(time.Millisecond), baseline.Round(time.Millisecond), first.Seconds()/baseline.Seconds(), cached.Round(10*time.Microsecond),
			baseline4k.Round(time.Millisecond), first.Seconds()/baseline4k.Seconds(),
			firstCPU.Round(time.Millisecond), baselineCPU.Round(time.Millisecond), strings.Join(strings.Fields(string(load))[:3], " "))
		b.ReportMetric(first.Seconds()/baseline.Seconds(), "ratio")
		b.ReportMetric(first.Seconds()/baseline4k.Seconds(), "ratio-4k")
		b.ReportMetric(cached.Seconds(), "cached-s")
	}
}

// cpuTime is the processor time of this process and of its children that
// ended: on a shared machine it moves less with the load than the
// wall-clock figures.
func cpuTime() time.Duration {
	return testenv.ProcessCPU().Total() + testenv.ChildrenCPU().Total()
}
