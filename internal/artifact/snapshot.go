package artifact

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/snapshot"
	"github.com/mergenhq/mergen/internal/store"
)

// A snapshot travels as <prefix>/mergen/snapshots/<id>/: each of its files
// under its name in the snapshot's directory (the VMM's files,
// disks/data.ext4), its record snapshot.json, and manifest.json last. The
// manifest also carries the SHA-256 of every host file the snapshot was
// taken with (kernel, base disks, image disk): a snapshot's memory is only
// valid next to the very same files, and the record's own fingerprints of
// them (size, mtime, inode) mean nothing on another host.

// recordName is the snapshot's record, in its directory and in the registry.
const recordName = "snapshot.json"

func (c *Client) snapshotKey(id string) string { return c.key("snapshots", id) }

// SnapshotPush says what a snapshot push did.
type SnapshotPush struct {
	Manifest Manifest
	// Existed says the registry held this very snapshot already, and
	// nothing was uploaded.
	Existed bool
}

// PushSnapshot uploads snapshot id of snaps. Every file is checked
// against the record's SHA-256 on the way (a damaged snapshot is not
// pushed), and so is every host file it was taken with against the
// record's fingerprint (one that changed since makes a snapshot that can
// be restored nowhere). A snapshot is immutable in the registry too:
// pushing it again is a no-op, and a different snapshot under the same id
// is refused.
func (c *Client) PushSnapshot(ctx context.Context, snaps *snapshot.Store, id string) (SnapshotPush, error) {
	fail := func(err error) (SnapshotPush, error) {
		return SnapshotPush{}, fmt.Errorf("push snapshot %s: %w", id, err)
	}
	if err := store.ValidateID(id); err != nil {
		return fail(err)
	}
	rec, err := snaps.Get(id)
	if err != nil {
		return fail(err)
	}
	if err := rec.Check(); err != nil {
		return fail(fmt.Errorf("record: %w", err))
	}
	dir := snaps.Paths(id).Dir
	files, err := describeSnapshot(dir, rec)
	if err != nil {
		return fail(err)
	}
	bases, err := hashBases(rec)
	if err != nil {
		return fail(err)
	}
	if err := c.check(ctx); err != nil {
		return fail(err)
	}
	keyDir := c.snapshotKey(id)
	remote, err := c.getManifest(ctx, keyDir+"/"+ManifestName)
	switch {
	case err == nil:
		// Pushed before (or by another host that pulled it): the same
		// snapshot is not uploaded again, a different one not replaced.
		theirs, err := c.remoteRecord(ctx, keyDir, id, remote)
		if err != nil {
			return fail(fmt.Errorf("the registry holds snapshot %s already, and it cannot be read: %w", id, err))
		}
		if !sameSnapshot(rec, theirs) {
			return fail(errdefs.Conflict("the registry holds a different snapshot under this id; snapshots are immutable, it was not replaced"))
		}
		return SnapshotPush{Manifest: remote, Existed: true}, nil
	case !errors.Is(err, ErrNotFound):
		return fail(err)
	}
	m := Manifest{Kind: "snapshot", Snapshot: id, CreatedAt: time.Now().UTC(), Files: files, Bases: bases}
	if err := m.Validate(); err != nil {
		return fail(err)
	}
	if m, err = c.upload(ctx, dir, keyDir, m); err != nil {
		return fail(err)
	}
	return SnapshotPush{Manifest: m}, nil
}

// describeSnapshot hashes the files of rec in dir, refusing any that does
// not match the record, and lists the record itself last.
func describeSnapshot(dir string, rec snapshot.Record) ([]File, error) {
	pairs := make([]pair, 0, len(rec.Files)+1)
	for _, f := range rec.Files {
		n := filepath.ToSlash(f.Name)
		pairs = append(pairs, pair{local: n, remote: n})
	}
	pairs = append(pairs, pair{local: recordName, remote: recordName})
	files, err := describe(dir, pairs)
	if err != nil {
		return nil, err
	}
	for i, f := range rec.Files {
		if got := files[i]; got.Size != f.Size || got.SHA256 != f.SHA256 {
			return nil, fmt.Errorf("%s does not match its record (%d bytes, sha256 %s; recorded %d bytes, %s): the snapshot is damaged and was not pushed",
				f.Name, got.Size, got.SHA256, f.Size, f.SHA256)
		}
	}
	return files, nil
}

// hashBases reads the content of every host file rec was taken with,
// after checking that each is still the file the record fingerprinted.
func hashBases(rec snapshot.Record) ([]BaseFile, error) {
	var out []BaseFile
	for _, b := range rec.Bases {
		before, err := snapshot.Fingerprint(b.Field, b.Path)
		if err != nil {
			return nil, fmt.Errorf("its %s is gone: %w", b.Field, err)
		}
		if before != b {
			return nil, fmt.Errorf("its %s %s changed since the snapshot was taken: the snapshot can be restored nowhere; take a new one", b.Field, b.Path)
		}
		bf, err := hashBase(b.Field, b.Path, before)
		if err != nil {
			return nil, err
		}
		out = append(out, bf)
	}
	return out, nil
}

// hashBase hashes path, whose fingerprint was before, and checks that it
// did not change while it was read.
func hashBase(field, path string, before snapshot.Base) (BaseFile, error) {
	n, sum, err := hashFile(path)
	if err != nil {
		return BaseFile{}, fmt.Errorf("%s: %w", field, err)
	}
	after, err := snapshot.Fingerprint(field, path)
	if err != nil {
		return BaseFile{}, err
	}
	if after != before {
		return BaseFile{}, fmt.Errorf("%s %s changed while it was read; try again", field, path)
	}
	return BaseFile{Field: field, Path: path, Size: n, SHA256: sum}, nil
}

// PullSnapshot installs snapshot id from the registry into snaps. The
// files are downloaded into a staging directory of the snapshots root
// (the name snapshot.Store.Sweep removes after a crash), each verified
// against the manifest's SHA-256, which must be the record's, and the
// directory is renamed into place only when complete. Before a byte is
// downloaded, the record must be of snapshot id and of a version this code
// reads, and every host file the snapshot was taken with must be at the
// same path here with the same content. A snapshot already here is left
// alone: the pull succeeds without a download when it is the same one,
// and is refused when it differs.
func (c *Client) PullSnapshot(ctx context.Context, snaps *snapshot.Store, id string) (PullResult, error) {
	fail := func(err error) (PullResult, error) { return PullResult{}, fmt.Errorf("pull snapshot %s: %w", id, err) }
	if err := store.ValidateID(id); err != nil {
		return fail(err)
	}
	if err := c.check(ctx); err != nil {
		return fail(err)
	}
	keyDir := c.snapshotKey(id)
	m, err := c.getManifest(ctx, keyDir+"/"+ManifestName)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return fail(ErrNotFound)
		}
		return fail(err)
	}
	rec, err := c.remoteRecord(ctx, keyDir, id, m)
	if err != nil {
		return fail(err)
	}
	if done, err := alreadyHere(snaps, rec); done || err != nil {
		if err != nil {
			return fail(err)
		}
		return PullResult{Manifest: m}, nil
	}
	bases, err := matchBases(rec, m)
	if err != nil {
		return fail(err)
	}
	// The record now speaks of this host's files. A ready snapshot's key
	// is made of the identities of the source host's files, so here it is
	// a plain snapshot: kept as the image's ready one, it would never be
	// found by its key, and would be deleted as stale.
	rec.Bases, rec.Ready, rec.ReadyPort = bases, "", 0

	staging, err := snaps.Stage(id)
	if err != nil {
		return fail(err)
	}
	installed := false
	defer func() {
		if !installed {
			snaps.Discard(staging)
		}
	}()
	var need int64
	for _, f := range m.Files {
		need += f.Size
	}
	if err := enoughSpace(staging, need); err != nil {
		return fail(err)
	}
	fetched := []string{recordName}
	// Each file's fsync runs while the next one downloads; all of them
	// have returned before the snapshot is installed, or staging discarded.
	var flushes errgroup.Group
	defer flushes.Wait()
	for _, f := range m.Files {
		if f.Local == recordName {
			continue
		}
		dst, err := stagedPath(staging, f.Local)
		if err != nil {
			return fail(err)
		}
		ctr := c.opt.Progress.File(f.Name, f.Size)
		if err := c.fetch(ctx, keyDir+"/"+f.Name, dst, f, ctr, &flushes); err != nil {
			ctr.Finish("failed")
			return fail(err)
		}
		ctr.Finish("done")
		fetched = append(fetched, f.Local)
	}
	if err := flushes.Wait(); err != nil {
		return fail(err)
	}
	if err := snaps.Install(staging, rec); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return fail(err)
		}
		// Another pull of the same id finished first.
		if done, err := alreadyHere(snaps, rec); done || err != nil {
			if err != nil {
				return fail(err)
			}
			return PullResult{Manifest: m}, nil
		}
		return fail(err)
	}
	installed = true
	return PullResult{Manifest: m, Fetched: fetched}, nil
}

// stagedPath makes the directories of name (a checked relative name) in
// staging, one by one and never staging itself: a pull whose staging was
// swept away fails instead of writing a new one.
func stagedPath(staging, name string) (string, error) {
	dir := staging
	parts := strings.Split(name, "/")
	for _, el := range parts[:len(parts)-1] {
		dir = filepath.Join(dir, el)
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	return filepath.Join(dir, parts[len(parts)-1]), nil
}

// remoteRecord downloads and checks the record of snapshot id under
// keyDir, described by m: its SHA-256 is the manifest's, it is a record of
// snapshot id in a version this code reads, and its files are exactly the
// manifest's (besides the record), with the same sizes and SHA-256.
func (c *Client) remoteRecord(ctx context.Context, keyDir, id string, m Manifest) (snapshot.Record, error) {
	if m.Kind != "snapshot" {
		return snapshot.Record{}, fmt.Errorf("manifest: kind %q, want \"snapshot\"", m.Kind)
	}
	if m.Snapshot != id {
		return snapshot.Record{}, fmt.Errorf("manifest: it is of snapshot %q", m.Snapshot)
	}
	listed := map[string]File{}
	for _, f := range m.Files {
		listed[f.Local] = f
	}
	mf, ok := listed[recordName]
	if !ok || mf.Name != recordName {
		return snapshot.Record{}, fmt.Errorf("manifest: lists no %s", recordName)
	}
	key := keyDir + "/" + recordName
	out, err := c.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key)})
	if err != nil {
		return snapshot.Record{}, c.explain(err, "download "+recordName)
	}
	b, err := readAll(out.Body)
	out.Body.Close()
	if err != nil {
		return snapshot.Record{}, c.explain(err, "download "+recordName)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); int64(len(b)) != mf.Size || got != mf.SHA256 {
		return snapshot.Record{}, fmt.Errorf("download %s: %d bytes, sha256 %s; the manifest says %d bytes, %s (object corrupt or changed; nothing installed)", recordName, len(b), got, mf.Size, mf.SHA256)
	}
	rec, err := snapshot.DecodeRecord(id, b)
	if err != nil {
		return snapshot.Record{}, err
	}
	if err := rec.Check(); err != nil {
		return snapshot.Record{}, fmt.Errorf("record: %w", err)
	}
	if len(rec.Files)+1 != len(m.Files) {
		return snapshot.Record{}, fmt.Errorf("manifest lists %d files besides the record, the record %d", len(m.Files)-1, len(rec.Files))
	}
	for _, f := range rec.Files {
		n := filepath.ToSlash(f.Name)
		got, ok := listed[n]
		if !ok || got.Name != n || got.Size != f.Size || got.SHA256 != f.SHA256 {
			return snapshot.Record{}, fmt.Errorf("the record's %s (%d bytes, sha256 %s) is not the manifest's", f.Name, f.Size, f.SHA256)
		}
	}
	return rec, nil
}

// alreadyHere answers whether snaps holds rec's snapshot: true when it is
// the same one, an error when it differs.
func alreadyHere(snaps *snapshot.Store, rec snapshot.Record) (bool, error) {
	local, err := snaps.Get(rec.ID)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("snapshot %s exists here and cannot be read: %w", rec.ID, err)
	}
	if !sameSnapshot(local, rec) {
		return false, errdefs.Conflict("snapshot %s exists here and differs from the registry's; snapshots are immutable: remove it first (mergen snapshot rm %s) to pull it", rec.ID, rec.ID)
	}
	return true, nil
}

// matchBases checks that every host file rec was taken with is at the same
// path here with the content the manifest recorded, and returns their
// fingerprints on this host.
func matchBases(rec snapshot.Record, m Manifest) ([]snapshot.Base, error) {
	if len(m.Bases) != len(rec.Bases) {
		return nil, fmt.Errorf("manifest lists %d host files, the record %d", len(m.Bases), len(rec.Bases))
	}
	out := make([]snapshot.Base, 0, len(rec.Bases))
	for i, want := range m.Bases {
		if rb := rec.Bases[i]; rb.Field != want.Field || rb.Path != want.Path || rb.Size != want.Size {
			return nil, fmt.Errorf("manifest: bases[%d] (%s %s) is not the record's (%s %s)", i, want.Field, want.Path, rb.Field, rb.Path)
		}
		here, err := snapshot.Fingerprint(want.Field, want.Path)
		if err != nil {
			return nil, fmt.Errorf("the snapshot needs its %s at %s, and this host has none (%w): snapshots restore only on a host of the same kind, with the same base assets and image files at the same paths", want.Field, want.Path, err)
		}
		got := BaseFile{Size: here.Size}
		if here.Size == want.Size {
			if got, err = hashBase(want.Field, want.Path, here); err != nil {
				return nil, err
			}
		}
		if got.Size != want.Size || got.SHA256 != want.SHA256 {
			return nil, fmt.Errorf("this host's %s %s is not the one the snapshot was taken with (%d bytes, sha256 %s; the snapshot's %d bytes, %s): snapshots restore only on a host of the same kind, with the same base assets and image files at the same paths",
				want.Field, want.Path, got.Size, dash(got.SHA256), want.Size, want.SHA256)
		}
		out = append(out, here)
	}
	return out, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// sameSnapshot says whether a and b are one snapshot: the same record but
// for what a pull rewrites for its host (the host files' inodes and
// modification times, the ready key). The record carries every file's
// SHA-256, so the same record means the same files.
func sameSnapshot(a, b snapshot.Record) bool {
	return bytes.Equal(portable(a), portable(b))
}

func portable(r snapshot.Record) []byte {
	r.Ready, r.ReadyPort = "", 0
	bases := make([]snapshot.Base, len(r.Bases))
	for i, b := range r.Bases {
		bases[i] = snapshot.Base{Field: b.Field, Path: b.Path, Size: b.Size}
	}
	r.Bases = bases
	b, _ := json.Marshal(r)
	return b
}
