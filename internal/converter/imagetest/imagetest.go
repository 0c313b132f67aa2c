// Package imagetest builds image layers for the converter's tests and reads
// the ext4 disks they produce back with debugfs. Only tests import it.
package imagetest

import (
	"archive/tar"
	"bytes"
	"io"
	"os/exec"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mergenhq/mergen/internal/testenv"
)

// Entry is one tar entry of a test layer. A zero Type is a regular file
// holding Body; a zero Mode is 0644 (0755 for directories).
type Entry struct {
	Name, Body, Link string
	Type             byte
	Mode             int64
	UID, GID         int
	Xattrs           map[string]string
}

// Layer makes an uncompressed layer from the entries, in order.
func Layer(t testing.TB, es ...Entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Link, Uid: e.UID, Gid: e.GID}
		if h.Typeflag == 0 {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.Body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.Body)
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Debugfs runs one debugfs request against an ext4 image and returns what it
// printed, with debugfs's version banner left out (it reports a missing file
// on stderr, after that banner).
func Debugfs(t testing.TB, img, req string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(testenv.Tool(t, "debugfs"), "-R", req, img)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs %q: %v: %s", req, err, stderr.String())
	}
	var msgs []string
	for _, l := range strings.SplitAfter(stderr.String(), "\n") {
		if !strings.HasPrefix(l, "debugfs ") {
			msgs = append(msgs, l)
		}
	}
	return string(out) + strings.Join(msgs, "")
}

// Image is a linux/amd64 image of the layers whose entrypoint is
// /bin/server and which exposes 80/tcp.
func Image(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint = []string{"/bin/server"}
	cf.Config.ExposedPorts = map[string]struct{}{"80/tcp": {}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}
