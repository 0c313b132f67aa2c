package artifact

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/profile"
	"github.com/mergenhq/mergen/internal/progress"
)

// baseDir writes a set of base assets; the golden disk is larger than one
// part so it goes up in several parts and comes down in several ranges.
func baseDir(t *testing.T, seed string) string {
	t.Helper()
	dir := t.TempDir()
	big := make([]byte, 12<<20)
	rand.Read(big)
	files := map[string][]byte{
		"vmlinux":            []byte("kernel-" + seed),
		"golden-rootfs.ext4": append([]byte(seed), big...),
		"agent-rootfs.ext4":  []byte("agent-" + seed),
		"initrd.img":         []byte("initrd-" + seed),
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// installedV1 pushes base assets as linux-amd64/buildroot/v1 to a new
// server and pulls them into dst: the good local files a failed pull must
// leave alone.
func installedV1(t *testing.T) (srv *s3Server, c *Client, old, dst string) {
	t.Helper()
	srv = startS3(t)
	c = srv.client(t, srv.Profile())
	old = baseDir(t, "old")
	if _, err := c.PushBase(ctxT(t), old, Base{"linux-amd64", "buildroot", "v1"}); err != nil {
		t.Fatal(err)
	}
	dst = t.TempDir()
	if _, err := c.PullBase(ctxT(t), dst, Base{"linux-amd64", "buildroot", "v1"}); err != nil {
		t.Fatal(err)
	}
	return srv, c, old, dst
}

func sameFiles(t *testing.T, a, b string, names ...string) {
	t.Helper()
	for _, n := range names {
		x, err := os.ReadFile(filepath.Join(a, n))
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.ReadFile(filepath.Join(b, n))
		if err != nil {
			t.Fatalf("%s not installed: %v", n, err)
		}
		if !bytes.Equal(x, y) {
			t.Fatalf("%s differs after the round trip", n)
		}
	}
}

var baseNames = []string{"vmlinux", "golden-rootfs.ext4", "agent-rootfs.ext4", "initrd.img"}

func TestPushPullBaseRoundTripWithRemoteLayout(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	src := baseDir(t, "one")
	b := Base{Platform: "linux-amd64", Flavor: "buildroot", Version: "v0.0.1"}
	tr := progress.New()
	c.opt.Progress = tr
	if _, err := c.PushBase(ctxT(t), src, b); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"manifest.json", "vmlinux.bin", "buildroot-disk.ext4", "agent-disk.ext4", "initrd.img"} {
		if _, err := os.Stat(srv.object("team/mergen/linux-amd64/buildroot/v0.0.1/" + key)); err != nil {
			t.Errorf("remote layout: %v", err)
		}
	}
	for _, s := range tr.Snapshot() {
		if s.Done != s.Total || s.State != "done" {
			t.Errorf("progress of %s: %+v", s.Name, s)
		}
	}

	dst := filepath.Join(t.TempDir(), "base", "current")
	res, err := c.PullBase(ctxT(t), dst, Base{Platform: "linux-amd64", Flavor: "buildroot", Version: "latest"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Version != "v0.0.1" {
		t.Fatalf("latest resolved to %q", res.Manifest.Version)
	}
	sameFiles(t, src, dst, baseNames...)
	if m, err := ReadLocalManifest(dst); err != nil || m.Version != "v0.0.1" {
		t.Fatalf("local manifest: %+v %v", m, err)
	}

	// A second pull finds everything in place and downloads nothing.
	res, err = c.PullBase(ctxT(t), dst, Base{Platform: "linux-amd64", Flavor: "buildroot", Version: "v0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Fetched) != 0 {
		t.Fatalf("re-pull fetched %v, want nothing", res.Fetched)
	}

	// A version is immutable.
	if _, err := c.PushBase(ctxT(t), src, b); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second push of v0.0.1: %v", err)
	}
}

// Failed pushes, early or half-way, leave latest where it was and list no
// version.
func TestLatestMovesOnlyAfterCompleteUpload(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	plat, fl := "linux-amd64", "buildroot"
	if _, err := c.PushBase(ctxT(t), baseDir(t, "one"), Base{plat, fl, "v1"}); err != nil {
		t.Fatal(err)
	}
	// A push missing a required file fails before any upload.
	broken := baseDir(t, "two")
	os.Remove(filepath.Join(broken, "agent-rootfs.ext4"))
	if _, err := c.PushBase(ctxT(t), broken, Base{plat, fl, "v2"}); err == nil || !strings.Contains(err.Error(), "agent-rootfs.ext4") {
		t.Fatalf("push without the agent disk: %v", err)
	}
	// A push whose connection dies in the middle of the big disk.
	p := srv.Profile()
	p.Endpoint = "http://" + cutProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"), 3<<20)
	if _, err := srv.client(t, p).PushBase(ctxT(t), baseDir(t, "two"), Base{plat, fl, "v2"}); err == nil {
		t.Fatal("push through a dying connection succeeded")
	}
	got, err := c.ResolveBase(ctxT(t), Base{plat, fl, "latest"})
	if err != nil || got.Version != "v1" {
		t.Fatalf("latest after failed pushes = %q, %v; want v1", got.Version, err)
	}
	if _, err := c.PullBase(ctxT(t), t.TempDir(), Base{plat, fl, "v2"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pull of the half-pushed v2: %v, want not found (no manifest)", err)
	}
	if _, err := c.PushBase(ctxT(t), baseDir(t, "three"), Base{plat, fl, "v3"}); err != nil {
		t.Fatal(err)
	}
	got, err = c.ResolveBase(ctxT(t), Base{plat, fl, "latest"})
	if err != nil || got.Version != "v3" {
		t.Fatalf("latest after push of v3 = %q, %v", got.Version, err)
	}
	vs, err := c.Versions(ctxT(t), plat, fl)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(vs)
	if strings.Join(vs, ",") != "v1,v3" {
		t.Fatalf("versions = %v, want v1,v3", vs)
	}
}

// A pull whose connection dies in the middle of a large download
// replaces nothing.
func TestInterruptedPullLeavesOldAssets(t *testing.T) {
	srv, c, old, dst := installedV1(t)
	plat, fl := "linux-amd64", "buildroot"
	if _, err := c.PushBase(ctxT(t), baseDir(t, "new"), Base{plat, fl, "v2"}); err != nil {
		t.Fatal(err)
	}
	// Staging left behind by a pull that was killed is swept.
	if err := os.Mkdir(filepath.Join(dst, ".pull-killed"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The connection dies after 3 MiB of the 12 MiB disk, for good.
	p := srv.Profile()
	p.Endpoint = "http://" + cutProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"), 3<<20)
	cut := srv.client(t, p)
	cut.opt.Concurrency = 1
	cut.opt.PartSize = 1 << 20
	_, err := cut.PullBase(ctxT(t), dst, Base{plat, fl, "v2"})
	if err == nil || !strings.Contains(err.Error(), "download buildroot-disk.ext4") {
		t.Fatalf("interrupted pull: %v", err)
	}
	sameFiles(t, old, dst, baseNames...)
	assertNoStaging(t, dst)
}

// A range whose answer is cut is asked for again from where it stopped,
// not from its start: through connections that each carry 1.5 MiB, every
// 4 MiB range arrives in pieces, and the pull installs the exact files.
func TestPullResumesCutRanges(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	src := baseDir(t, "new")
	if _, err := c.PushBase(ctxT(t), src, Base{"linux-amd64", "buildroot", "v1"}); err != nil {
		t.Fatal(err)
	}
	p := srv.Profile()
	addr, cuts := shortProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"), 1536<<10)
	p.Endpoint = "http://" + addr
	short := srv.client(t, p)
	short.opt.PartSize = 4 << 20
	short.opt.Concurrency = 2
	short.opt.Attempts = 4
	dst := t.TempDir()
	if _, err := short.PullBase(ctxT(t), dst, Base{"linux-amd64", "buildroot", "v1"}); err != nil {
		t.Fatalf("pull through connections of 1.5 MiB: %v", err)
	}
	sameFiles(t, src, dst, baseNames...)
	if cuts.Load() < 6 { // each of the three 4 MiB ranges at least twice
		t.Fatalf("%d answers cut; the proxy did not cut the ranges", cuts.Load())
	}
}

func assertNoStaging(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".pull-") {
			t.Fatalf("staging dir %s left behind", e.Name())
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	src := t.TempDir()
	for n, body := range map[string]string{"payload-rootfs.ext4": "disk", "image-meta.json": `{"ref":"x"}`, "suggested-bootargs.txt": "console=ttyS0"} {
		os.WriteFile(filepath.Join(src, n), []byte(body), 0o644)
	}
	ref := "ghcr.io/org/app:1.2.3"
	if _, err := c.PushPayload(ctxT(t), src, ref); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if _, err := c.PullPayload(ctxT(t), root, ref); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, src, filepath.Join(root, "ghcr.io", "org", "app:1.2.3"), "payload-rootfs.ext4", "image-meta.json", "suggested-bootargs.txt")
	if _, err := c.PullPayload(ctxT(t), root, "ghcr.io/org/other:1"); err == nil || !errors.Is(err, ErrNotFound) {
		t.Fatalf("pull of an image never pushed: %v", err)
	}
}

// Bad input and broken endpoints end in errors that say what is wrong.
func TestClearErrors(t *testing.T) {
	srv := startS3(t)
	good := srv.Profile()
	src := baseDir(t, "x")
	b := Base{"linux-amd64", "buildroot", "v1"}
	cases := []struct {
		name string
		p    func(p profile.Profile) profile.Profile
		base Base
		want string
	}{
		{name: "wrong secret", p: func(p profile.Profile) profile.Profile { p.SecretAccessKey = "nope"; return p }, base: b, want: "credentials rejected"},
		{name: "unknown key", p: func(p profile.Profile) profile.Profile { p.AccessKeyID = "nobody"; return p }, base: b, want: "credentials rejected"},
		{name: "missing bucket", p: func(p profile.Profile) profile.Profile { p.Bucket = "no-such-bucket"; return p }, base: b, want: `bucket "no-such-bucket" does not exist`},
		{name: "closed port", p: func(p profile.Profile) profile.Profile { p.Endpoint = "http://" + freePort(t); return p }, base: b, want: "unreachable after 2 attempts"},
		{name: "bad version", p: func(p profile.Profile) profile.Profile { return p }, base: Base{"linux-amd64", "buildroot", "../v1"}, want: `version "../v1"`},
		{name: "latest push", p: func(p profile.Profile) profile.Profile { return p }, base: Base{"linux-amd64", "buildroot", "latest"}, want: "reserved for the alias"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := srv.client(t, tc.p(good))
			_, err := c.PushBase(ctxT(t), src, tc.base)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("push: %v, want containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Fatalf("error reveals the secret: %v", err)
			}
		})
	}
	c := srv.client(t, good)
	if _, err := c.PullBase(ctxT(t), t.TempDir(), Base{"linux-amd64", "none", "latest"}); err == nil || !strings.Contains(err.Error(), "no version of linux-amd64/none has been pushed") {
		t.Fatalf("pull latest of an empty flavor: %v", err)
	}
}

// A manifest on the server naming a path outside the target is refused
// before anything is written.
func TestManifestWithEscapingPathIsRefused(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	m := Manifest{Kind: "base", Version: "v9", Files: []File{{Name: "vmlinux.bin", Local: "../../etc/evil", Size: 1, SHA256: strings.Repeat("ab", 32)}}}
	if err := c.putSmall(ctxT(t), c.key("linux-amd64", "buildroot", "v9", ManifestName), m); err != nil {
		t.Fatal(err)
	}
	parent := t.TempDir()
	dst := filepath.Join(parent, "current")
	_, err := c.PullBase(ctxT(t), dst, Base{"linux-amd64", "buildroot", "v9"})
	if err == nil || !strings.Contains(err.Error(), `files[0].local "../../etc/evil"`) {
		t.Fatalf("pull of escaping manifest: %v", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("target dir created for a refused manifest: %v", err)
	}
}

func TestManifestValidate(t *testing.T) {
	sum := strings.Repeat("0f", 32)
	cases := map[string]struct {
		files []File
		want  string
	}{
		"ok":            {files: []File{{Name: "a", Local: "b", SHA256: sum}}},
		"empty":         {want: "files: empty"},
		"dotdot":        {files: []File{{Name: "..", Local: "b", SHA256: sum}}, want: "files[0].name"},
		"slash":         {files: []File{{Name: "a", Local: "x/b", SHA256: sum}}, want: "files[0].local"},
		"hidden":        {files: []File{{Name: "a", Local: ".pull-x", SHA256: sum}}, want: "must not start with '.'"},
		"twice":         {files: []File{{Name: "a", Local: "b", SHA256: sum}, {Name: "c", Local: "b", SHA256: sum}}, want: "listed twice"},
		"bad digest":    {files: []File{{Name: "a", Local: "b", SHA256: "123"}}, want: "files[0].sha256"},
		"negative size": {files: []File{{Name: "a", Local: "b", Size: -1, SHA256: sum}}, want: "files[0].size"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := Manifest{Files: tc.files}.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

// Progress during an upload counts each byte once although signing reads
// every part twice.
func TestUploadProgressNeverExceedsTheFile(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	tr := progress.New()
	c.opt.Progress = tr
	var over []progress.Stat
	stop := watch(tr, func(s progress.Stat) bool {
		if s.Done > s.Total {
			over = append(over, s)
			return true
		}
		return false
	}, func() {})
	_, err := c.PushBase(ctxT(t), baseDir(t, "p"), Base{"linux-amd64", "buildroot", "v1"})
	stop()
	if err != nil {
		t.Fatal(err)
	}
	if len(over) > 0 {
		t.Fatalf("progress went past the file size: %+v", over)
	}
}

// Key segments and image references are bounded in length as well as in
// shape: one over the bound is refused, naming the value's field.
func TestKeySegmentsAndImageRefsHaveALengthBound(t *testing.T) {
	if err := checkSegment("version", strings.Repeat("v", 128)); err != nil {
		t.Errorf("a 128-byte version refused: %v", err)
	}
	if err := checkSegment("version", strings.Repeat("v", 129)); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("a 129-byte version: err = %v, want a refusal naming the version", err)
	}
	if err := checkRef("registry.example/" + strings.Repeat("a", 255-len("registry.example/"))); err != nil {
		t.Errorf("a 255-byte image reference refused: %v", err)
	}
	if err := checkRef(strings.Repeat("a", 256)); err == nil || !strings.Contains(err.Error(), "at most 255") {
		t.Errorf("a 256-byte image reference: err = %v, want a refusal naming the bound", err)
	}
}
