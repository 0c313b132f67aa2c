package converter

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/testenv"
)

// layoutSource writes the test image as an OCI layout and returns its source
// and its blobs directory.
func layoutSource(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	lp, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(testImage(t, "amd64"), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		t.Fatal(err)
	}
	return "oci:" + filepath.Join(dir, "oci"), filepath.Join(dir, "oci", "blobs", "sha256")
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// A re-conversion of the same image with the same options takes the finished
// one as it is, without opening a layer; a product changed since (even in
// place, with its size and mtime put back), or other options, make it convert
// again.
func TestReconversionReusesTheFinishedOneUntilSomethingChanges(t *testing.T) {
	testenv.RequireRoot(t)
	src, layoutBlobs := layoutSource(t)
	data := t.TempDir()
	o := Options{Source: src, Platform: "linux/amd64", ImagesRoot: data, NoTar: true}
	ctx := context.Background()
	res, err := Convert(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	disk := res.Ext4
	first := inode(t, disk)
	cacheBlobs := filepath.Join(res.OutputDir, CacheDir, "blobs", "sha256")
	cacheOpens := testenv.WatchOpens(t, cacheBlobs)

	again, err := Convert(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if inode(t, disk) != first || again.Pulled != 0 || again.Meta.Digest != res.Meta.Digest || again.Ext4 != disk {
		t.Errorf("unchanged re-conversion rebuilt: inode %d→%d, pulled %d, %+v", first, inode(t, disk), again.Pulled, again.Meta)
	}
	// The layout's config and manifest are read, its layers are not; the
	// cached blobs are not opened at all.
	if n := cacheOpens(); n != 0 {
		t.Errorf("re-conversion opened cached blobs (%d events)", n)
	}
	layers, _ := testImage(t, "amd64").Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		w := testenv.WatchOpens(t, filepath.Join(layoutBlobs, d.Hex))
		if _, err := Convert(ctx, o); err != nil {
			t.Fatal(err)
		}
		if n := w(); n != 0 {
			t.Errorf("re-conversion read layer %s from the layout (%d events)", d, n)
		}
	}
	if _, err := Convert(ctx, Options{Source: src, Platform: "linux/amd64", ImagesRoot: data, NoTar: true, SkipPull: true}); err != nil || inode(t, disk) != first {
		t.Errorf("skip-pull re-conversion: %v, inode %d→%d", err, first, inode(t, disk))
	}

	// One byte of the disk changed in place, size and mtime put back:
	// the kernel's ctime still tells.
	st, _ := os.Stat(disk)
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff}, st.Size()-1)
	f.Close()
	os.Chtimes(disk, st.ModTime(), st.ModTime())
	if _, err := Convert(ctx, o); err != nil {
		t.Fatal(err)
	}
	rebuilt := inode(t, disk)
	if rebuilt == first {
		t.Error("a disk changed in place was taken as the finished conversion")
	}
	if out, err := exec.Command(testenv.Tool(t, "e2fsck"), "-fn", disk).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck of the rebuilt disk: %v\n%s", err, out)
	}

	// The start contract the daemon reads, edited: converted again.
	rtFile := filepath.Join(res.OutputDir, imagemeta.RuntimeFile)
	b, _ := os.ReadFile(rtFile)
	os.WriteFile(rtFile, []byte(strings.Replace(string(b), "/bin/app", "/bin/sh", 1)), 0o644)
	if _, err := Convert(ctx, o); err != nil {
		t.Fatal(err)
	}
	if b2, _ := os.ReadFile(rtFile); string(b2) != string(b) || inode(t, disk) == rebuilt {
		t.Errorf("an edited %s was kept: %s", imagemeta.RuntimeFile, b2)
	}

	// Other options, other products.
	rebuilt = inode(t, disk)
	o.SizeMiB = 64
	if _, err := Convert(ctx, o); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(disk); inode(t, disk) == rebuilt || st.Size() != 64<<20 {
		t.Errorf("a new --size-mib did not convert again: size %d", st.Size())
	}
}

// A cached blob damaged on disk is found while it is read (its digest is
// checked as it streams), removed, and fetched again by the next run.
func TestDamagedCachedBlobIsFoundAndFetchedAgain(t *testing.T) {
	testenv.RequireRoot(t)
	src, _ := layoutSource(t)
	data := t.TempDir()
	ctx := context.Background()
	o := Options{Source: src, Platform: "linux/amd64", ImagesRoot: data, NoTar: true}
	res, err := Convert(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := testImage(t, "amd64").Layers()
	d, _ := layers[0].Digest()
	blob := filepath.Join(res.OutputDir, CacheDir, "blobs", "sha256", d.Hex)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Other options, so that the layers are read again.
	o.SkipPull, o.SizeMiB = true, 48
	_, err = Convert(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "apply layer "+d.String()) || !strings.Contains(err.Error(), "content digest is sha256:") {
		t.Fatalf("damaged cached blob: err = %v, want a digest mismatch naming the layer", err)
	}
	if _, err := os.Stat(blob); !os.IsNotExist(err) {
		t.Errorf("the damaged blob is still in the cache (%v)", err)
	}
	o.SkipPull = false
	res, err = Convert(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Pulled != 1 {
		t.Errorf("fetched %d layers again, want the 1 that was damaged", res.Pulled)
	}
}
