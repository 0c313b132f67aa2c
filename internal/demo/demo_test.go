package demo

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

func TestBuildWritesARunnableOCILayout(t *testing.T) {
	bb := filepath.Join(t.TempDir(), "busybox")
	os.WriteFile(bb, []byte("\x7fELF not really"), 0o755)
	dir := filepath.Join(t.TempDir(), "demo")
	if err := Build(dir, bb); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil || len(m.Manifests) != 1 {
		t.Fatalf("index: %v, %d manifests", err, len(m.Manifests))
	}
	if m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != Ref {
		t.Fatalf("ref annotation %v", m.Manifests[0].Annotations)
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "www" || cfg.Config.Entrypoint[0] != "/bin/busybox" || cfg.Config.WorkingDir != "/www" {
		t.Fatalf("config %+v", cfg.Config)
	}
	if _, ok := cfg.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Fatalf("exposed ports %v", cfg.Config.ExposedPorts)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers", len(layers))
	}
	// Deterministic: building twice gives the same image.
	dir2 := filepath.Join(t.TempDir(), "demo2")
	Build(dir2, bb)
	p2, _ := layout.FromPath(dir2)
	idx2, _ := p2.ImageIndex()
	m2, _ := idx2.IndexManifest()
	if m2.Manifests[0].Digest != m.Manifests[0].Digest {
		t.Fatal("the demo image is not reproducible")
	}
}
