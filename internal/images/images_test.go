package images

import (
	"os"
	"path/filepath"
	"testing"
)

func TestListFindsBaseAssetsAndConvertedImages(t *testing.T) {
	root := t.TempDir()
	base := filepath.Join(root, "base", "current")
	imgs := filepath.Join(root, "images")
	os.MkdirAll(filepath.Join(base, "bin"), 0o755)
	os.WriteFile(filepath.Join(base, "vmlinux"), make([]byte, 100), 0o644)
	os.WriteFile(filepath.Join(base, "bin", "sbin-init"), make([]byte, 7), 0o755)
	// Written by a pull; hidden, so not listed as a file, but it names the
	// version.
	os.WriteFile(filepath.Join(base, ".mergen-manifest.json"), []byte(`{"kind":"base","platform":"linux-amd64","flavor":"buildroot","version":"v0.0.1"}`), 0o644)
	for _, ref := range []string{"nginx:alpine", "ghcr.io/org/app:1.2.3"} {
		d := filepath.Join(imgs, ref)
		os.MkdirAll(filepath.Join(d, "payload-rootfs", "etc"), 0o755)
		os.WriteFile(filepath.Join(d, "image-meta.json"), []byte(`{"image":"`+ref+`","digest":"sha256:abc"}`), 0o644)
		os.WriteFile(filepath.Join(d, "payload-rootfs.ext4"), make([]byte, 4096), 0o644)
	}
	// Unfinished conversions are not images: a disk whose metadata was
	// never moved in, metadata without a disk.
	os.MkdirAll(filepath.Join(imgs, "half:1"), 0o755)
	os.WriteFile(filepath.Join(imgs, "half:1", "payload-rootfs.ext4"), make([]byte, 4096), 0o644)
	os.MkdirAll(filepath.Join(imgs, "nodisk:1"), 0o755)
	os.WriteFile(filepath.Join(imgs, "nodisk:1", "image-meta.json"), []byte(`{"image":"nodisk:1"}`), 0o644)
	inv, err := List(base, imgs)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Base) != 2 || inv.Base[0].Name != "vmlinux" || inv.Base[0].Size != 100 || inv.Base[1].Name != "bin/sbin-init" {
		t.Fatalf("base %+v", inv.Base)
	}
	if inv.BaseVersion != "linux-amd64/buildroot/v0.0.1" {
		t.Fatalf("base version %q", inv.BaseVersion)
	}
	if len(inv.Images) != 2 || inv.Images[0].Ref != "ghcr.io/org/app:1.2.3" || inv.Images[1].Ref != "nginx:alpine" {
		t.Fatalf("images %+v", inv.Images)
	}
	if inv.Images[1].Payload == nil || inv.Images[1].Payload.Size != 4096 || inv.Images[1].Digest != "sha256:abc" {
		t.Fatalf("image %+v", inv.Images[1])
	}
}

func TestListOfAFreshHostIsEmpty(t *testing.T) {
	inv, err := List(filepath.Join(t.TempDir(), "nope"), filepath.Join(t.TempDir(), "nope"))
	if err != nil || len(inv.Base) != 0 || len(inv.Images) != 0 {
		t.Fatalf("%+v %v", inv, err)
	}
}
