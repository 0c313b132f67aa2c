package converter

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mergenhq/mergen/internal/converter/imagetest"
	"github.com/mergenhq/mergen/internal/converter/layer"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/testenv"
)

// testImage is an image with several layers exercising what layer
// application must get right: whiteouts, an opaque dir, hard links, setuid,
// xattrs, a device node.
func testImage(t testing.TB, arch string) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image,
		imagetest.Layer(t,
			imagetest.Entry{Name: "bin/", Type: tar.TypeDir},
			imagetest.Entry{Name: "bin/app", Body: "#!/bin/sh\necho hi\n", Mode: 0o755},
			imagetest.Entry{Name: "bin/su", Body: "su", Mode: 0o4755},
			imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
			imagetest.Entry{Name: "etc/gone", Body: "removed later"},
			imagetest.Entry{Name: "var/cache/", Type: tar.TypeDir},
			imagetest.Entry{Name: "var/cache/old", Body: "hidden by opaque"},
			imagetest.Entry{Name: "dev/", Type: tar.TypeDir},
			imagetest.Entry{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666},
		),
		imagetest.Layer(t,
			imagetest.Entry{Name: "etc/.wh.gone"},
			imagetest.Entry{Name: "var/cache/", Type: tar.TypeDir},
			imagetest.Entry{Name: "var/cache/.wh..wh..opq"},
			imagetest.Entry{Name: "var/cache/new", Body: "n"},
			imagetest.Entry{Name: "bin/su-link", Type: tar.TypeLink, Link: "bin/su"},
			imagetest.Entry{Name: "home/web/", Type: tar.TypeDir, UID: 1000, GID: 1000, Mode: 0o750},
		),
		imagetest.Layer(t,
			imagetest.Entry{Name: "srv/data", Body: "d", UID: 33, GID: 33, Mode: 0o640, Xattrs: map[string]string{"user.role": "web"}},
		),
	)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Entrypoint = []string{"/bin/app"}
	cf.Config.Cmd = []string{"serve", "--port=8080"}
	cf.Config.Env = []string{"PATH=/bin", "MODE=prod"}
	cf.Config.WorkingDir = "/srv"
	cf.Config.ExposedPorts = map[string]struct{}{"8443/tcp": {}, "8080/tcp": {}, "53/udp": {}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// registryServer is the in-process registry on loopback, counting blob GETs
// and optionally corrupting one blob.
type registryServer struct {
	*httptest.Server
	blobGets atomic.Int64
	corrupt  atomic.Value // digest string whose bytes get flipped
}

func newRegistry(t testing.TB) *registryServer {
	rs := &registryServer{}
	rs.corrupt.Store("")
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	rs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			rs.blobGets.Add(1)
			if d := rs.corrupt.Load().(string); d != "" && strings.HasSuffix(r.URL.Path, d) {
				rec := httptest.NewRecorder()
				reg.ServeHTTP(rec, r)
				b := rec.Body.Bytes()
				if len(b) > 10 {
					b[len(b)/2] ^= 0xff
				}
				w.WriteHeader(rec.Code)
				w.Write(b)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(rs.Close)
	return rs
}

func (rs *registryServer) push(t testing.TB, repo string, img v1.Image) string {
	t.Helper()
	ref := strings.TrimPrefix(rs.URL, "http://") + "/" + repo
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestConvertFromRegistryMakesTheExpectedDisk(t *testing.T) {
	testenv.RequireRoot(t)
	rs := newRegistry(t)
	ref := rs.push(t, "team/app:1", testImage(t, "amd64"))
	data := t.TempDir()
	ctx := context.Background()
	opts := Options{Source: ref, Platform: "linux/amd64", ImagesRoot: data, BaseAssetsDir: "/srv/base", Keychain: authn.NewMultiKeychain()}

	res, err := Convert(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Pulled != 3 {
		t.Errorf("first conversion pulled %d layers, want 3", res.Pulled)
	}
	// The reference keeps its shape under the images root.
	wantDir := filepath.Join(data, ref)
	if res.OutputDir != wantDir {
		t.Errorf("output dir %s, want %s", res.OutputDir, wantDir)
	}
	for _, f := range []string{imagemeta.PayloadExt4, imagemeta.PayloadTar, imagemeta.ImageMetaFile,
		imagemeta.RuntimeFile, imagemeta.SuggestedBootArgs, imagemeta.SuggestedVMRequest} {
		if _, err := os.Stat(filepath.Join(res.OutputDir, f)); err != nil {
			t.Errorf("output %s: %v", f, err)
		}
	}
	// The unpacked tree (setuid files, device nodes) is gone by default.
	if _, err := os.Stat(filepath.Join(res.OutputDir, imagemeta.PayloadDir)); !os.IsNotExist(err) {
		t.Errorf("%s kept without KeepDir (%v)", imagemeta.PayloadDir, err)
	}
	if m, ok := imagemeta.Complete(res.OutputDir); !ok || m.Digest != res.Meta.Digest {
		t.Errorf("finished conversion: Complete = %+v, %v", m, ok)
	}
	// The suggested request points at the configured base assets and at
	// the disk where it was published.
	var req map[string]any
	b, _ := os.ReadFile(filepath.Join(res.OutputDir, imagemeta.SuggestedVMRequest))
	if err := json.Unmarshal(b, &req); err != nil || req["kernel"] != "/srv/base/vmlinux" || req["agentDisk"] != "/srv/base/agent-rootfs.ext4" || req["payloadDisk"] != res.Ext4 {
		t.Errorf("suggested request %v (%v)", req, err)
	}

	var rt imagemeta.Runtime
	b, _ = os.ReadFile(filepath.Join(res.OutputDir, imagemeta.RuntimeFile))
	if err := json.Unmarshal(b, &rt); err != nil {
		t.Fatal(err)
	}
	if strings.Join(rt.Argv, " ") != "/bin/app serve --port=8080" || rt.HTTPPort != 8080 || rt.WorkingDir != "/srv" || rt.Version != 1 {
		t.Errorf("runtime = %+v", rt)
	}

	img := res.Ext4
	if out, err := exec.Command(testenv.Tool(t, "e2fsck"), "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	if out := imagetest.Debugfs(t, img, "stats"); !regexp.MustCompile(`Filesystem volume name:\s+mergen-payload\n`).MatchString(out) {
		t.Errorf("label not set:\n%s", out)
	}
	// The tree, owners and modes as debugfs reads them from the image.
	for _, c := range []struct{ path, re string }{
		{"/bin/app", `Mode:\s+0755`},
		{"/bin/su", `Mode:\s+04755`},
		{"/bin/su", `Links: 2`},
		{"/home/web", `User:\s+1000\s+Group:\s+1000`},
		{"/home/web", `Mode:\s+0750`},
		{"/srv/data", `User:\s+33\s+Group:\s+33`},
		{"/srv/data", `Mode:\s+0640`},
		{"/dev/null", `Type: character special`},
		{"/.mergen/" + imagemeta.RuntimeFile, `Type: regular`},
		{"/.mergen/" + imagemeta.ImageMetaFile, `Type: regular`},
	} {
		if out := imagetest.Debugfs(t, img, "stat "+c.path); !regexp.MustCompile(c.re).MatchString(out) {
			t.Errorf("%s: want %s in:\n%s", c.path, c.re, out)
		}
	}
	for _, gone := range []string{"/etc/gone", "/var/cache/old"} {
		if out := imagetest.Debugfs(t, img, "stat "+gone); !strings.Contains(out, "File not found") {
			t.Errorf("%s should be whited out:\n%s", gone, out)
		}
	}
	if out := imagetest.Debugfs(t, img, "ea_get /srv/data user.role"); !strings.Contains(out, "web") {
		t.Errorf("xattr user.role missing:\n%s", out)
	}

	// A second conversion takes every layer from the cache: only the
	// manifest and config travel.
	before := rs.blobGets.Load()
	res2, err := Convert(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Pulled != 0 || rs.blobGets.Load()-before > 1 {
		t.Errorf("cached conversion pulled %d layers, %d blob GETs", res2.Pulled, rs.blobGets.Load()-before)
	}
	// And --skip-pull needs no registry at all.
	rs.Close()
	opts.SkipPull = true
	if _, err := Convert(ctx, opts); err != nil {
		t.Fatalf("skip-pull from a complete cache: %v", err)
	}
}

func TestConvertBadInputLeavesNoFinishedLookingOutput(t *testing.T) {
	testenv.RequireRoot(t)
	rs := newRegistry(t)
	ref := rs.push(t, "team/app:1", testImage(t, "amd64"))
	layers, _ := testImage(t, "amd64").Layers()
	badDigest, _ := layers[1].Digest()
	big, err := mutate.AppendLayers(empty.Image, imagetest.Layer(t, imagetest.Entry{Name: "big", Body: strings.Repeat("x", 3<<20)}))
	if err != nil {
		t.Fatal(err)
	}
	bigRef := rs.push(t, "team/big:1", big)

	cases := []struct {
		name    string
		opts    func(data string) Options
		corrupt string
		errHas  string
	}{
		{"unknown image", func(string) Options { return Options{Source: strings.Replace(ref, "team/app", "team/nothere", 1)} }, "", "pull"},
		{"registry down", func(string) Options { return Options{Source: "127.0.0.1:1/x/y:1"} }, "", "pull"},
		{"wrong platform", func(string) Options { return Options{Source: ref, Platform: "linux/arm64"} }, "", "platform"},
		{"bad platform", func(string) Options { return Options{Source: ref, Platform: "amd64"} }, "", "want os/arch"},
		{"corrupt layer", func(string) Options { return Options{Source: ref} }, badDigest.Hex, "sha256"},
		{"skip-pull with an empty cache", func(string) Options { return Options{Source: ref, SkipPull: true} }, "", "--skip-pull"},
		{"output dir not writable", func(data string) Options {
			f := filepath.Join(data, "file")
			os.WriteFile(f, nil, 0o644)
			return Options{Source: ref, OutputDir: filepath.Join(f, "sub")}
		}, "", "output dir"},
		{"disk too small for the content", func(string) Options { return Options{Source: bigRef, SizeMiB: 2} }, "", "ext4"},
		// A crafted oversized layer: 3 MiB against a 1 MiB bound, and a
		// layer of 9 entries against a bound of 4.
		{"layer past the size limit", func(string) Options { return Options{Source: bigRef, MaxLayerBytes: 1 << 20} }, "",
			"more than 1048576 bytes uncompressed"},
		{"layer past the entry limit", func(string) Options { return Options{Source: ref, MaxLayerEntries: 4} }, "",
			"more than 4 entries"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			rs.corrupt.Store(tc.corrupt)
			defer rs.corrupt.Store("")
			o := tc.opts(data)
			o.ImagesRoot = data
			if o.Platform == "" {
				o.Platform = "linux/amd64"
			}
			o.Keychain = authn.NewMultiKeychain()
			_, err := Convert(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %v, want one containing %q", err, tc.errHas)
			}
			if !strings.Contains(err.Error(), o.Source) {
				t.Errorf("error does not name the image: %v", err)
			}
			if o.MaxLayerBytes > 0 || o.MaxLayerEntries > 0 {
				if !errors.Is(err, layer.ErrLimit) || !regexp.MustCompile(`apply layer sha256:[0-9a-f]{64}: `).MatchString(err.Error()) {
					t.Errorf("a limit error must wrap layer.ErrLimit and name the layer: %v", err)
				}
			}
			filepath.Walk(data, func(p string, fi os.FileInfo, err error) error {
				if err == nil && (fi.Name() == imagemeta.ImageMetaFile && !strings.Contains(p, "/.") || fi.Name() == imagemeta.PayloadExt4 || strings.HasPrefix(fi.Name(), ".staging-")) {
					t.Errorf("left behind: %s", p)
				}
				return nil
			})
		})
	}
}

func TestOutputDirStaysUnderTheImagesRoot(t *testing.T) {
	root := "/data/images"
	cases := map[string]string{
		"nginx:alpine":                            "nginx:alpine",
		"ghcr.io/org/app:1.2.3":                   "ghcr.io/org/app:1.2.3",
		"localhost:5000/x/y:tag":                  "localhost:5000/x/y:tag",
		"repo@sha256:" + strings.Repeat("ab", 32): "repo@sha256:" + strings.Repeat("ab", 32),
		"oci:/tmp/layout":                         "oci__tmp_layout",
		"oci:../../etc":                           "oci_.._.._etc",
		"docker-archive:/tmp/img.tar":             "docker-archive__tmp_img.tar",
	}
	for ref, want := range cases {
		got, err := OutputDir(root, ref)
		if err != nil {
			t.Errorf("%q: %v", ref, err)
			continue
		}
		if got != filepath.Join(root, want) {
			t.Errorf("%q -> %s, want /data/images/%s", ref, got, want)
		}
	}
	for _, bad := range []string{"", "..", "../../etc", "/abs/path", "a/./b", "a//b", "x/../../y:tag",
		".hidden", "a/.hidden", "x\x00y", "org/" + CacheDir, "org/" + imagemeta.PayloadDir, strings.Repeat("a", 256)} {
		if got, err := OutputDir(root, bad); err == nil {
			t.Errorf("%q -> %s, want an error", bad, got)
		}
	}
	if got, err := OutputDir("", "nginx:alpine"); err == nil || !strings.Contains(err.Error(), "MGR_IMAGES_ROOT") {
		t.Errorf("no images root -> %s, %v; want an error naming MGR_IMAGES_ROOT", got, err)
	}
}

func TestConvertFromOCILayoutAndDockerArchive(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	img := testImage(t, "amd64")
	lp, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	// An index with two platforms: the converter must pick the one asked.
	if err := lp.AppendImage(testImage(t, "arm64"), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm64"})); err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("example.com/app:1")
	archive := filepath.Join(dir, "saved.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	for _, src := range []string{"oci:" + filepath.Join(dir, "oci"), "docker-archive:" + archive} {
		t.Run(strings.SplitN(src, ":", 2)[0], func(t *testing.T) {
			res, err := Convert(context.Background(), Options{Source: src, Platform: "linux/amd64", ImagesRoot: t.TempDir(), NoTar: true})
			if err != nil {
				t.Fatal(err)
			}
			if res.Meta.Digest != want.String() {
				t.Errorf("digest %s, want the amd64 image %s", res.Meta.Digest, want)
			}
			if out := imagetest.Debugfs(t, res.Ext4, "stat /bin/su"); !regexp.MustCompile(`Mode:\s+04755`).MatchString(out) {
				t.Errorf("/bin/su:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(res.OutputDir, imagemeta.PayloadTar)); !os.IsNotExist(err) {
				t.Errorf("NoTar still wrote %s", imagemeta.PayloadTar)
			}
		})
	}
	if _, err := Convert(context.Background(), Options{Source: "oci:" + filepath.Join(dir, "oci"), Platform: "linux/s390x", ImagesRoot: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "no image for platform linux/s390x") {
		t.Errorf("missing platform in a layout: %v", err)
	}
}

func TestConcurrentConversionsOfOneImageBothSucceed(t *testing.T) {
	testenv.RequireRoot(t)
	rs := newRegistry(t)
	ref := rs.push(t, "team/app:1", testImage(t, "amd64"))
	data := t.TempDir()
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := Convert(context.Background(), Options{Source: ref, Platform: "linux/amd64", ImagesRoot: data, NoTar: true, Keychain: authn.NewMultiKeychain()})
			errs <- err
		}()
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	dir, _ := OutputDir(data, ref)
	if out, err := exec.Command(testenv.Tool(t, "e2fsck"), "-fn", filepath.Join(dir, imagemeta.PayloadExt4)).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	if got := rs.blobGets.Load(); got > 3+2 {
		t.Errorf("%d blob GETs for 3 layers and 2 configs: the second conversion did not use the cache", got)
	}
}

func TestConvertOnAFullDiskFailsCleanly(t *testing.T) {
	testenv.RequireRoot(t)
	rs := newRegistry(t)
	big, err := mutate.AppendLayers(empty.Image, imagetest.Layer(t, imagetest.Entry{Name: "big", Body: strings.Repeat("0123456789abcdef", 1<<18)}))
	if err != nil {
		t.Fatal(err)
	}
	ref := rs.push(t, "team/big:1", big)
	// A 6 MiB file system: the cache fits, the unpacked tree and the disk
	// image do not.
	data := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", data).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", data).Run() })
	_, err = Convert(context.Background(), Options{Source: ref, Platform: "linux/amd64", ImagesRoot: data, Keychain: authn.NewMultiKeychain()})
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("err = %v, want no space left", err)
	}
	dir, _ := OutputDir(data, ref)
	if _, ok := imagemeta.Complete(dir); ok {
		t.Error("a conversion that ran out of space looks complete")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != CacheDir && e.Name() != ".lock" {
			t.Errorf("left behind after a full disk: %s", e.Name())
		}
	}
}

// The unpacked tree is never reachable by other users: it is built in a
// 0700 staging directory (observed by a mkfs.ext4 wrapper while the disk is
// made from it), removed by default, and kept with KeepDir under a 0700 top
// directory, where user nobody cannot reach the image's setuid binary. The
// disk keeps the setuid bit and the device node the guest needs.
func TestConvertKeepsTheTreePrivate(t *testing.T) {
	testenv.RequireRoot(t)
	real := testenv.Tool(t, "mkfs.ext4")
	bin := t.TempDir()
	seen := filepath.Join(t.TempDir(), "modes")
	wrapper := fmt.Sprintf(`#!/bin/sh
prev=
for a in "$@"; do
	if [ "$prev" = "-d" ]; then stat -c '%%a %%n' "$(dirname "$a")" >> %s; fi
	prev=$a
done
exec %s "$@"
`, seen, real)
	if err := os.WriteFile(filepath.Join(bin, "mkfs.ext4"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))

	dir := t.TempDir()
	lp, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(testImage(t, "amd64"), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		t.Fatal(err)
	}
	src := "oci:" + filepath.Join(dir, "oci")
	data := t.TempDir()
	os.Chmod(data, 0o755)
	// An earlier version's world-readable tree is removed by a default run.
	out, _ := OutputDir(data, src)
	os.MkdirAll(filepath.Join(out, imagemeta.PayloadDir, "bin"), 0o755)

	res, err := Convert(context.Background(), Options{Source: src, Platform: "linux/amd64", ImagesRoot: data, NoTar: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(seen)
	if !regexp.MustCompile(`^700 .*/\.staging-[^/\n]+\n$`).Match(b) {
		t.Errorf("staging directory while the disk was made: %q, want mode 700", b)
	}
	if _, err := os.Stat(filepath.Join(res.OutputDir, imagemeta.PayloadDir)); !os.IsNotExist(err) {
		t.Errorf("%s survives a default conversion (%v)", imagemeta.PayloadDir, err)
	}
	for _, c := range []struct{ path, re string }{{"/bin/su", `Mode:\s+04755`}, {"/dev/null", `Type: character special`}} {
		if got := imagetest.Debugfs(t, res.Ext4, "stat "+c.path); !regexp.MustCompile(c.re).MatchString(got) {
			t.Errorf("disk %s: want %s in:\n%s", c.path, c.re, got)
		}
	}

	res, err = Convert(context.Background(), Options{Source: src, Platform: "linux/amd64", ImagesRoot: data, NoTar: true, KeepDir: true, SkipPull: true})
	if err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(res.OutputDir, imagemeta.PayloadDir)
	st, err := os.Stat(tree)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("kept %s: %v %v, want mode 0700", imagemeta.PayloadDir, st.Mode(), err)
	}
	if st, err := os.Stat(filepath.Join(tree, "bin", "su")); err != nil || st.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("kept tree lost the setuid bit of bin/su: %v %v", st.Mode(), err)
	}
	for _, p := range []string{filepath.Join(tree, "bin", "su"), filepath.Join(tree, "dev", "null")} {
		cmd := exec.Command("stat", p)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "Permission denied") {
			t.Errorf("user nobody reaches %s: %v %s", p, err, out)
		}
	}
	ents, _ := os.ReadDir(res.OutputDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".staging-") {
			t.Errorf("staging directory left: %s", e.Name())
		}
	}
}

// A staging directory left by a killed conversion is removed by the next
// one (it holds a private copy of the tree).
func TestConvertSweepsAKilledConversionsStaging(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	lp, _ := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	lp.AppendImage(testImage(t, "amd64"), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	src := "oci:" + filepath.Join(dir, "oci")
	data := t.TempDir()
	out, _ := OutputDir(data, src)
	left := filepath.Join(out, ".staging-123", imagemeta.PayloadDir, "bin")
	os.MkdirAll(left, 0o700)
	if _, err := Convert(context.Background(), Options{Source: src, Platform: "linux/amd64", ImagesRoot: data, NoTar: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, ".staging-123")); !os.IsNotExist(err) {
		t.Errorf("a killed conversion's staging directory survived (%v)", err)
	}
}
