package manager

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/store"
)

// An image's ready snapshot is keyed by everything its memory depends on:
// the same image, files and shape give the same key; a changed image file,
// kernel, shape, port, VMM setting or boot argument gives another, which
// makes a new ready snapshot (and the old one is dropped).
func TestReadyKeyChangesWithWhatTheMemoryDependsOn(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"vmlinux", "rootfs.ext4", "payload.ext4"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := store.Meta{VMM: "qemu", VCPU: 1, MemMiB: 256, Kernel: filepath.Join(dir, "vmlinux"),
		Disks: store.Disks{Rootfs: filepath.Join(dir, "rootfs.ext4"), Payload: filepath.Join(dir, "payload.ext4")}}
	key := func(m store.Meta, port int, args string) string {
		t.Helper()
		k, err := readyKey(m, port, args, "qemu 7.2 q35")
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base, 8080, "")
	if key(base, 8080, "") != k0 {
		t.Fatal("the same image and shape gave two keys")
	}
	changed := map[string]string{}
	m := base
	m.MemMiB = 512
	changed["memory"] = key(m, 8080, "")
	m = base
	m.VCPU = 2
	changed["vcpus"] = key(m, 8080, "")
	m = base
	m.Driver.Entropy = true
	changed["a driver setting"] = key(m, 8080, "")
	changed["the port"] = key(base, 8081, "")
	changed["boot arguments"] = key(base, 8080, "quiet")
	later := time.Now().Add(time.Hour)
	os.Chtimes(base.Disks.Payload, later, later)
	changed["the image"] = key(base, 8080, "")
	os.WriteFile(base.Kernel, []byte("another kernel"), 0o644)
	changed["the kernel"] = key(base, 8080, "")
	seen := map[string]string{k0: "the original"}
	for what, k := range changed {
		if other, dup := seen[k]; dup {
			t.Errorf("changing %s gives the key of %s", what, other)
		}
		seen[k] = what
	}
	if k, _ := readyKey(base, 8080, "", "qemu 8.0 q35"); k == key(base, 8080, "") {
		t.Error("another VMM version or machine gives the same key")
	}
	os.Remove(base.Disks.Rootfs)
	if _, err := readyKey(base, 8080, "", ""); err == nil {
		t.Error("a missing base disk gave a key")
	}
}
