package artifact

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The manifest of a push carries the size and SHA-256 of each file as it
// was read for the upload, the same as a separate pass over the files gives.
func TestPushDigestsAreTheFiles(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	src := sparseBaseDir(t)
	m, err := c.PushBase(ctxT(t), src, Base{"linux-amd64", "buildroot", "v1"})
	if err != nil {
		t.Fatal(err)
	}
	want, err := describe(src, BasePairs("buildroot"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != len(want) {
		t.Fatalf("manifest files %+v, want %+v", m.Files, want)
	}
	for i := range want {
		if m.Files[i] != want[i] {
			t.Fatalf("manifest file %+v, want %+v", m.Files[i], want[i])
		}
	}
}

// A file whose content is not the digest it was described with (changed
// between the check and the upload) makes the push fail before its
// manifest: nothing is published.
func TestUploadRefusesAFileThatChanged(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	src := sparseBaseDir(t)
	files, err := describe(src, BasePairs("buildroot"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(src, "golden-rootfs.ext4"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("X"), 8<<20)
	f.Close()
	keyDir := c.key("linux-amd64", "buildroot", "v1")
	_, err = c.upload(ctxT(t), src, keyDir, Manifest{Kind: "base", Files: files})
	if err == nil || !strings.Contains(err.Error(), "upload buildroot-disk.ext4:") || !strings.Contains(err.Error(), "changed while it was pushed") {
		t.Fatalf("upload of a changed file: %v", err)
	}
	if ok, err := c.exists(ctxT(t), keyDir+"/"+ManifestName); err != nil || ok {
		t.Fatalf("manifest published after a refused upload: %v %v", ok, err)
	}
}
