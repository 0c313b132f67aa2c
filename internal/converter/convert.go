// Package converter turns an OCI or Docker image into the payload disk and
// metadata that the VM runtime and mergen-init consume (see imagemeta for the
// file names), and makes agent and env disks.
//
// Guarantees: the output directory is always inside the images root whatever
// the reference; layers are cached by digest and verified before use; the
// products are staged and moved into place only when all of them are good,
// image-meta.json last, so a failed run never leaves something a later run
// would take for a finished conversion.
//
// The unpacked tree holds the image's setuid and setgid files and device
// nodes, which the guest needs and other host users must never reach: it is
// built in a staging directory of mode 0700, kept inside the ext4 image, and
// removed once the image is built unless KeepDir asks for it, in which case
// its top directory is 0700. Each layer is bounded in uncompressed size and
// number of entries (MaxLayerBytes, MaxLayerEntries).
package converter

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/mergenhq/mergen/internal/converter/ext4"
	"github.com/mergenhq/mergen/internal/converter/layer"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/progress"
)

// CacheDir is the name of the layer cache inside an image's output dir.
const CacheDir = imagemeta.CacheDir

// Default bounds of one layer, uncompressed.
const (
	DefaultMaxLayerBytes   int64 = 16 << 30
	DefaultMaxLayerEntries       = 1 << 20
)

// stagingPrefix names a conversion's staging directory in the output dir.
const stagingPrefix = ".staging-"

// Options of one conversion.
type Options struct {
	Source   string // registry reference, oci:DIR or docker-archive:FILE
	Platform string // os/arch[/variant]; "" = the host's
	// ImagesRoot (MGR_IMAGES_ROOT) holds the output dir, ImagesRoot/<ref>,
	// where the daemon and `mergen images ls` look for it. Required
	// unless OutputDir is given.
	ImagesRoot string
	OutputDir  string // "" = ImagesRoot/<ref>
	// BaseAssetsDir (MGR_BASE_ASSETS_DIR) is where suggested-vm-request.json
	// points for the kernel, rootfs and agent disk; "" leaves them out (the
	// daemon's defaults apply).
	BaseAssetsDir string
	Insecure      bool  // plain HTTP registry
	SkipPull      bool  // convert from the cache alone
	SizeMiB       int64 // 0 = from content
	Headroom      float64
	// KeepDir keeps payload-rootfs/ (top directory 0700: it holds the
	// image's setuid files and device nodes). By default it is removed
	// once the ext4 image is built.
	KeepDir bool
	NoTar   bool // do not write payload-rootfs.tar
	// MaxLayerBytes and MaxLayerEntries bound each layer, uncompressed:
	// 0 is the default (DefaultMaxLayerBytes, DefaultMaxLayerEntries), a
	// negative value no bound.
	MaxLayerBytes   int64
	MaxLayerEntries int
	Keychain        authn.Keychain
	Progress        *progress.Tracker // nil = quiet
}

// Result names what a conversion produced.
type Result struct {
	OutputDir string
	Ext4      string
	Meta      imagemeta.ImageMeta
	Runtime   imagemeta.Runtime
	Pulled    int // layers downloaded (0 when all came from the cache)
}

// Convert runs the whole pipeline for one image.
func Convert(ctx context.Context, o Options) (*Result, error) {
	if o.Source == "" {
		return nil, fmt.Errorf("convert: image reference is empty")
	}
	if o.Platform == "" {
		o.Platform = HostPlatform()
	}
	plat, err := ParsePlatform(o.Platform)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", o.Source, err)
	}
	if o.Keychain == nil {
		o.Keychain = authn.DefaultKeychain
	}
	if o.Headroom == 0 {
		o.Headroom = 0.2
	}
	if o.MaxLayerBytes == 0 {
		o.MaxLayerBytes = DefaultMaxLayerBytes
	}
	if o.MaxLayerEntries == 0 {
		o.MaxLayerEntries = DefaultMaxLayerEntries
	}
	out := o.OutputDir
	if out == "" {
		if out, err = OutputDir(o.ImagesRoot, o.Source); err != nil {
			return nil, fmt.Errorf("convert %s: %w", o.Source, err)
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("convert %s: output dir: %w", o.Source, err)
	}
	// One conversion per output dir at a time: a second one waits and then
	// finds the layers in the cache.
	lock, err := os.OpenFile(filepath.Join(out, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("convert %s: output dir: %w", o.Source, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("convert %s: lock %s: %w", o.Source, out, err)
	}
	// A conversion killed earlier left its staging directory: private,
	// but possibly large. None other is in use while the lock is held.
	if olds, err := filepath.Glob(filepath.Join(out, stagingPrefix+"*")); err == nil {
		for _, old := range olds {
			os.RemoveAll(old)
		}
	}
	c := cache{dir: filepath.Join(out, CacheDir)}

	rec, sources, err := resolve(ctx, c, o, plat)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", o.Source, err)
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(rec.Config, &cfg); err != nil {
		return nil, fmt.Errorf("convert %s: image config: %w", o.Source, err)
	}
	meta, rt := metaFromConfig(o.Source, rec.Digest, o.Platform, &cfg)
	res := &Result{OutputDir: out, Ext4: filepath.Join(out, imagemeta.PayloadExt4), Meta: meta, Runtime: rt}

	// The same image converted the same way is already there, untouched:
	// nothing to read or write.
	key := conversionKey(rec, o, out, os.Geteuid() == 0)
	if !o.KeepDir && c.upToDate(out, key, o) {
		o.Progress.File("up to date "+imagemeta.PayloadExt4, progress.Unknown).End(nil)
		return res, nil
	}

	// 0700 (MkdirTemp's mode, made explicit): while the layers are
	// applied nothing in the tree is reachable by other users.
	stage, err := os.MkdirTemp(out, stagingPrefix)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", o.Source, err)
	}
	defer os.RemoveAll(stage)
	// Work left running in the background (the removal of the unpacked
	// tree) ends before Convert returns, and before the staging sweep.
	var bg sync.WaitGroup
	defer bg.Wait()
	if err := os.Chmod(stage, 0o700); err != nil {
		return nil, fmt.Errorf("convert %s: %w", o.Source, err)
	}
	if res.Pulled, err = build(ctx, c, rec, sources, stage, out, meta, rt, o, &bg); err != nil {
		return nil, fmt.Errorf("convert %s: %w", o.Source, err)
	}
	if err := c.dropStamp(); err != nil {
		return nil, fmt.Errorf("convert %s: %w", o.Source, err)
	}
	if err := publish(stage, out, o); err != nil {
		return nil, fmt.Errorf("convert %s: %w", o.Source, err)
	}
	if !o.KeepDir {
		// Without the stamp the next run converts again: slower, never
		// wrong, so a failure to write it does not fail this one.
		_ = c.writeStamp(out, key, o)
	}
	return res, nil
}

// resolve reads the record of the image (manifest digest, config, layer
// digests) from the source, or from the cache with SkipPull, and says where
// each layer's bytes will come from. No layer is read here.
func resolve(ctx context.Context, c cache, o Options, plat *v1.Platform) (record, []layerSource, error) {
	if o.SkipPull {
		r, err := c.loadRecord(o.Source, o.Platform)
		if err != nil {
			return r, nil, err
		}
		var srcs []layerSource
		for _, d := range r.Layers {
			srcs = append(srcs, layerSource{digest: d, size: progress.Unknown})
		}
		return r, srcs, nil
	}
	img, err := open(ctx, o.Source, plat, o.Insecure, o.Keychain)
	if err != nil {
		return record{}, nil, err
	}
	dg, err := img.Digest()
	if err != nil {
		return record{}, nil, err
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return record{}, nil, fmt.Errorf("image config: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return record{}, nil, fmt.Errorf("image layers: %w", err)
	}
	rec := record{Source: o.Source, Platform: o.Platform, Digest: dg.String(), Config: raw}
	var srcs []layerSource
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return rec, nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if _, err := c.blobPath(d.String()); err != nil {
			return rec, nil, err
		}
		rec.Layers = append(rec.Layers, d.String())
		ls := layerSource{digest: d.String(), size: progress.Unknown}
		if !c.has(d.String()) {
			if size, err := l.Size(); err == nil {
				ls.size = size
			}
			ls.open = l.Compressed
		}
		srcs = append(srcs, ls)
	}
	return rec, srcs, nil
}

func short(d string) string {
	if h, ok := cutSHA256(d); ok {
		return h[:12]
	}
	return d
}

// applyLayers applies the layers into root, bottom first. Each blob is read
// once: fetched (and cached) or taken from the cache, hashed and decompressed
// in a goroutine while this one writes the files. It returns how many layers
// came from the image source.
func applyLayers(ctx context.Context, c cache, sources []layerSource, root string, attrs layer.Attrs, o Options) (int, error) {
	pulled := 0
	lim := layer.Limits{MaxBytes: max(o.MaxLayerBytes, 0), MaxEntries: max(o.MaxLayerEntries, 0)}
	for _, ls := range sources {
		if err := ctx.Err(); err != nil {
			return pulled, err
		}
		var pull *progress.Counter
		if ls.open != nil {
			pull = o.Progress.File("pull "+short(ls.digest), ls.size)
		}
		s, err := c.stream(ls, pull)
		if err != nil {
			pull.End(err)
			return pulled, fmt.Errorf("apply layer %s: %w", ls.digest, err)
		}
		ctr := o.Progress.File("apply "+short(ls.digest), progress.Unknown)
		_, err = layer.ApplyWith(root, io.TeeReader(s, ctr), layer.Options{Attrs: attrs, Limits: lim})
		err = s.finish(err)
		pull.End(err)
		ctr.End(err)
		if err != nil {
			return pulled, fmt.Errorf("apply layer %s: %w", ls.digest, err)
		}
		if ls.open != nil {
			pulled++
		}
	}
	return pulled, nil
}

// build writes every product into stage, to be published in out, and returns
// how many layers it pulled.
func build(ctx context.Context, c cache, rec record, sources []layerSource, stage, out string, meta imagemeta.ImageMeta, rt imagemeta.Runtime, o Options, bg *sync.WaitGroup) (int, error) {
	root := filepath.Join(stage, imagemeta.PayloadDir)
	if err := os.Mkdir(root, 0o755); err != nil {
		return 0, err
	}
	// Without root the directory cannot hold owners and devices: they are
	// recorded and the disk is made from an archive that carries them.
	var attrs layer.Attrs
	if os.Geteuid() != 0 {
		attrs = layer.Attrs{}
	}
	pulled, err := applyLayers(ctx, c, sources, root, attrs, o)
	if err != nil {
		return pulled, err
	}
	if !o.SkipPull {
		if err := c.saveRecord(rec); err != nil {
			return pulled, fmt.Errorf("cache record: %w", err)
		}
	}
	return pulled, writeProducts(ctx, root, stage, out, meta, rt, attrs, o, bg)
}

// writeProducts makes the disk and the metadata files from the applied tree.
// The unpacked tree is removed in the background (bg) once the disk is
// made, unless it is kept.
func writeProducts(ctx context.Context, root, stage, out string, meta imagemeta.ImageMeta, rt imagemeta.Runtime, attrs layer.Attrs, o Options, bg *sync.WaitGroup) error {
	metaJSON, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	rtJSON, err := json.MarshalIndent(rt, "", "  ")
	if err != nil {
		return err
	}
	// The guest reads its start contract from the payload disk itself.
	md := filepath.Join(root, imagemeta.MetaDir)
	if err := os.MkdirAll(md, 0o755); err != nil {
		return err
	}
	for name, b := range map[string][]byte{imagemeta.ImageMetaFile: metaJSON, imagemeta.RuntimeFile: rtJSON} {
		if err := os.WriteFile(filepath.Join(md, name), b, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(stage, name), b, 0o644); err != nil {
			return err
		}
	}
	tarPath := filepath.Join(stage, imagemeta.PayloadTar)
	if !o.NoTar || attrs != nil {
		if err := tarDir(root, tarPath, attrs); err != nil {
			return fmt.Errorf("write %s: %w", imagemeta.PayloadTar, err)
		}
	}
	ctr := o.Progress.File("ext4 "+imagemeta.PayloadExt4, progress.Unknown)
	disk := filepath.Join(stage, imagemeta.PayloadExt4)
	eo := ext4.Options{Label: imagemeta.LabelPayload, SizeMiB: o.SizeMiB, Headroom: o.Headroom}
	if !o.KeepDir {
		// The tree is not published: it goes while the disk is checked
		// and the products are moved into place.
		eo.DirDone = func() {
			bg.Add(1)
			go func() {
				defer bg.Done()
				os.RemoveAll(root)
			}()
		}
	}
	if attrs != nil {
		err = ext4.FromTar(ctx, tarPath, root, disk, eo)
	} else {
		err = ext4.FromDir(ctx, root, disk, eo)
	}
	if st, serr := os.Stat(disk); err == nil && serr == nil {
		ctr.Set(st.Size())
	}
	ctr.End(err)
	if err != nil {
		return err
	}
	bootArgs := "console=ttyS0 reboot=k panic=1 init=/sbin/init"
	if err := os.WriteFile(filepath.Join(stage, imagemeta.SuggestedBootArgs), []byte(bootArgs+"\n"), 0o644); err != nil {
		return err
	}
	req := map[string]any{
		"payloadDisk": filepath.Join(out, imagemeta.PayloadExt4),
		"vcpu":        1,
		"memMiB":      256,
		"bootArgs":    bootArgs,
	}
	if base := o.BaseAssetsDir; base != "" {
		req["kernel"] = filepath.Join(base, "vmlinux")
		req["rootfs"] = filepath.Join(base, "golden-rootfs.ext4")
		req["agentDisk"] = filepath.Join(base, "agent-rootfs.ext4")
	}
	if rt.HTTPPort > 0 {
		req["httpPort"] = rt.HTTPPort
		req["ports"] = []map[string]any{{"guest": rt.HTTPPort, "host": 0, "protocol": "tcp"}}
	}
	rb, _ := json.MarshalIndent(req, "", "  ")
	if err := os.WriteFile(filepath.Join(stage, imagemeta.SuggestedVMRequest), rb, 0o644); err != nil {
		return err
	}
	if !o.KeepDir {
		return nil
	}
	// A layer may have set the root's mode; the kept tree is private.
	return os.Chmod(root, 0o700)
}

// publish moves staged products into out. image-meta.json is removed first
// and moved last, which is what imagemeta.Complete relies on.
func publish(stage, out string, o Options) error {
	marker := filepath.Join(out, imagemeta.ImageMetaFile)
	if err := os.Remove(marker); err != nil && !os.IsNotExist(err) {
		return err
	}
	names := []string{imagemeta.PayloadExt4, imagemeta.RuntimeFile, imagemeta.SuggestedBootArgs, imagemeta.SuggestedVMRequest}
	if !o.NoTar {
		names = append(names, imagemeta.PayloadTar)
	}
	if o.KeepDir {
		names = append(names, imagemeta.PayloadDir)
	}
	for _, n := range names {
		dst := filepath.Join(out, n)
		if err := os.RemoveAll(dst); err != nil {
			return err
		}
		if err := os.Rename(filepath.Join(stage, n), dst); err != nil {
			return err
		}
	}
	if !o.KeepDir {
		// Also the tree an earlier conversion kept, possibly world-readable.
		if err := os.RemoveAll(filepath.Join(out, imagemeta.PayloadDir)); err != nil {
			return err
		}
	}
	if o.NoTar {
		os.Remove(filepath.Join(out, imagemeta.PayloadTar))
	}
	if err := os.Rename(filepath.Join(stage, imagemeta.ImageMetaFile), marker); err != nil {
		return err
	}
	if d, err := os.Open(out); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// metaFromConfig reads the run contract out of the image config.
func metaFromConfig(src, digest, platform string, cf *v1.ConfigFile) (imagemeta.ImageMeta, imagemeta.Runtime) {
	c := cf.Config
	var ports []string
	for p := range c.ExposedPorts {
		ports = append(ports, p)
	}
	sort.Strings(ports)
	m := imagemeta.ImageMeta{
		Image: src, Digest: digest, Platform: platform,
		Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir,
		User: c.User, ExposedPorts: ports, StopSignal: c.StopSignal, Labels: c.Labels,
	}
	argv := append(append([]string{}, c.Entrypoint...), c.Cmd...)
	rt := imagemeta.Runtime{
		Version: 1, Image: src, Digest: digest, Argv: argv, Env: c.Env,
		WorkingDir: c.WorkingDir, User: c.User, StopSignal: c.StopSignal,
	}
	// The first tcp port in numeric order is the hint; images that expose
	// several usually list the main one lowest (80 before 443).
	best := 0
	for _, p := range ports {
		num, proto, _ := strings.Cut(p, "/")
		if proto != "" && proto != "tcp" {
			continue
		}
		if n, err := strconv.Atoi(num); err == nil && n > 0 && (best == 0 || n < best) {
			best = n
		}
	}
	rt.HTTPPort = best
	return m, rt
}

// tarDir writes dir as a tar file (uncompressed) with owners, modes, links,
// devices and xattrs as they are on disk.
func tarDir(dir, out string, attrs layer.Attrs) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	inodes := map[uint64]string{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tarHeader(p, rel, fi, inodes, attrs)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			// Placeholders of devices were turned into device headers.
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
