// Package artifact moves base assets, converted payload disks and VM
// snapshots through an S3-compatible store.
//
// Guarantees: every pushed set carries a manifest.json listing each file's
// size and SHA-256, uploaded after the files; for base assets the `latest`
// pointer moves only after the manifest is in place. A pull downloads into a
// staging directory inside the target, verifies every file against the
// manifest and only then renames the files into place, so an interrupted,
// corrupt or short pull never replaces good local files. Files that already
// match the manifest are not downloaded again. A snapshot is installed as a
// whole: staged in the snapshots root, renamed into place once complete,
// never over an existing one (see PullSnapshot).
package artifact

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mergenhq/mergen/internal/imagemeta"
)

// ManifestName is the manifest's object name inside a version directory, and
// LocalManifest its copy kept (hidden) in an installed directory.
const (
	ManifestName  = "manifest.json"
	LocalManifest = ".mergen-manifest.json"
)

// Manifest describes one pushed set of files.
type Manifest struct {
	Kind      string    `json:"kind"` // "base", "payload" or "snapshot"
	Platform  string    `json:"platform,omitempty"`
	Flavor    string    `json:"flavor,omitempty"`
	Version   string    `json:"version,omitempty"`
	Image     string    `json:"image,omitempty"`
	Snapshot  string    `json:"snapshot,omitempty"` // the snapshot's id
	CreatedAt time.Time `json:"createdAt"`
	Files     []File    `json:"files"`
	// Bases are, for a snapshot, the content of the host files it was
	// taken with (kernel, base disks, image disk), in the order of its
	// record's bases: a pull compares them with the files at the same
	// paths on its own host.
	Bases []BaseFile `json:"bases,omitempty"`
}

// BaseFile is the content of one host file a snapshot needs.
type BaseFile struct {
	Field  string `json:"field"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// File is one entry: Name is the remote object name, Local the file name on
// the host (they differ for base assets, e.g. vmlinux ↔ vmlinux.bin).
type File struct {
	Name   string `json:"name"`
	Local  string `json:"local"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Validate rejects a manifest that could write outside the target directory
// or that cannot be verified.
func (m Manifest) Validate() error {
	if len(m.Files) == 0 {
		return errors.New("manifest: files: empty")
	}
	// A snapshot keeps its data disk under disks/; every other kind is a
	// flat directory.
	check := plainName
	if m.Kind == "snapshot" {
		check = relName
	}
	seen := map[string]bool{}
	for i, f := range m.Files {
		for field, n := range map[string]string{"name": f.Name, "local": f.Local} {
			if err := check(n); err != nil {
				return fmt.Errorf("manifest: files[%d].%s %q: %w", i, field, n, err)
			}
		}
		if seen[f.Local] {
			return fmt.Errorf("manifest: files[%d].local %q: listed twice", i, f.Local)
		}
		seen[f.Local] = true
		if f.Size < 0 {
			return fmt.Errorf("manifest: files[%d].size %d: negative", i, f.Size)
		}
		if !isDigest(f.SHA256) {
			return fmt.Errorf("manifest: files[%d].sha256 %q: not a SHA-256 hex digest", i, f.SHA256)
		}
	}
	for i, b := range m.Bases {
		if !filepath.IsAbs(b.Path) || filepath.Clean(b.Path) != b.Path {
			return fmt.Errorf("manifest: bases[%d].path %q: not a clean absolute path", i, b.Path)
		}
		if !isDigest(b.SHA256) {
			return fmt.Errorf("manifest: bases[%d].sha256 %q: not a SHA-256 hex digest", i, b.SHA256)
		}
	}
	return nil
}

func isDigest(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == sha256.Size
}

// relName accepts a relative path of plain names (see plainName) joined
// by '/'.
func relName(n string) error {
	if n == "" {
		return errors.New("empty")
	}
	for _, el := range strings.Split(n, "/") {
		if err := plainName(el); err != nil {
			return err
		}
	}
	return nil
}

// plainName accepts a single path element only: no separators, no dot
// names, nothing hidden (hidden names are the staging area's).
func plainName(n string) error {
	switch {
	case n == "":
		return errors.New("empty")
	case strings.ContainsAny(n, `/\`) || n == "." || n == "..":
		return errors.New("must be a plain file name (paths outside the target directory are refused)")
	case strings.HasPrefix(n, "."):
		return errors.New("must not start with '.'")
	}
	return nil
}

func decodeManifest(r io.Reader) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(io.LimitReader(r, 1<<20))
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("manifest: not valid JSON: %w", err)
	}
	return m, m.Validate()
}

// hashFile returns size and hex SHA-256 of path.
func hashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// describe hashes the files of dir named in pairs (local → remote).
func describe(dir string, pairs []pair) ([]File, error) {
	files, err := locate(dir, pairs)
	if err != nil {
		return nil, err
	}
	for i, f := range files {
		n, sum, err := hashFile(filepath.Join(dir, f.Local))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Local, err)
		}
		files[i].Size, files[i].SHA256 = n, sum
	}
	return files, nil
}

// locate lists the files of dir named in pairs (local → remote) with their
// sizes, leaving out optional ones that are absent; the digests are left
// to be computed by whoever reads the files next.
func locate(dir string, pairs []pair) ([]File, error) {
	var out []File
	for _, p := range pairs {
		st, err := os.Stat(filepath.Join(dir, p.local))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && p.optional {
				continue
			}
			return nil, fmt.Errorf("%s: %w", p.local, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: not a regular file", p.local)
		}
		out = append(out, File{Name: p.remote, Local: p.local, Size: st.Size()})
	}
	return out, nil
}

type pair struct {
	local, remote string
	optional      bool
}

// BasePairs is the mapping between base-asset files on the host and their
// object names: the kernel travels as vmlinux.bin, the golden rootfs as
// <flavor>-disk.ext4, the agent disk as agent-disk.ext4; a compressed kernel
// and an initramfs travel under their own names when present.
func BasePairs(flavor string) []pair {
	return []pair{
		{local: "vmlinux", remote: "vmlinux.bin"},
		{local: "golden-rootfs.ext4", remote: flavor + "-disk.ext4"},
		{local: "agent-rootfs.ext4", remote: "agent-disk.ext4"},
		{local: "vmlinuz", remote: "vmlinuz", optional: true},
		{local: "initrd.img", remote: "initrd.img", optional: true},
	}
}

// PayloadPairs is what a converted image carries: the payload disk and the
// metadata the converter writes next to it.
func PayloadPairs() []pair {
	return []pair{
		{local: imagemeta.PayloadExt4, remote: imagemeta.PayloadExt4},
		{local: imagemeta.ImageMetaFile, remote: imagemeta.ImageMetaFile},
		{local: imagemeta.RuntimeFile, remote: imagemeta.RuntimeFile, optional: true},
		{local: imagemeta.SuggestedBootArgs, remote: imagemeta.SuggestedBootArgs, optional: true},
		{local: imagemeta.SuggestedVMRequest, remote: imagemeta.SuggestedVMRequest, optional: true},
	}
}
