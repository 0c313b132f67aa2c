// Package imagemeta defines the files that connect the converter, the VM
// runtime and the guest init: the image metadata written next to every
// converted payload disk, and the filesystem labels by which the guest finds
// its disks no matter in which order the VMM attached them.
//
// The converter writes these files; mergen-init reads them from the payload
// disk. Both sides use these types so the format has one definition.
package imagemeta

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// Filesystem labels of the disks a VM is given. mergen-init identifies disks
// by these labels (ext4 volume name), never by device order.
const (
	LabelRoot    = "mergen-root"    // golden rootfs: busybox + mergen-init
	LabelAgent   = "mergen-agent"   // read-only agent disk (base bin/)
	LabelPayload = "mergen-payload" // the converted image, mounted read-only
	LabelEnv     = "mergen-env"     // optional env disk
	LabelData    = "mergen-data"    // optional per-VM writable disk
)

// File names inside a converted image directory (images/<ref>/) and at the
// root of the payload disk. The payload disk carries copies of ImageMetaFile
// and RuntimeFile under MetaDir so the guest needs no other disk to start the
// image.
const (
	ImageMetaFile      = "image-meta.json"
	RuntimeFile        = "mergen.runtime.json"
	SuggestedBootArgs  = "suggested-bootargs.txt"
	SuggestedVMRequest = "suggested-vm-request.json"
	PayloadDir         = "payload-rootfs"
	PayloadTar         = "payload-rootfs.tar"
	PayloadExt4        = "payload-rootfs.ext4"
	CacheDir           = "image-cache" // the converter's layer cache
	MetaDir            = ".mergen"     // directory at the root of the payload disk
	EnvFile            = "env"         // KEY=VALUE lines at the root of the env disk
	EnvDiskRuntimeCopy = RuntimeFile
)

// ImageMeta is what the image's config says about how to run it
// (image-meta.json). Field names follow the OCI image config.
type ImageMeta struct {
	Image        string            `json:"image"`            // reference as given, e.g. nginx:alpine
	Digest       string            `json:"digest,omitempty"` // manifest digest
	Platform     string            `json:"platform,omitempty"`
	Entrypoint   []string          `json:"entrypoint,omitempty"`
	Cmd          []string          `json:"cmd,omitempty"`
	Env          []string          `json:"env,omitempty"` // KEY=VALUE, image order
	WorkingDir   string            `json:"workingDir,omitempty"`
	User         string            `json:"user,omitempty"`         // user[:group], names or ids
	ExposedPorts []string          `json:"exposedPorts,omitempty"` // "80/tcp"
	StopSignal   string            `json:"stopSignal,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// Runtime is the resolved start contract for the guest (mergen.runtime.json):
// the argv to exec and the environment, already combined from the image
// config, so the init does not have to re-derive Docker semantics.
type Runtime struct {
	Version    int      `json:"version"` // format version, currently 1
	Image      string   `json:"image"`
	Digest     string   `json:"digest,omitempty"`
	Argv       []string `json:"argv"` // entrypoint + cmd
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`
	User       string   `json:"user,omitempty"`
	StopSignal string   `json:"stopSignal,omitempty"`
	HTTPPort   int      `json:"httpPort,omitempty"` // first exposed tcp port, a hint
}

// Complete reports whether dir holds a finished conversion, and returns its
// image metadata when it does. It is the one test of completeness: the
// converter, `mergen run`, the image inventory and payload pulls all go by
// it.
//
// Whoever fills an image directory (the converter, a payload pull) removes
// ImageMetaFile before replacing anything and moves it in last, after the
// payload disk and the other files. So a directory whose ImageMetaFile
// parses and whose PayloadExt4 is a regular file is complete; a failed,
// interrupted or ongoing run leaves no ImageMetaFile, or one that was never
// moved in.
func Complete(dir string) (ImageMeta, bool) {
	var m ImageMeta
	b, err := os.ReadFile(filepath.Join(dir, ImageMetaFile))
	if err != nil || json.Unmarshal(b, &m) != nil {
		return ImageMeta{}, false
	}
	if st, err := os.Stat(filepath.Join(dir, PayloadExt4)); err != nil || !st.Mode().IsRegular() {
		return ImageMeta{}, false
	}
	return m, true
}
