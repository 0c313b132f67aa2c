package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/demo"
	"github.com/mergenhq/mergen/internal/testenv"
)

// TestRunDemoImageThroughTheForwarder is the main job as a user meets it:
// `mergen run` converts the bundled demo image, creates and starts a VM
// through the daemon, waits for it, and the page is then served over TLS by
// mergen-forwarder at https://demo.<domain>/.
// demoStack is a host running the daemon and mergen-forwarder, as
// `make run` sets them up, with helpers to run mergen and to fetch pages
// through the forwarder.
type demoStack struct {
	h         *host
	d         *daemonProc
	mergen    string
	domain    string
	httpsPort int
	image     string
	client    *http.Client
}

func newDemoStack(t testing.TB, cidr string) *demoStack {
	t.Helper()
	vh := newVMHost(t, "detached", cidr)
	s := &demoStack{h: vh.host, mergen: vh.mergen, domain: "mergen.test"}
	forwarder := testenv.Build(t, "./cmd/mergen-forwarder")
	s.d = s.h.startBinary(t, s.mergen, freePort(t))

	certDir := s.h.path("certs")
	s.run(t, "certs", "wildcard", "--domain", s.domain, "--out", certDir)
	s.httpsPort = freePort(t)
	fwd := exec.Command(forwarder)
	fwd.Env = append(os.Environ(),
		"FWD_CONFIG_ROOT="+s.h.env["MGR_CONFIG_ROOT"], "FWD_DOMAIN="+s.domain,
		"FWD_TLS_CERT_FILE="+filepath.Join(certDir, "wildcard."+s.domain+".crt"),
		"FWD_TLS_KEY_FILE="+filepath.Join(certDir, "wildcard."+s.domain+".key"),
		fmt.Sprintf("FWD_HTTPS_ADDR=127.0.0.1:%d", s.httpsPort), "FWD_METRICS_ADDR=off",
		"FWD_RESOLVER_CACHE_TTL_SECONDS=1", "FWD_LOG_LEVEL=info", "FWD_LOG_FORMAT=text")
	fwdLog, _ := os.Create(s.h.path("forwarder.log"))
	fwd.Stdout, fwd.Stderr = fwdLog, fwdLog
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwd.Process.Kill(); fwd.Wait() })

	s.image = s.h.path("demo-image")
	s.run(t, "demo", "image", "--out", s.image)

	pool := x509.NewCertPool()
	pem, err := os.ReadFile(filepath.Join(certDir, "wildcard."+s.domain+".crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	s.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", s.httpsPort))
		},
	}}
	return s
}

// run runs the mergen CLI against the stack's daemon.
func (s *demoStack) run(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(s.mergen, args...)
	cmd.Env = append(os.Environ(), "MERGEN_API="+s.d.base, "MERGEN_API_TOKEN="+s.h.token(t), "MGR_DATA_ROOT="+s.h.env["MGR_DATA_ROOT"],
		"MGR_API_TOKEN_FILE="+s.h.env["MGR_API_TOKEN_FILE"], "MGR_API_SOCKET="+s.h.env["MGR_API_SOCKET"])
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mergen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// get fetches https://<label>.<domain>/ through the forwarder.
func (s *demoStack) get(t testing.TB, label string) (int, string) {
	t.Helper()
	resp, err := s.client.Get(fmt.Sprintf("https://%s.%s:%d/", label, s.domain, s.httpsPort))
	if err != nil {
		t.Fatalf("GET via the forwarder (label %s): %v", label, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRunDemoImageThroughTheForwarder(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a QEMU guest")
	}
	s := newDemoStack(t, "172.31.252.0/24")
	h, domain, httpsPort, image := s.h, s.domain, s.httpsPort, s.image
	mustRun := func(args ...string) string { t.Helper(); return s.run(t, args...) }
	get := func(label string) (int, string) { t.Helper(); return s.get(t, label) }
	t.Cleanup(func() { dumpConsoles(t, h) })

	out := mustRun("run", "oci:"+image, "--name", "demo", "--detach", "--domain", domain, "--https-port", fmt.Sprint(httpsPort))
	t.Logf("mergen run:\n%s", out)
	wantURL := fmt.Sprintf("https://demo.%s:%d/", domain, httpsPort)
	if !strings.Contains(out, "URL:       "+wantURL) || !strings.Contains(out, fmt.Sprintf("--resolve demo.%s:%d:127.0.0.1", domain, httpsPort)) {
		t.Fatalf("run did not print the URL and curl line for %s", wantURL)
	}

	if code, body := get("demo"); code != 200 || body != demo.Page {
		t.Fatalf("https://demo.%s answered %d %q", domain, code, body)
	}

	// The second run of the same image reuses the conversion.
	out = mustRun("run", "oci:"+image, "--name", "demo2", "--detach", "--domain", domain)
	if !strings.Contains(out, "cached") {
		t.Fatalf("second run converted again:\n%s", out)
	}
	if code, body := get("demo2"); code != 200 || body != demo.Page {
		t.Fatalf("demo2 answered %d %q", code, body)
	}

	mustRun("vm", "rm", "-f", "demo", "demo2")
	// Once the forwarder's resolver cache (1s here) has expired, the label
	// of a removed VM is unknown.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get("demo")
		if code == 404 || code == 421 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a removed VM's label still answers %d %q", code, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
