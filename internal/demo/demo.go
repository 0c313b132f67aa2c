// Package demo builds the bundled demo image: a small web server made from
// the host's static busybox and one page, written as an OCI image layout.
// It needs no registry and no network, so `make run` works on a machine that
// reaches none.
package demo

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Port is the HTTP port the demo image listens on.
const Port = 8080

// Page is the demo's index page.
const Page = `<!doctype html>
<html><head><title>mergen demo</title></head>
<body><h1>Hello from a mergen microVM</h1>
<p>This page is served by busybox httpd inside the guest, reached through mergen-forwarder.</p>
</body></html>
`

// Ref is the tag the demo image carries in its layout.
const Ref = "mergen/demo:latest"

// Build writes the demo image as an OCI image layout into dir, from the
// static busybox binary at busybox (Debian's busybox-static installs it as
// /bin/busybox).
func Build(dir, busybox string) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("demo image: busybox: %w (install busybox-static)", err)
	}
	layerTar, err := rootfsTar(bb)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("demo image: layer: %w", err)
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return fmt.Errorf("demo image: %w", err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("demo image: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{"/bin/busybox", "httpd"}
	cfg.Config.Cmd = []string{"-f", "-v", "-p", fmt.Sprint(Port), "-h", "/www"}
	cfg.Config.Env = []string{"PATH=/bin", "DEMO=mergen"}
	cfg.Config.WorkingDir = "/www"
	cfg.Config.User = "www"
	cfg.Config.ExposedPorts = map[string]struct{}{fmt.Sprintf("%d/tcp", Port): {}}
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return fmt.Errorf("demo image: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("demo image: %w", err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("demo image: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": Ref})); err != nil {
		return fmt.Errorf("demo image: %w", err)
	}
	return nil
}

// rootfsTar is the image's single layer.
func rootfsTar(busybox []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := []string{"bin", "etc", "tmp", "www"}
	for _, d := range dirs {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	files := []struct {
		name string
		mode int64
		uid  int
		data []byte
	}{
		{"bin/busybox", 0o755, 0, busybox},
		{"etc/passwd", 0o644, 0, []byte("root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/sh\n")},
		{"etc/group", 0o644, 0, []byte("root:x:0:\nwww:x:33:\n")},
		{"www/index.html", 0o644, 33, []byte(Page)},
	}
	for _, f := range files {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Uid: f.uid, Gid: f.uid, ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	for _, l := range []string{"sh", "ls", "cat", "ps", "id"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: filepath.Join("bin", l), Linkname: "busybox", ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
