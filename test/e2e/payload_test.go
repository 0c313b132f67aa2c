package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/testenv"
)

// webPayload builds a payload disk as the converter would: a tiny image
// whose entrypoint is busybox httpd serving page on port, run as an
// unprivileged user of the image.
func webPayload(t testing.TB, dir, page string, port string) string {
	t.Helper()
	return webPayloadWith(t, dir, page, port, nil)
}

// webPayloadWith is webPayload with more executable files, by path under
// the image's root (busybox httpd runs /www/cgi-bin/* as CGI programs).
func webPayloadWith(t testing.TB, dir, page, port string, programs map[string]string) string {
	t.Helper()
	argv := []string{"/bin/busybox", "httpd", "-f", "-v", "-p", port, "-h", "/www"}
	return payloadDisk(t, dir, page, programs, argv, "web", "/www")
}

// payloadDisk builds a payload disk whose image holds busybox (also as
// /bin/sh), the users root and web, page as /www/index.html and programs,
// and runs argv as user in workdir.
func payloadDisk(t testing.TB, dir, page string, programs map[string]string, argv []string, user, workdir string) string {
	t.Helper()
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Fatalf("busybox-static is required (%v): run `make deps`", err)
	}
	root := filepath.Join(dir, "payload-root")
	for _, d := range []string{"bin", "etc", "www", imagemeta.MetaDir, "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// As in real images, /tmp is for everyone.
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	write := func(rel string, data []byte, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(root, rel), data, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("bin/busybox", b, 0o755)
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	write("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000:web:/www:/bin/sh\n"), 0o644)
	write("etc/group", []byte("root:x:0:\nweb:x:1000:\n"), 0o644)
	write("www/index.html", []byte(page), 0o644)
	for rel, text := range programs {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		write(rel, []byte(text), 0o755)
	}
	meta := imagemeta.ImageMeta{Image: "test/web:1", Entrypoint: argv[:1], Cmd: argv[1:], Env: []string{"PATH=/bin"}, WorkingDir: workdir, User: user}
	rt := imagemeta.Runtime{Version: 1, Image: meta.Image, Argv: argv, Env: meta.Env, WorkingDir: workdir, User: user}
	for name, v := range map[string]any{imagemeta.ImageMetaFile: meta, imagemeta.RuntimeFile: rt} {
		j, _ := json.MarshalIndent(v, "", "  ")
		write(filepath.Join(imagemeta.MetaDir, name), j, 0o644)
	}
	out := filepath.Join(dir, imagemeta.PayloadExt4)
	mkfs := testenv.Tool(t, "mkfs.ext4")
	cmd := exec.Command(mkfs, "-q", "-F", "-L", imagemeta.LabelPayload, "-d", root, out, "16M")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, o)
	}
	return out
}
