// Package images lists what a host has locally: the base assets (kernel,
// initramfs, golden rootfs, agent and env disks) and the images converted
// by mergen-converter. The daemon serves it at GET /v1/images and the CLI
// prints it with `mergen images ls`.
package images

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/imagemeta"
)

// File is one local file with its size.
type File struct {
	Name     string    `json:"name"`
	Path     string    `json:"path"`
	Size     int64     `json:"size"`
	Modified time.Time `json:"modified"`
}

// Image is one converted image under the images root.
type Image struct {
	Ref     string `json:"ref"` // e.g. nginx:alpine, ghcr.io/org/app:1.2.3
	Dir     string `json:"dir"`
	Digest  string `json:"digest,omitempty"`
	Payload *File  `json:"payload,omitempty"` // payload-rootfs.ext4 (a listed image has one)
	EnvDisk *File  `json:"envDisk,omitempty"`
}

// Inventory is everything local.
type Inventory struct {
	BaseDir string `json:"baseDir"`
	// BaseVersion is platform/flavor/version of the last pull into BaseDir
	// (from its hidden manifest copy); empty for assets built locally.
	BaseVersion string  `json:"baseVersion,omitempty"`
	Base        []File  `json:"base"`
	ImagesRoot  string  `json:"imagesRoot"`
	Images      []Image `json:"images"`
}

// List reads the base assets dir and the images root. Missing directories
// are empty, not errors: a fresh host has neither.
func List(baseDir, imagesRoot string) (Inventory, error) {
	inv := Inventory{BaseDir: baseDir, ImagesRoot: imagesRoot, Base: []File{}, Images: []Image{}}
	entries, err := os.ReadDir(baseDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return inv, err
	}
	for _, e := range entries {
		if f, ok := file(filepath.Join(baseDir, e.Name())); ok {
			inv.Base = append(inv.Base, f)
		}
	}
	inv.BaseVersion = baseVersion(baseDir)
	bin := filepath.Join(baseDir, "bin")
	if bins, err := os.ReadDir(bin); err == nil {
		for _, e := range bins {
			if f, ok := file(filepath.Join(bin, e.Name())); ok {
				f.Name = "bin/" + f.Name
				inv.Base = append(inv.Base, f)
			}
		}
	}
	// A converted image is a directory that imagemeta.Complete accepts; its
	// path below the root is the reference. Conversions still running or
	// left unfinished are not images yet.
	err = filepath.WalkDir(imagesRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == imagesRoot && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		switch d.Name() {
		case imagemeta.PayloadDir, imagemeta.CacheDir:
			return fs.SkipDir
		}
		meta, ok := imagemeta.Complete(p)
		if !ok {
			return nil
		}
		rel, _ := filepath.Rel(imagesRoot, p)
		img := Image{Ref: filepath.ToSlash(rel), Dir: p, Digest: meta.Digest}
		if f, ok := file(filepath.Join(p, imagemeta.PayloadExt4)); ok {
			img.Payload = &f
		}
		if f, ok := file(filepath.Join(p, "env-rootfs.ext4")); ok {
			img.EnvDisk = &f
		}
		inv.Images = append(inv.Images, img)
		return fs.SkipDir
	})
	sort.Slice(inv.Images, func(i, j int) bool { return inv.Images[i].Ref < inv.Images[j].Ref })
	return inv, err
}

func file(p string) (File, bool) {
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() || strings.HasPrefix(filepath.Base(p), ".") {
		return File{}, false
	}
	return File{Name: filepath.Base(p), Path: p, Size: st.Size(), Modified: st.ModTime().UTC()}, true
}

// baseManifest is the part of an installed manifest (written by the
// artifact package as .mergen-manifest.json) that names the version.
type baseManifest struct {
	Platform string `json:"platform"`
	Flavor   string `json:"flavor"`
	Version  string `json:"version"`
}

func baseVersion(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, ".mergen-manifest.json"))
	if err != nil {
		return ""
	}
	var m baseManifest
	if json.Unmarshal(b, &m) != nil || m.Version == "" {
		return ""
	}
	return m.Platform + "/" + m.Flavor + "/" + m.Version
}
