package main

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mergenhq/mergen/internal/converter"
	"github.com/mergenhq/mergen/internal/converter/imagetest"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/testenv"
)

// distribution starts the real registry server on a loopback port and
// returns host:port.
func distribution(t *testing.T) string {
	t.Helper()
	bin := testenv.Tool(t, "registry")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
`, filepath.Join(dir, "data"), addr)), 0o644)
	cmd := exec.Command(bin, "serve", cfg)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Readiness, not speed: wait for /v2/ to answer, giving up after a while.
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i == 200 {
			t.Fatalf("registry did not come up on %s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return addr
}

func push(t *testing.T, ref string, img v1.Image, opts ...remote.Option) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.Build(t, "./cmd/mergen-converter"), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestEndToEndAgainstDistribution pushes images to the real distribution
// registry and converts them with the mergen-converter binary.
func TestEndToEndAgainstDistribution(t *testing.T) {
	testenv.RequireRoot(t)
	addr := distribution(t)
	data := t.TempDir()
	env := []string{"MGR_DATA_ROOT=" + data, "DOCKER_CONFIG=" + t.TempDir()}

	good := addr + "/e2e/web:1"
	push(t, good, imagetest.Image(t,
		imagetest.Layer(t,
			imagetest.Entry{Name: "bin/", Type: tar.TypeDir},
			imagetest.Entry{Name: "bin/server", Body: "#!/bin/sh\n", Mode: 0o755},
			imagetest.Entry{Name: "bin/passwd", Body: "pw", Mode: 0o4755},
			imagetest.Entry{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
			imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
			imagetest.Entry{Name: "etc/old.conf", Body: "old"},
		),
		imagetest.Layer(t,
			imagetest.Entry{Name: "etc/.wh.old.conf"},
			imagetest.Entry{Name: "etc/new.conf", Body: "new"},
			imagetest.Entry{Name: "bin/passwd2", Type: tar.TypeLink, Link: "bin/passwd"},
		),
		imagetest.Layer(t,
			imagetest.Entry{Name: "www/", Type: tar.TypeDir, UID: 33, GID: 33},
			imagetest.Entry{Name: "www/index.html", Body: "<h1>hi</h1>", UID: 33, GID: 33, Xattrs: map[string]string{"user.origin": "e2e"}},
		),
	))

	out, err := run(t, env, good)
	if err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	dir, _ := converter.OutputDir(filepath.Join(data, "images"), good)
	img := filepath.Join(dir, imagemeta.PayloadExt4)
	if !strings.Contains(out, img) {
		t.Errorf("output does not name the disk %s:\n%s", img, out)
	}
	// Not a terminal: progress comes as plain lines.
	for _, line := range []string{"apply ", "ext4 payload-rootfs.ext4: done"} {
		if !strings.Contains(out, line) {
			t.Errorf("no progress line %q in:\n%s", line, out)
		}
	}
	if got := imagetest.Debugfs(t, img, "cat /etc/new.conf"); !strings.Contains(got, "new") {
		t.Errorf("/etc/new.conf: %s", got)
	}
	for _, c := range []struct{ path, re string }{
		{"/etc/old.conf", `File not found`},
		{"/bin/passwd", `Mode:\s+04755`},
		{"/bin/passwd", `Links: 2`},
		{"/tmp", `Mode:\s+01777`},
		{"/www/index.html", `User:\s+33\s+Group:\s+33`},
		{"/.mergen/" + imagemeta.RuntimeFile, `Type: regular`},
	} {
		if got := imagetest.Debugfs(t, img, "stat "+c.path); !regexp.MustCompile(c.re).MatchString(got) {
			t.Errorf("%s: want %s in:\n%s", c.path, c.re, got)
		}
	}
	if got := imagetest.Debugfs(t, img, "ea_get /www/index.html user.origin"); !strings.Contains(got, "e2e") {
		t.Errorf("xattr: %s", got)
	}

	// The unpacked tree is not kept by default; --keep-rootfs keeps it
	// private.
	if _, err := os.Stat(filepath.Join(dir, imagemeta.PayloadDir)); !os.IsNotExist(err) {
		t.Errorf("a default conversion kept %s (%v)", imagemeta.PayloadDir, err)
	}
	if out, err = run(t, env, "--skip-pull", "--keep-rootfs", "--quiet", good); err != nil {
		t.Fatalf("--keep-rootfs: %v\n%s", err, out)
	}
	if st, err := os.Stat(filepath.Join(dir, imagemeta.PayloadDir)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("--keep-rootfs: %s mode %v (%v), want 0700", imagemeta.PayloadDir, st.Mode(), err)
	}
	if out, err = run(t, env, "--keep-rootfs", "--delete-rootfs", good); err == nil || !strings.Contains(out, "choose one") {
		t.Errorf("--keep-rootfs with --delete-rootfs: %v\n%s", err, out)
	}

	// Converted again from the cache alone, with the single-dash spelling
	// of earlier versions; -delete-rootfs removes the kept tree.
	out, err = run(t, env, "convert", "-skip-pull", "-delete-rootfs", "--quiet", "-image", good)
	if err != nil || out != "" {
		t.Fatalf("skip-pull: %v\n%q", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, imagemeta.PayloadDir)); !os.IsNotExist(err) {
		t.Errorf("-delete-rootfs kept %s (%v)", imagemeta.PayloadDir, err)
	}

	// A layer larger than the bound is refused, naming the layer, the
	// bound and the flag that raises it.
	out, err = run(t, env, "--skip-pull", "--max-layer-bytes", "2048", good)
	if err == nil || !regexp.MustCompile(`apply layer sha256:[0-9a-f]{64}: .*more than 2048 bytes uncompressed.*--max-layer-bytes`).MatchString(out) {
		t.Errorf("--max-layer-bytes 2048: %v\n%s", err, out)
	}

	// An env disk from the converted image's runtime file.
	envDisk := filepath.Join(data, "env.ext4")
	out, err = run(t, env, "--env-rootfs", "--runtime", filepath.Join(dir, imagemeta.RuntimeFile), "--env-var", "GREETING=hello", "-o", envDisk)
	if err != nil {
		t.Fatalf("env disk: %v\n%s", err, out)
	}
	if got := imagetest.Debugfs(t, envDisk, "cat /env"); !strings.Contains(got, "GREETING=hello\n") {
		t.Errorf("env file: %s", got)
	}
	if out, err = run(t, env, "--env-rootfs", "--env-var", "BAD KEY=1", "-o", envDisk+"2"); err == nil || !strings.Contains(out, "BAD KEY") {
		t.Errorf("bad env var: err %v\n%s", err, out)
	}

	// A layer with a symlink out of the root, then a file through it.
	evil := addr + "/e2e/evil:1"
	push(t, evil, imagetest.Image(t,
		imagetest.Layer(t, imagetest.Entry{Name: "x", Type: tar.TypeSymlink, Link: "../../../../../../tmp"}),
		imagetest.Layer(t, imagetest.Entry{Name: "x/mergen-escaped", Body: "pwned"}),
	))
	out, err = run(t, env, evil)
	if err == nil || !strings.Contains(out, "leads out of the root") {
		t.Fatalf("escape attempt: err %v, output:\n%s", err, out)
	}
	if _, err := os.Stat("/tmp/mergen-escaped"); err == nil {
		t.Fatal("the escape attempt wrote /tmp/mergen-escaped")
	}
	evilDir, _ := converter.OutputDir(filepath.Join(data, "images"), evil)
	if _, err := os.Stat(filepath.Join(evilDir, imagemeta.ImageMetaFile)); err == nil {
		t.Error("a refused image left image-meta.json")
	}

	// Unknown image: a clear error and a non-zero exit.
	out, err = run(t, env, addr+"/e2e/nothere:1")
	if err == nil || !strings.Contains(out, "e2e/nothere") {
		t.Errorf("unknown image: err %v, output:\n%s", err, out)
	}
}

// TestLoginStoresCredentialsThatPullsUse puts basic auth in front of the
// in-process registry: pulls fail without credentials, login refuses a wrong
// password, and after login the same pull works.
func TestLoginStoresCredentialsThatPullsUse(t *testing.T) {
	testenv.RequireRoot(t)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("ci:s3cret"))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != want {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/private/app:1"
	push(t, ref, imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "bin/server", Body: "x", Mode: 0o755})),
		remote.WithAuth(&authn.Basic{Username: "ci", Password: "s3cret"}))

	cfgDir := t.TempDir()
	env := []string{"MGR_DATA_ROOT=" + t.TempDir(), "DOCKER_CONFIG=" + cfgDir}
	if out, err := run(t, env, "--quiet", "--no-tar", ref); err == nil || !strings.Contains(out, "401") && !strings.Contains(strings.ToLower(out), "unauthorized") {
		t.Fatalf("anonymous pull of a private image: err %v\n%s", err, out)
	}
	if out, err := run(t, env, "login", "-u", "ci", "-p", "wrong", host); err == nil {
		t.Fatalf("login with a wrong password succeeded:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(cfgDir, "config.json")); err == nil {
		t.Fatal("a refused login wrote the Docker config")
	}
	if out, err := run(t, env, "login", "-u", "ci", "-p", "s3cret", host); err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	fi, err := os.Stat(filepath.Join(cfgDir, "config.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("docker config: %v, mode %v", err, fi)
	}
	if out, err := run(t, env, "--quiet", "--no-tar", ref); err != nil {
		t.Fatalf("pull after login: %v\n%s", err, out)
	}
}

// TestUnprivilegedConversionKeepsOwnersAndDevices runs the converter as
// nobody: the disk is made through tar2ext4 and must still carry the image's
// owners, setuid bits, device nodes and label.
func TestUnprivilegedConversionKeepsOwnersAndDevices(t *testing.T) {
	testenv.RequireRoot(t)
	const nobody = 65534
	work, err := os.MkdirTemp("", "mergen-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	os.Chmod(work, 0o755)
	img := imagetest.Image(t,
		imagetest.Layer(t,
			imagetest.Entry{Name: "bin/", Type: tar.TypeDir},
			imagetest.Entry{Name: "bin/su", Body: "su", Mode: 0o4755},
			imagetest.Entry{Name: "dev/", Type: tar.TypeDir},
			imagetest.Entry{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666},
			imagetest.Entry{Name: "srv/", Type: tar.TypeDir, UID: 33, GID: 33},
			imagetest.Entry{Name: "srv/gone", Body: "x", UID: 33, GID: 33},
			imagetest.Entry{Name: "ro/", Type: tar.TypeDir, Mode: 0o555},
			imagetest.Entry{Name: "ro/secret", Body: "s", Mode: 0o004},
		),
		imagetest.Layer(t,
			imagetest.Entry{Name: "srv/.wh.gone"},
			imagetest.Entry{Name: "srv/page", Body: "p", UID: 33, GID: 33, Mode: 0o640},
		),
	)
	tag, _ := name.NewTag("example.com/unpriv:1")
	archive := filepath.Join(work, "img.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(work, "mergen-converter")
	b, err := os.ReadFile(testenv.Build(t, "./cmd/mergen-converter"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, b, 0o755)
	data := filepath.Join(work, "data")
	os.Mkdir(data, 0o755)
	os.Chown(data, nobody, nobody)
	os.Chmod(archive, 0o644)

	cmd := exec.Command(bin, "--quiet", "--platform", "linux/amd64", "docker-archive:"+archive)
	cmd.Env = append(os.Environ(), "MGR_DATA_ROOT="+data, "HOME="+data, "PATH=/usr/sbin:/sbin:/usr/bin:/bin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("convert as nobody: %v\n%s", err, out)
	}
	dir, _ := converter.OutputDir(filepath.Join(data, "images"), "docker-archive:"+archive)
	disk := filepath.Join(dir, imagemeta.PayloadExt4)
	if out, err := exec.Command("e2fsck", "-fn", disk).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	if got := imagetest.Debugfs(t, disk, "stats"); !regexp.MustCompile(`Filesystem volume name:\s+mergen-payload\n`).MatchString(got) {
		t.Errorf("label:\n%s", got)
	}
	for _, c := range []struct{ path, re string }{
		{"/bin/su", `Mode:\s+04755`},
		{"/bin/su", `User:\s+0\s+Group:\s+0`},
		{"/dev/null", `Type: character special`},
		{"/srv/page", `User:\s+33\s+Group:\s+33`},
		{"/srv/page", `Mode:\s+0640`},
		{"/srv/gone", `File not found`},
		{"/ro", `Mode:\s+0555`},
		{"/ro/secret", `Mode:\s+0004`},
		{"/.mergen/" + imagemeta.RuntimeFile, `Type: regular`},
	} {
		if got := imagetest.Debugfs(t, disk, "stat "+c.path); !regexp.MustCompile(c.re).MatchString(got) {
			t.Errorf("%s: want %s in:\n%s", c.path, c.re, got)
		}
	}
}

func TestDoctorReportsToolsAndMissingAssets(t *testing.T) {
	data := t.TempDir()
	out, err := run(t, []string{"MGR_DATA_ROOT=" + data}, "doctor", "--json", "--assets", t.TempDir())
	if err == nil {
		t.Fatalf("doctor passed with an empty assets dir:\n%s", out)
	}
	// The JSON array comes first, the error line after it.
	var checks []struct{ Name, Status string }
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, c := range checks {
		got[c.Name] = c.Status
	}
	if got["mkfs.ext4"] != "PASS" || got["images dir"] == "FAIL" || got["images dir"] == "" {
		t.Errorf("tool and data root checks: %v", got)
	}
	if !strings.Contains(out, "vmlinux") || !strings.Contains(out, `"FAIL"`) {
		t.Errorf("missing base assets not reported:\n%s", out)
	}
}
