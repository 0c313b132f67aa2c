package nspawn_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv/nspawn"
)

// A booted container runs systemd as PID 1, sees bound host directories at
// the same path, and answers on its system bus from the host.
func TestBootRunsSystemd(t *testing.T) {
	shared, sealed := t.TempDir(), t.TempDir()
	// Asking again for a device the harness binds anyway is harmless.
	c := nspawn.Boot(t, nspawn.Config{Binds: []string{shared, "/dev/net/tun", shared}, ReadOnlyBinds: []string{sealed}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	out, err := c.Exec(ctx, "cat", "/proc/1/comm")
	if err != nil || strings.TrimSpace(string(out)) != "systemd" {
		t.Fatalf("PID 1 inside is %q (%v), want systemd", out, err)
	}
	if _, err := c.Exec(ctx, "sh", "-c", "echo inside > "+filepath.Join(shared, "mark")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(shared, "mark")); err != nil || string(b) != "inside\n" {
		t.Fatalf("bound directory: %q, %v", b, err)
	}
	// VMs run from services inside the container: QEMU is part of the image.
	if out, err := c.Exec(ctx, "qemu-system-x86_64", "--version"); err != nil || !strings.Contains(string(out), "QEMU emulator") {
		t.Fatalf("qemu-system-x86_64 --version inside: %q, %v", out, err)
	}
	if _, err := c.Exec(ctx, "touch", filepath.Join(sealed, "mark")); err == nil {
		t.Fatal("wrote into a read-only bind")
	}
	if !strings.HasPrefix(c.BusAddress, "unix:path=") {
		t.Fatalf("BusAddress = %q", c.BusAddress)
	}
	if _, err := os.Stat(strings.TrimPrefix(c.BusAddress, "unix:path=")); err != nil {
		t.Fatalf("bus socket: %v", err)
	}
}

// The test process can serve and connect inside the container's private
// network namespace, and what it serves there is not on the host's
// loopback.
func TestNetworkNamespaceHelpers(t *testing.T) {
	c := nspawn.Boot(t, nspawn.Config{})
	l, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "inside\n")
	})}
	go srv.Serve(l)
	defer srv.Close()

	url := "http://" + l.Addr().String() + "/"
	resp, err := c.HTTPClient().Get(url)
	if err != nil {
		t.Fatalf("GET %s inside the container: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "inside\n" {
		t.Fatalf("body = %q", body)
	}
	// The same loopback address on the host is another namespace's.
	if conn, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s answered on the host's loopback", l.Addr())
	}
}
