package converter

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/version"
)

// productFormat names what the converter writes for a given input. Raise it
// whenever the products change (layout of the disk, mkfs options, metadata
// files), so that a newer converter never takes an older one's output for
// its own.
const productFormat = 2

// stampFile, in the cache dir, records the finished conversion that the
// output dir holds: the key of its inputs and the identity of each product.
// A re-conversion with the same key whose products are unchanged is done
// without reading a layer.
const stampFile = "conversion.json"

// smallProduct is the size up to which a product's content is hashed in the
// stamp; larger ones (the disk, the archive) are known by their identity.
const smallProduct = 1 << 20

type stamp struct {
	Key      string         `json:"key"`
	Products []productStamp `json:"products"`
}

// productStamp is what changes when a product is written, truncated,
// replaced or has its mode or owner changed: the kernel sets ctime on every
// such change and no system call can set it back. Small products also carry
// a hash of their content.
type productStamp struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Mtime  int64  `json:"mtimeNs"`
	Ctime  int64  `json:"ctimeNs"`
	SHA256 string `json:"sha256,omitempty"`
}

// conversionKey is the digest of everything a conversion's products depend
// on: the converter, the image (manifest digest, which covers the config and
// every layer), the reference as given and the output dir (both written into
// the metadata), and the options.
func conversionKey(rec record, o Options, out string, privileged bool) string {
	b, _ := json.Marshal(struct {
		Format                   int
		Version                  string
		Source, Platform, Digest string
		Out, BaseAssets          string
		SizeMiB                  int64
		Headroom                 float64
		NoTar                    bool
		MaxBytes                 int64
		MaxEntries               int
		Privileged               bool
	}{productFormat, version.Version, o.Source, o.Platform, rec.Digest, out, o.BaseAssetsDir,
		o.SizeMiB, o.Headroom, o.NoTar, o.MaxLayerBytes, o.MaxLayerEntries, privileged})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// products are the files a conversion publishes in the output dir. The kept
// tree (KeepDir) is not among them: it cannot be checked cheaply, so such
// conversions are never taken from the stamp.
func products(o Options) []string {
	names := []string{imagemeta.PayloadExt4, imagemeta.RuntimeFile, imagemeta.SuggestedBootArgs,
		imagemeta.SuggestedVMRequest, imagemeta.ImageMetaFile}
	if !o.NoTar {
		names = append(names, imagemeta.PayloadTar)
	}
	return names
}

func (c cache) stampPath() string { return filepath.Join(c.dir, stampFile) }

// upToDate reports whether out holds the products of a conversion with this
// key, unchanged since it finished: a few stats and the hash of the small
// files, never the layers.
func (c cache) upToDate(out, key string, o Options) bool {
	b, err := os.ReadFile(c.stampPath())
	if err != nil {
		return false
	}
	var st stamp
	if json.Unmarshal(b, &st) != nil || st.Key != key {
		return false
	}
	want := products(o)
	if len(st.Products) != len(want) {
		return false
	}
	for i, n := range want {
		got, err := stampOf(filepath.Join(out, n))
		if err != nil || st.Products[i].Name != n {
			return false
		}
		got.Name = n
		if got != st.Products[i] {
			return false
		}
	}
	_, ok := imagemeta.Complete(out)
	return ok
}

// writeStamp records the products just published under key.
func (c cache) writeStamp(out, key string, o Options) error {
	st := stamp{Key: key}
	for _, n := range products(o) {
		ps, err := stampOf(filepath.Join(out, n))
		if err != nil {
			return err
		}
		ps.Name = n
		st.Products = append(st.Products, ps)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(c.stampPath(), b, 0o644)
}

// dropStamp forgets the finished conversion; done before any product is
// replaced, so an interrupted run is never taken for a finished one.
func (c cache) dropStamp() error {
	if err := os.Remove(c.stampPath()); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

func stampOf(p string) (productStamp, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return productStamp{}, err
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return productStamp{}, os.ErrInvalid
	}
	ps := productStamp{Size: fi.Size(), Dev: uint64(sys.Dev), Ino: sys.Ino,
		Mtime: sys.Mtim.Nano(), Ctime: sys.Ctim.Nano()}
	if fi.Size() <= smallProduct {
		b, err := os.ReadFile(p)
		if err != nil {
			return productStamp{}, err
		}
		if int64(len(b)) != fi.Size() {
			return productStamp{}, os.ErrInvalid
		}
		sum := sha256.Sum256(b)
		ps.SHA256 = hex.EncodeToString(sum[:])
	}
	return ps, nil
}
