package artifact

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/snapshot"
	"github.com/mergenhq/mergen/internal/store"
)

// hostFiles are the read-only files a test snapshot is taken with, at
// paths that every "host" of the test shares, as hosts of the same kind
// share their base assets' paths.
type hostFiles struct{ kernel, rootfs string }

func newHostFiles(t *testing.T) hostFiles {
	t.Helper()
	dir := t.TempDir()
	h := hostFiles{kernel: filepath.Join(dir, "vmlinux"), rootfs: filepath.Join(dir, "golden-rootfs.ext4")}
	os.WriteFile(h.kernel, []byte("kernel image"), 0o644)
	os.WriteFile(h.rootfs, bytes.Repeat([]byte("rootfs"), 1000), 0o644)
	return h
}

// reinstall replaces path with a new file of the same content: a new inode
// and modification time, as on a host that installed the same base assets
// itself.
func reinstall(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// snapStore is the snapshot store of a fresh data root: one host.
func snapStore(t *testing.T) *snapshot.Store {
	return snapshot.New(layout.Layout{DataRoot: t.TempDir(), RunRoot: t.TempDir()})
}

// takeSnapshot commits a snapshot into snaps as the manager does: the
// VMM's memory file (larger than a part, so that it moves in several), a
// data disk, and the fingerprints of h's files.
func takeSnapshot(t *testing.T, snaps *snapshot.Store, h hostFiles, id string) snapshot.Record {
	t.Helper()
	rec := snapshot.Record{
		ID: id, SourceVM: store.NewID(), SourceName: "web",
		VMM: "qemu", VMMVersion: "8.2.2", Shape: "q35/tcg", VCPU: 1, MemMiB: 64,
		Kernel: h.kernel, Disks: store.Disks{Rootfs: h.rootfs}, HasData: true,
		VMMFiles: []string{"memory"}, Ready: "0123456789abcdef",
	}
	for field, path := range map[string]string{"kernel": h.kernel, "rootfs": h.rootfs} {
		b, err := snapshot.Fingerprint(field, path)
		if err != nil {
			t.Fatal(err)
		}
		rec.Bases = append(rec.Bases, b)
	}
	staging, err := snaps.Stage(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	mem := make([]byte, 12<<20)
	rand.Read(mem)
	os.WriteFile(filepath.Join(staging, "memory"), mem, 0o600)
	os.WriteFile(filepath.Join(staging, "disks", snapshot.DataDisk), []byte("data disk of "+id), 0o600)
	if err := snaps.Commit(staging, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// assertAbsent checks that snaps has no snapshot id and nothing staged.
func assertAbsent(t *testing.T, snaps *snapshot.Store, id string) {
	t.Helper()
	if _, err := os.Stat(snaps.Paths(id).Dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot %s installed: %v", id, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(snaps.Paths(id).Dir))
	for _, e := range ents {
		t.Fatalf("left in the snapshots directory: %s", e.Name())
	}
}

// The whole path: push from one host, pull on another whose base files
// have the same content at the same paths (but are other inodes); the
// pulled snapshot is byte for byte the pushed one and passes the checks a
// restore makes.
func TestSnapshotPushPullToAnotherHost(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	h := newHostFiles(t)
	a, b := snapStore(t), snapStore(t)
	rec := takeSnapshot(t, a, h, store.NewID())

	res, err := c.PushSnapshot(ctxT(t), a, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Existed || res.Manifest.Kind != "snapshot" || res.Manifest.Snapshot != rec.ID || len(res.Manifest.Bases) != 2 {
		t.Fatalf("push: %+v", res)
	}
	for _, key := range []string{"manifest.json", "snapshot.json", "memory", "disks/data.ext4"} {
		if _, err := os.Stat(srv.object("team/mergen/snapshots/" + rec.ID + "/" + key)); err != nil {
			t.Errorf("remote layout: %v", err)
		}
	}
	// Pushed again: nothing moves.
	if res, err := c.PushSnapshot(ctxT(t), a, rec.ID); err != nil || !res.Existed {
		t.Fatalf("second push: %+v %v, want existed", res, err)
	}

	reinstall(t, h.kernel)
	reinstall(t, h.rootfs)
	pulled, err := c.PullSnapshot(ctxT(t), b, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(pulled.Fetched, ",") != "snapshot.json,memory,disks/data.ext4" {
		t.Fatalf("fetched %v", pulled.Fetched)
	}
	sameFiles(t, a.Paths(rec.ID).Dir, b.Paths(rec.ID).Dir, "memory", "disks/data.ext4")
	got, err := b.Get(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Ready != "" {
		t.Errorf("pulled snapshot keeps the source's ready key %q", got.Ready)
	}
	if got.SourceName != "web" || got.SizeBytes != rec.SizeBytes || len(got.Files) != 2 {
		t.Errorf("pulled record: %+v", got)
	}
	// The record's fingerprints are of this host's files: a restore here
	// accepts them, while the source's own fingerprints no longer match
	// the reinstalled files.
	if err := b.Verify(got); err != nil {
		t.Fatalf("pulled snapshot does not verify: %v", err)
	}
	if err := a.Verify(rec); err == nil || !strings.Contains(err.Error(), "changed since the snapshot was taken") {
		t.Fatalf("source fingerprints against reinstalled files: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(b.Paths(rec.ID).Dir, "memory")); err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("pulled memory file: %v %v, want mode 0400", fi.Mode(), err)
	}
	ents, _ := os.ReadDir(filepath.Dir(b.Paths(rec.ID).Dir))
	if len(ents) != 1 || ents[0].Name() != rec.ID {
		t.Fatalf("snapshots directory after the pull: %v", ents)
	}

	// Pulled again: already here, nothing downloaded.
	if again, err := c.PullSnapshot(ctxT(t), b, rec.ID); err != nil || len(again.Fetched) != 0 {
		t.Fatalf("second pull: %+v %v", again, err)
	}
	// The pulled copy is the same snapshot to the registry.
	if res, err := c.PushSnapshot(ctxT(t), b, rec.ID); err != nil || !res.Existed {
		t.Fatalf("push of the pulled copy: %+v %v, want existed", res, err)
	}
	// Never pushed: not found.
	if _, err := c.PullSnapshot(ctxT(t), b, store.NewID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pull of a snapshot never pushed: %v", err)
	}
}

// A corrupted object is refused by its SHA-256 and nothing is installed.
func TestSnapshotPullRefusesACorruptObject(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	h := newHostFiles(t)
	a, b := snapStore(t), snapStore(t)
	rec := takeSnapshot(t, a, h, store.NewID())
	if _, err := c.PushSnapshot(ctxT(t), a, rec.ID); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(srv.object("team/mergen/snapshots/"+rec.ID+"/memory"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("XXXX"), 7<<20) // same size, other bytes
	f.Close()
	_, err = c.PullSnapshot(ctxT(t), b, rec.ID)
	if err == nil || !strings.Contains(err.Error(), "download memory: sha256 mismatch") || !strings.Contains(err.Error(), rec.ID) {
		t.Fatalf("pull of a corrupt memory object: %v", err)
	}
	assertAbsent(t, b, rec.ID)
}

// A host whose base files differ from the snapshot's refuses the pull
// before downloading anything.
func TestSnapshotPullRefusesAHostOfAnotherKind(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	h := newHostFiles(t)
	a, b := snapStore(t), snapStore(t)
	rec := takeSnapshot(t, a, h, store.NewID())
	if _, err := c.PushSnapshot(ctxT(t), a, rec.ID); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(h.rootfs)
	other := bytes.ToUpper(old) // same size, other content
	os.WriteFile(h.rootfs, other, 0o644)
	_, err := c.PullSnapshot(ctxT(t), b, rec.ID)
	if err == nil || !strings.Contains(err.Error(), "this host's rootfs "+h.rootfs+" is not the one the snapshot was taken with") {
		t.Fatalf("pull onto other base files: %v", err)
	}
	assertAbsent(t, b, rec.ID)

	// The rootfs back as it was, the kernel gone: only the kernel can be
	// what the refusal names.
	os.WriteFile(h.rootfs, old, 0o644)
	os.Remove(h.kernel)
	_, err = c.PullSnapshot(ctxT(t), b, rec.ID)
	if err == nil || !strings.Contains(err.Error(), "needs its kernel at "+h.kernel+", and this host has none") {
		t.Fatalf("pull onto a host without the kernel: %v", err)
	}
	assertAbsent(t, b, rec.ID)

	// A snapshot whose base files changed on its own host is not pushed:
	// it could be restored nowhere.
	rec2 := takeSnapshot(t, a, newHostFiles(t), store.NewID())
	reinstall(t, rec2.Kernel)
	if _, err := c.PushSnapshot(ctxT(t), a, rec2.ID); err == nil || !strings.Contains(err.Error(), "changed since the snapshot was taken") {
		t.Fatalf("push after the kernel changed: %v", err)
	}
	if _, err := c.PullSnapshot(ctxT(t), b, rec2.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused push left something: %v", err)
	}
}

// A snapshot of the same id already here: the same one is a no-op, a
// different one is refused both ways and left alone.
func TestSnapshotAlreadyHere(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	h := newHostFiles(t)
	a, other := snapStore(t), snapStore(t)
	rec := takeSnapshot(t, a, h, store.NewID())
	if _, err := c.PushSnapshot(ctxT(t), a, rec.ID); err != nil {
		t.Fatal(err)
	}
	// Back onto the host it was taken on.
	if res, err := c.PullSnapshot(ctxT(t), a, rec.ID); err != nil || len(res.Fetched) != 0 {
		t.Fatalf("pull onto its own host: %+v %v", res, err)
	}

	theirs := takeSnapshot(t, other, h, rec.ID) // same id, other memory
	_, err := c.PullSnapshot(ctxT(t), other, rec.ID)
	if err == nil || !strings.Contains(err.Error(), "exists here and differs from the registry's") {
		t.Fatalf("pull over a different snapshot: %v", err)
	}
	if err := other.Verify(theirs); err != nil {
		t.Fatalf("the local snapshot changed: %v", err)
	}
	if _, err := c.PushSnapshot(ctxT(t), other, rec.ID); err == nil || !strings.Contains(err.Error(), "the registry holds a different snapshot under this id") {
		t.Fatalf("push of a different snapshot under a pushed id: %v", err)
	}

	// A damaged local snapshot is not pushed.
	bad := takeSnapshot(t, other, h, store.NewID())
	mem := filepath.Join(other.Paths(bad.ID).Dir, "memory")
	os.Chmod(mem, 0o600)
	f, _ := os.OpenFile(mem, os.O_WRONLY, 0)
	f.WriteAt([]byte("XXXX"), 1<<20)
	f.Close()
	if _, err := c.PushSnapshot(ctxT(t), other, bad.ID); err == nil || !strings.Contains(err.Error(), "memory does not match its record") {
		t.Fatalf("push of a damaged snapshot: %v", err)
	}
}

// putRaw stores b under key as it is.
func putRaw(t *testing.T, c *Client, key string, b []byte) {
	t.Helper()
	if _, err := c.s3.PutObject(ctxT(t), &s3.PutObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key), Body: bytes.NewReader(b)}); err != nil {
		t.Fatal(err)
	}
}

// forge publishes, under id, the pushed snapshot src with its record
// rewritten by edit and a manifest that agrees with the new record: what
// a registry writer could put there.
func forge(t *testing.T, srv *s3Server, c *Client, src snapshot.Record, m Manifest, id string, edit func(map[string]any)) {
	t.Helper()
	raw, err := os.ReadFile(srv.object("team/mergen/snapshots/" + src.ID + "/snapshot.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	json.Unmarshal(raw, &doc)
	edit(doc)
	rec, _ := json.Marshal(doc)
	for _, f := range src.Files {
		b, err := os.ReadFile(srv.object("team/mergen/snapshots/" + src.ID + "/" + f.Name))
		if err != nil {
			t.Fatal(err)
		}
		putRaw(t, c, c.snapshotKey(id)+"/"+f.Name, b)
	}
	putRaw(t, c, c.snapshotKey(id)+"/snapshot.json", rec)
	sum := sha256.Sum256(rec)
	m.Snapshot = id
	m.Files = append([]File(nil), m.Files...)
	for i := range m.Files {
		if m.Files[i].Local == "snapshot.json" {
			m.Files[i].Size, m.Files[i].SHA256 = int64(len(rec)), hex.EncodeToString(sum[:])
		}
	}
	if err := c.putSmall(ctxT(t), c.snapshotKey(id)+"/"+ManifestName, m); err != nil {
		t.Fatal(err)
	}
}

// Records that are not what was asked for, or that this code cannot read,
// are refused before anything is downloaded.
func TestSnapshotPullRefusesForeignRecords(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	h := newHostFiles(t)
	a, b := snapStore(t), snapStore(t)
	rec := takeSnapshot(t, a, h, store.NewID())
	res, err := c.PushSnapshot(ctxT(t), a, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		edit func(map[string]any)
		want string
	}{
		{"another id", func(map[string]any) {}, `its record is of snapshot "` + rec.ID + `"`},
		{"newer version", func(d map[string]any) { d["version"] = 2 }, "record version 2; this mergen reads version 1"},
		{"vmm file outside", func(d map[string]any) { d["vmmFiles"] = []string{"../../../etc/shadow"} }, "not among the snapshot's checksummed files"},
		{"host file not fingerprinted", func(d map[string]any) {
			d["disks"].(map[string]any)["payloadDisk"] = "/etc/shadow"
		}, "gives 3 host files and fingerprints 2"},
		{"host data disk", func(d map[string]any) { d["disks"].(map[string]any)["dataDisk"] = "/etc/shadow" }, "a snapshot's data disk is its own"},
		{"files not the manifest's", func(d map[string]any) {
			files := d["files"].([]any)
			files[0].(map[string]any)["sha256"] = strings.Repeat("ab", 32)
		}, "is not the manifest's"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := store.NewID()
			forge(t, srv, c, rec, res.Manifest, id, func(d map[string]any) {
				if tc.name != "another id" {
					d["id"] = id
				}
				tc.edit(d)
			})
			_, err := c.PullSnapshot(ctxT(t), b, id)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("pull: %v, want %q", err, tc.want)
			}
			assertAbsent(t, b, id)
		})
	}
	// A manifest of another snapshot is refused too.
	id := store.NewID()
	m := res.Manifest
	if err := c.putSmall(ctxT(t), c.snapshotKey(id)+"/"+ManifestName, m); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PullSnapshot(ctxT(t), b, id); err == nil || !strings.Contains(err.Error(), `manifest: it is of snapshot "`+rec.ID+`"`) {
		t.Fatalf("pull under another id's manifest: %v", err)
	}
	if _, err := c.PullSnapshot(ctxT(t), b, "not-an-id"); err == nil || !strings.Contains(err.Error(), "not a lowercase UUID") {
		t.Fatalf("pull of a bad id: %v", err)
	}
}

// A pull's staging directory is one snapshot.Store.Sweep removes: a daemon
// that starts while a pull is under way sweeps it, and the pull then fails
// without installing anything.
func TestSweepDuringAPullLeavesNothing(t *testing.T) {
	srv := startS3(t)
	c := srv.client(t, srv.Profile())
	h := newHostFiles(t)
	a, b := snapStore(t), snapStore(t)
	rec := takeSnapshot(t, a, h, store.NewID())
	if _, err := c.PushSnapshot(ctxT(t), a, rec.ID); err != nil {
		t.Fatal(err)
	}
	p := srv.Profile()
	addr, stalled, release := stallProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"), 3<<20)
	p.Endpoint = "http://" + addr
	slow := srv.client(t, p)
	done := make(chan error, 1)
	go func() {
		_, err := slow.PullSnapshot(context.Background(), b, rec.ID)
		done <- err
	}()
	select {
	case <-stalled:
	case err := <-done:
		t.Fatalf("pull ended before the transfer stalled: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Dir(b.Paths(rec.ID).Dir))
	if len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), layout.StagingPrefix+rec.ID+"-") {
		t.Fatalf("snapshots directory during the pull: %v", ents)
	}
	if err := b.Sweep(); err != nil {
		t.Fatal(err)
	}
	release()
	err := <-done
	if err == nil {
		t.Fatal("pull succeeded although its staging directory was swept")
	}
	t.Logf("pull after the sweep: %v", err)
	assertAbsent(t, b, rec.ID)
}

// stallProxy forwards loopback TCP to target and, once budget bytes have
// passed, holds every byte until release is called; stalled is closed
// then.
func stallProxy(t *testing.T, target string, budget int64) (addr string, stalled <-chan struct{}, release func()) {
	t.Helper()
	var left atomic.Int64
	left.Store(budget)
	st, rel := make(chan struct{}), make(chan struct{})
	var stallOnce, releaseOnce sync.Once
	release = func() { releaseOnce.Do(func() { close(rel) }) }
	t.Cleanup(release)
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if left.Add(-int64(n)) < 0 {
					stallOnce.Do(func() { close(st) })
					<-rel
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	addr = relay(t, target, func(in, out net.Conn) {
		go pipe(out, in)
		go pipe(in, out)
	})
	return addr, st, release
}

func TestSnapshotManifestNames(t *testing.T) {
	sum := strings.Repeat("0f", 32)
	ok := Manifest{Kind: "snapshot", Files: []File{{Name: "disks/data.ext4", Local: "disks/data.ext4", SHA256: sum}},
		Bases: []BaseFile{{Field: "kernel", Path: "/var/lib/mergen/base/current/vmlinux", SHA256: sum}}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]Manifest{
		"escape":        {Kind: "snapshot", Files: []File{{Name: "disks/../../x", Local: "x", SHA256: sum}}},
		"absolute":      {Kind: "snapshot", Files: []File{{Name: "x", Local: "/etc/x", SHA256: sum}}},
		"hidden":        {Kind: "snapshot", Files: []File{{Name: "x", Local: "disks/.tmp", SHA256: sum}}},
		"trailing":      {Kind: "snapshot", Files: []File{{Name: "x", Local: "disks/", SHA256: sum}}},
		"nested base":   {Kind: "base", Files: []File{{Name: "disks/x", Local: "x", SHA256: sum}}},
		"relative base": {Kind: "snapshot", Files: ok.Files, Bases: []BaseFile{{Path: "vmlinux", SHA256: sum}}},
		"bad base sum":  {Kind: "snapshot", Files: ok.Files, Bases: []BaseFile{{Path: "/vmlinux", SHA256: "x"}}},
	} {
		if err := m.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
