package artifact

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
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

// A push sends the files' bodies unsigned and the manifest signed with its
// body's SHA-256: the files' digests are in that manifest, which every
// pull checks (TestPullRefusesAChangedPartOrLength), so the signature
// need not hash each part of them again.
func TestPushSignsTheManifestAndNotTheFilesBodies(t *testing.T) {
	srv := startS3(t)
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	type sent struct{ method, path, query, payloadHash string }
	var mu sync.Mutex
	var puts []sent
	proxy := httputil.NewSingleHostReverseProxy(target)
	front := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			mu.Lock()
			puts = append(puts, sent{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("X-Amz-Content-Sha256")})
			mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go front.Serve(l)
	t.Cleanup(func() { front.Close() })
	p := srv.Profile()
	p.Endpoint = "http://" + l.Addr().String()
	c := srv.client(t, p)
	if _, err := c.PushBase(ctxT(t), sparseBaseDir(t), Base{"linux-amd64", "buildroot", "v1"}); err != nil {
		t.Fatal(err)
	}
	hexHash := regexp.MustCompile(`^[0-9a-f]{64}$`)
	var bodies, signed int
	for _, s := range puts {
		fileBody := strings.Contains(s.query, "partNumber=") ||
			strings.Contains(s.path, "/linux-amd64/buildroot/v1/") && !strings.HasSuffix(s.path, "/"+ManifestName)
		switch {
		case fileBody:
			bodies++
			if s.payloadHash != "UNSIGNED-PAYLOAD" {
				t.Errorf("file body %s?%s sent with payload hash %q, want UNSIGNED-PAYLOAD", s.path, s.query, s.payloadHash)
			}
		default: // the manifest and the latest alias
			signed++
			if !hexHash.MatchString(s.payloadHash) {
				t.Errorf("%s sent with payload hash %q, want its body's SHA-256", s.path, s.payloadHash)
			}
		}
	}
	// The 16 MiB disk in 5 MiB parts, the kernel and the agent disk; the
	// manifest and the alias.
	if bodies < 6 || signed != 2 {
		t.Fatalf("saw %d file bodies and %d signed objects among the push's PUTs %+v", bodies, signed, puts)
	}
}
