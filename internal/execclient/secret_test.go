package execclient

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/execproto"
)

func TestEnsureSecretCreatesOnceAndRefusesWhatOthersCouldKnow(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.secret")
	a, err := EnsureSecret(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode() != 0o600 || fi.Size() != execproto.SecretLen || len(a) != execproto.SecretLen {
		t.Fatalf("created: %v %v, %d bytes returned", fi.Mode(), err, len(a))
	}
	if bytes.Equal(a, make([]byte, execproto.SecretLen)) {
		t.Fatal("the secret is all zeros")
	}
	b, err := EnsureSecret(p)
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("second call: %v, same bytes %v", err, bytes.Equal(a, b))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
	if c, _ := EnsureSecret(filepath.Join(t.TempDir(), "agent.secret")); bytes.Equal(a, c) {
		t.Error("two VMs got the same secret")
	}

	os.Chmod(p, 0o640)
	if _, err := EnsureSecret(p); err == nil || !strings.Contains(err.Error(), "mode 0640") {
		t.Errorf("group-readable: %v", err)
	}
	os.Chmod(p, 0o600)
	os.WriteFile(p, []byte("short"), 0o600)
	if _, err := EnsureSecret(p); err == nil || !strings.Contains(err.Error(), "5 bytes") {
		t.Errorf("wrong size: %v", err)
	}
	link := filepath.Join(dir, "link.secret")
	os.Symlink(p, link)
	if _, err := EnsureSecret(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("a link: %v", err)
	}
	d := filepath.Join(dir, "adir")
	os.Mkdir(d, 0o700)
	if _, err := EnsureSecret(d); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
	if _, err := EnsureSecret(filepath.Join(dir, "missing", "agent.secret")); err == nil {
		t.Error("a missing directory: no error")
	}
}
