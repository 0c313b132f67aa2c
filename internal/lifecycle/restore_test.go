package lifecycle

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/store"
)

// What a restored guest is told is the VM's own record: its name, address
// with its prefix, gateway, MAC and extraEnv, with fresh entropy; and it
// is an identity the guest accepts.
func TestIdentityIsTheVMsOwn(t *testing.T) {
	m := store.Meta{ID: "0b6f4a2e-9c1d-4e8f-a0b1-3c5d7e9f1a2b", GuestIP: "172.31.0.7", PrefixLen: 24, Gateway: "172.31.0.1",
		MAC: "02:fc:0b:6f:4a:2e", Tags: map[string]string{"name": "copy"}, ExtraEnv: map[string]string{"GREETING": "hi"}}
	secretPath := filepath.Join(t.TempDir(), "agent.secret")
	a, err := identity(m, secretPath)
	if err != nil {
		t.Fatal(err)
	}
	// The exec agent's secret is the VM's own, from its run directory.
	if own, err := os.ReadFile(secretPath); err != nil || len(a.Secret) != 32 || string(a.Secret) != string(own) {
		t.Fatalf("identity secret: %d bytes, the VM's %d bytes (%v)", len(a.Secret), len(own), err)
	}
	if a.Hostname != "copy" || a.Addr != "172.31.0.7/24" || a.Gateway != "172.31.0.1" || a.MAC != m.MAC || a.Device != "eth0" || a.Env["GREETING"] != "hi" {
		t.Fatalf("identity %+v", a)
	}
	a.UnixNano = time.Now().UnixNano() // as tell stamps each send
	if err := a.Validate(); err != nil {
		t.Fatalf("the guest would refuse it: %v", err)
	}
	b, _ := identity(m, secretPath)
	if len(a.Entropy) != 64 || string(a.Entropy) == string(b.Entropy) {
		t.Fatal("two identities share their entropy")
	}
	m.Tags = nil
	if c, _ := identity(m, secretPath); c.Hostname != "vm-0b6f4a2e" {
		t.Fatalf("unnamed VM's hostname %q", c.Hostname)
	}
}

// The restore directory, while it exists, makes the start a restore; once
// consumed, starts boot.
func TestRestoreSpecFollowsTheRestoreDirectory(t *testing.T) {
	l := layout.Layout{ConfigRoot: t.TempDir(), RunRoot: t.TempDir(), DataRoot: t.TempDir()}
	m := store.Meta{ID: "0b6f4a2e-9c1d-4e8f-a0b1-3c5d7e9f1a2b", VCPU: 1, MemMiB: 256}
	p := l.VM(m.ID)
	if s := restoreSpec(m, p); s.Restore != nil {
		t.Fatalf("no restore directory, Restore %+v", s.Restore)
	}
	if err := os.MkdirAll(p.RestoreDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if s := restoreSpec(m, p); s.Restore == nil || s.Restore.Dir != p.RestoreDir {
		t.Fatalf("restore directory present, Restore %+v", s.Restore)
	}
	os.Remove(p.RestoreDir)
	os.WriteFile(p.RestoreDir, nil, 0o600) // not a directory: no restore
	if s := restoreSpec(m, p); s.Restore != nil {
		t.Fatalf("a file in its place, Restore %+v", s.Restore)
	}
}
