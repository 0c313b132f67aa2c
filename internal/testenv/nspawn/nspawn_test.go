package nspawn_test

import (
	"context"
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
	shared := t.TempDir()
	c := nspawn.Boot(t, nspawn.Config{Binds: []string{shared}})
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
	if !strings.HasPrefix(c.BusAddress, "unix:path=") {
		t.Fatalf("BusAddress = %q", c.BusAddress)
	}
	if _, err := os.Stat(strings.TrimPrefix(c.BusAddress, "unix:path=")); err != nil {
		t.Fatalf("bus socket: %v", err)
	}
}
