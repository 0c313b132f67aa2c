// Package snapshot keeps VM snapshots on disk: one directory per snapshot
// under <data>/snapshots, holding its record (snapshot.json), the VMM's
// files (memory and device state) and copies of the source VM's writable
// disks. A snapshot is written under a staging name and renamed into place
// once its record is written, so after a crash it is complete or absent;
// deleting renames it to a trash name first.
//
// A snapshot is immutable once committed. Its record carries each file's
// size and SHA-256, and a fingerprint of every read-only file the source VM
// had (kernel, initrd, base disks), so a restore refuses a damaged
// snapshot, or one whose shared disks changed since.
package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mergenhq/mergen/internal/atomicfile"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/health"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/lock"
	"github.com/mergenhq/mergen/internal/store"
)

// RecordVersion is the version of snapshot.json this code writes.
const RecordVersion = 1

// DataDisk is the name, under the snapshot's disks/ directory, of the copy
// of the source VM's data disk.
const DataDisk = "data.ext4"

// Record is snapshot.json: everything a restore needs besides the files.
type Record struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`

	SourceVM   string `json:"sourceVM"`
	SourceName string `json:"sourceName,omitempty"`

	VMM        string `json:"vmm"`
	VMMVersion string `json:"vmmVersion"`
	Shape      string `json:"shape"`

	VCPU      int               `json:"vcpu"`
	MemMiB    int               `json:"memMiB"`
	Kernel    string            `json:"kernel"`
	Initrd    string            `json:"initrd,omitempty"`
	Disks     store.Disks       `json:"disks"` // the read-only ones; Data is empty (see HasData)
	DiskRoots map[string]string `json:"diskRoots,omitempty"`
	// HasData says the source VM had a data disk, copied to disks/DataDisk.
	HasData  bool   `json:"hasData,omitempty"`
	HTTPPort int    `json:"httpPort,omitempty"`
	TapName  string `json:"tapName"` // Firecracker restores need the source's

	// VMMFiles are the names the driver's Snapshot wrote.
	VMMFiles []string `json:"vmmFiles"`
	// Files are every file of the snapshot (VMM files, then disks/…),
	// with size and SHA-256.
	Files []File `json:"files"`
	// Bases fingerprint the source's read-only files, shared with every
	// VM restored from the snapshot.
	Bases []Base `json:"bases"`

	SizeBytes  int64 `json:"sizeBytes"`
	DurationMs int64 `json:"durationMs"`

	// Ready is the image key of an image's ready snapshot (see
	// manager's ready snapshots); ReadyPort the port that answered.
	Ready     string `json:"ready,omitempty"`
	ReadyPort int    `json:"readyPort,omitempty"`

	// HealthCheck is the source VM's, which a restore keeps unless it
	// gives its own; none for a ready snapshot.
	HealthCheck *health.Check `json:"healthCheck,omitempty"`
}

// File is one file of a snapshot, by its name relative to the snapshot's
// directory.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Base fingerprints a read-only file the snapshot's guest had open: a
// change of size, modification time or inode means its content may differ
// from what the guest's memory assumes.
type Base struct {
	Field   string `json:"field"`
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	ModNano int64  `json:"modNano"`
	Inode   uint64 `json:"inode"`
}

// Fingerprint takes path's Base.
func Fingerprint(field, path string) (Base, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Base{}, fmt.Errorf("%s: %w", field, err)
	}
	b := Base{Field: field, Path: path, Size: fi.Size(), ModNano: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		b.Inode = st.Ino
	}
	return b, nil
}

// Store is the snapshots of one host.
type Store struct {
	layout layout.Layout

	mu       sync.Mutex
	verified map[verifiedKey]bool // files whose checksum matched, by identity
}

// New returns the store of l's data root.
func New(l layout.Layout) *Store {
	return &Store{layout: l, verified: map[verifiedKey]bool{}}
}

// Paths are snapshot sid's paths.
func (s *Store) Paths(sid string) layout.Snapshot { return s.layout.Snapshot(sid) }

// Stage makes the staging directory of a new snapshot, with its disks/
// directory: the caller writes the files there, then Commit or Discard.
func (s *Store) Stage(sid string) (string, error) {
	if err := store.ValidateID(sid); err != nil {
		return "", err
	}
	root := s.layout.SnapshotsDir()
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("snapshot %s: %w", sid, err)
	}
	dir, err := os.MkdirTemp(root, layout.StagingPrefix+sid+"-")
	if err != nil {
		return "", fmt.Errorf("snapshot %s: %w", sid, err)
	}
	if err := os.Mkdir(filepath.Join(dir, "disks"), 0o700); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("snapshot %s: %w", sid, err)
	}
	return dir, nil
}

// Discard removes a staging directory.
func (s *Store) Discard(staging string) {
	if staging != "" && strings.HasPrefix(filepath.Base(staging), layout.StagingPrefix) {
		os.RemoveAll(staging)
	}
}

// Commit checksums the staged files (rec.VMMFiles, and disks/DataDisk when
// rec.HasData), writes the record and renames the directory into place.
// rec gets its Files and SizeBytes.
func (s *Store) Commit(staging string, rec *Record) error {
	names := append([]string(nil), rec.VMMFiles...)
	if rec.HasData {
		names = append(names, filepath.Join("disks", DataDisk))
	}
	rec.Files, rec.SizeBytes = nil, 0
	for _, n := range names {
		f, err := checksum(filepath.Join(staging, n))
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", rec.ID, err)
		}
		f.Name = n
		rec.Files = append(rec.Files, f)
		rec.SizeBytes += f.Size
		// Nothing writes a committed snapshot's files.
		if err := os.Chmod(filepath.Join(staging, n), 0o400); err != nil {
			return fmt.Errorf("snapshot %s: %w", rec.ID, err)
		}
	}
	rec.Version = RecordVersion
	return s.place(staging, *rec)
}

// Install commits a staging directory (from Stage) that was filled with
// the files of an existing snapshot, such as one downloaded from a
// registry: the caller has verified each of rec.Files against its SHA-256,
// so Install checks only that they are all there at their recorded sizes.
// It refuses, with an error matching fs.ErrExist, to replace a snapshot of
// the same id; the staging directory is then left to the caller.
func (s *Store) Install(staging string, rec Record) error {
	if rec.Version != RecordVersion {
		return fmt.Errorf("install snapshot %s: record version %d; this mergen writes version %d", rec.ID, rec.Version, RecordVersion)
	}
	if err := rec.Check(); err != nil {
		return fmt.Errorf("install snapshot %s: %w", rec.ID, err)
	}
	for _, f := range rec.Files {
		path := filepath.Join(staging, f.Name)
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("install snapshot %s: %w", rec.ID, err)
		}
		if fi.Size() != f.Size {
			return fmt.Errorf("install snapshot %s: %s is %d bytes, the record says %d", rec.ID, f.Name, fi.Size(), f.Size)
		}
		if err := os.Chmod(path, 0o400); err != nil {
			return fmt.Errorf("install snapshot %s: %w", rec.ID, err)
		}
	}
	return s.place(staging, rec)
}

// Check checks a record that was not written here (a pulled one) the way
// a restore relies on it: every name stays inside the snapshot's
// directory; every file a restore links (the VMM's files, the data disk)
// is one of the checksummed Files; and every host file the record gives a
// restored VM (kernel, initrd, read-only disks) is fingerprinted in Bases,
// below the root it is opened beneath, so that no host file reaches a
// guest unchecked. The data disk is the snapshot's own copy, never a host
// path.
func (r Record) Check() error {
	files := map[string]bool{}
	for i, f := range r.Files {
		if !filepath.IsLocal(f.Name) || filepath.Clean(f.Name) != f.Name || f.Name == "snapshot.json" {
			return fmt.Errorf("files[%d] %q: not a file name inside the snapshot", i, f.Name)
		}
		if files[f.Name] {
			return fmt.Errorf("files[%d] %q: listed twice", i, f.Name)
		}
		if f.Size < 0 {
			return fmt.Errorf("files[%d] %q: negative size", i, f.Name)
		}
		files[f.Name] = true
	}
	for _, n := range r.VMMFiles {
		if !files[n] {
			return fmt.Errorf("vmm file %q is not among the snapshot's checksummed files", n)
		}
	}
	if r.HasData && !files[filepath.Join("disks", DataDisk)] {
		return fmt.Errorf("hasData, but disks/%s is not among the snapshot's checksummed files", DataDisk)
	}
	if r.Disks.Data != "" {
		return fmt.Errorf("disks.dataDisk %q: a snapshot's data disk is its own disks/%s", r.Disks.Data, DataDisk)
	}
	given := store.Meta{Kernel: r.Kernel, Initrd: r.Initrd, Disks: r.Disks}.Files()
	if len(given) != len(r.Bases) {
		return fmt.Errorf("the record gives %d host files and fingerprints %d", len(given), len(r.Bases))
	}
	for _, f := range given {
		found := false
		for _, b := range r.Bases {
			found = found || b.Field == f.Field && b.Path == f.Path
		}
		if !found {
			return fmt.Errorf("its %s %s is not fingerprinted", f.Field, f.Path)
		}
		if !filepath.IsAbs(f.Path) || filepath.Clean(f.Path) != f.Path {
			return fmt.Errorf("its %s %q: not a clean absolute path", f.Field, f.Path)
		}
		if root, ok := r.DiskRoots[f.Field]; ok && !(root == "/" || strings.HasPrefix(f.Path, root+"/")) {
			return fmt.Errorf("its %s %s does not lie below its root %s", f.Field, f.Path, root)
		}
	}
	for field := range r.DiskRoots {
		found := false
		for _, f := range given {
			found = found || f.Field == field
		}
		if !found {
			return fmt.Errorf("diskRoots names %q, which the record does not give", field)
		}
	}
	return nil
}

// place writes rec into staging and renames staging into place: the
// record is written last, so a snapshot directory with a record is
// complete.
func (s *Store) place(staging string, rec Record) error {
	b, err := EncodeRecord(rec)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", rec.ID, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(staging, "snapshot.json"), b, 0o600); err != nil {
		return fmt.Errorf("snapshot %s: %w", rec.ID, err)
	}
	for _, d := range []string{filepath.Join(staging, "disks"), staging} {
		if err := atomicfile.SyncDir(d); err != nil {
			return fmt.Errorf("snapshot %s: %w", rec.ID, err)
		}
	}
	p := s.layout.Snapshot(rec.ID)
	// rename(2) replaces an empty directory but never a full one: a
	// committed snapshot is never overwritten (ENOTEMPTY is fs.ErrExist).
	if err := os.Rename(staging, p.Dir); err != nil {
		return fmt.Errorf("snapshot %s: %w", rec.ID, err)
	}
	if err := atomicfile.SyncDir(s.layout.SnapshotsDir()); err != nil {
		return fmt.Errorf("snapshot %s: %w", rec.ID, err)
	}
	return nil
}

// EncodeRecord is the content of snapshot.json for rec.
func EncodeRecord(rec Record) ([]byte, error) {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode record: %w", err)
	}
	return append(b, '\n'), nil
}

// DecodeRecord reads b, the content of a snapshot.json, as the record of
// snapshot sid: a record of another snapshot, or of a version this code
// cannot read, is refused.
func DecodeRecord(sid string, b []byte) (Record, error) {
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return Record{}, fmt.Errorf("snapshot %s: record: %w", sid, err)
	}
	if rec.Version != RecordVersion {
		return Record{}, fmt.Errorf("snapshot %s: record version %d; this mergen reads version %d", sid, rec.Version, RecordVersion)
	}
	if rec.ID != sid {
		return Record{}, fmt.Errorf("snapshot %s: its record is of snapshot %q", sid, rec.ID)
	}
	return rec, nil
}

// checksum reads a file's size and SHA-256.
func checksum(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return File{}, fmt.Errorf("%s: %w", path, err)
	}
	return File{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Get reads snapshot sid's record.
func (s *Store) Get(sid string) (Record, error) {
	if err := store.ValidateID(sid); err != nil {
		return Record{}, errdefs.NotFound("snapshot %q not found", sid)
	}
	b, err := os.ReadFile(s.layout.Snapshot(sid).Record)
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, errdefs.NotFound("snapshot %s not found", sid)
	}
	if err != nil {
		return Record{}, fmt.Errorf("snapshot %s: %w", sid, err)
	}
	return DecodeRecord(sid, b)
}

// Resolve finds a snapshot by id or by a unique prefix of at least 8
// characters.
func (s *Store) Resolve(ref string) (Record, error) {
	if store.ValidateID(ref) == nil {
		return s.Get(ref)
	}
	if len(ref) < 8 {
		return Record{}, errdefs.NotFound("snapshot %q not found (give its id or at least 8 characters of it)", ref)
	}
	ids, err := s.IDs()
	if err != nil {
		return Record{}, err
	}
	var match []string
	for _, id := range ids {
		if strings.HasPrefix(id, ref) {
			match = append(match, id)
		}
	}
	switch len(match) {
	case 0:
		return Record{}, errdefs.NotFound("snapshot %q not found", ref)
	case 1:
		return s.Get(match[0])
	}
	return Record{}, errdefs.Conflict("snapshot %q is ambiguous: %s", ref, strings.Join(match, ", "))
}

// IDs lists the committed snapshots' ids, sorted.
func (s *Store) IDs() ([]string, error) {
	entries, err := os.ReadDir(s.layout.SnapshotsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && store.ValidateID(e.Name()) == nil {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// List reads every snapshot's record, oldest first. One that cannot be
// read (being deleted) is left out.
func (s *Store) List() ([]Record, error) {
	ids, err := s.IDs()
	if err != nil {
		return nil, err
	}
	out := []Record{}
	for _, id := range ids {
		if rec, err := s.Get(id); err == nil {
			out = append(out, rec)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// Use holds snapshot sid for reading: its delete is refused until the
// returned release runs. It returns the record read under the hold.
func (s *Store) Use(ctx context.Context, sid string) (Record, func(), error) {
	p := s.layout.Snapshot(sid)
	l, err := lock.AcquireShared(ctx, p.Lock)
	if err != nil {
		return Record{}, nil, fmt.Errorf("snapshot %s: %w", sid, err)
	}
	rec, err := s.Get(sid)
	if err != nil {
		l.Release()
		return Record{}, nil, err
	}
	return rec, l.Release, nil
}

// Delete removes snapshot sid, unless a restore is reading it: then it
// answers a conflict, and the caller retries. VMs restored from it keep
// their own links or copies of its files.
func (s *Store) Delete(sid string) error {
	if _, err := s.Get(sid); err != nil {
		return err
	}
	p := s.layout.Snapshot(sid)
	if err := os.MkdirAll(filepath.Dir(p.Lock), 0o755); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", sid, err)
	}
	l, err := lock.Try(p.Lock)
	if errors.Is(err, lock.ErrBusy) {
		return errdefs.Conflict("snapshot %s is being read by a restore; delete it once that VM is created", sid)
	}
	if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", sid, err)
	}
	defer l.Release()
	trash := filepath.Join(s.layout.SnapshotsDir(), layout.TrashPrefix+sid+"-"+fmt.Sprint(time.Now().UnixNano()))
	if err := os.Rename(p.Dir, trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errdefs.NotFound("snapshot %s not found", sid)
		}
		return fmt.Errorf("delete snapshot %s: %w", sid, err)
	}
	atomicfile.SyncDir(s.layout.SnapshotsDir())
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", sid, err)
	}
	os.Remove(p.Lock)
	return nil
}

// Sweep removes what a crash left: staging and trash directories. Call it
// at daemon start, before any snapshot is taken.
func (s *Store) Sweep() error {
	entries, err := os.ReadDir(s.layout.SnapshotsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sweep snapshots: %w", err)
	}
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, layout.StagingPrefix) || strings.HasPrefix(n, layout.TrashPrefix) {
			if err := os.RemoveAll(filepath.Join(s.layout.SnapshotsDir(), n)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// verifiedKey is a file's identity: any write to it changes its ctime.
type verifiedKey struct {
	dev, ino    uint64
	size        int64
	mtime       int64
	ctime       int64
	sha256      string
	recordedFor string
}

// Verify checks that every file of rec is there with its recorded size and
// SHA-256, and that the shared read-only files are the ones the snapshot
// was taken with. A file checked once is not read again while its inode,
// size, mtime and ctime stay the same (any write changes its ctime), so
// restoring many VMs from one snapshot reads it once.
func (s *Store) Verify(rec Record) error {
	p := s.layout.Snapshot(rec.ID)
	for _, f := range rec.Files {
		path := filepath.Join(p.Dir, f.Name)
		fi, err := os.Stat(path)
		if err != nil {
			return errdefs.Conflict("snapshot %s: %s: %v", rec.ID, f.Name, err)
		}
		if fi.Size() != f.Size {
			return errdefs.Conflict("snapshot %s: %s is %d bytes, the snapshot recorded %d (truncated or replaced); delete the snapshot", rec.ID, f.Name, fi.Size(), f.Size)
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		var key verifiedKey
		if st != nil {
			key = verifiedKey{uint64(st.Dev), st.Ino, fi.Size(), fi.ModTime().UnixNano(), st.Ctim.Nano(), f.SHA256, rec.ID + "/" + f.Name}
			s.mu.Lock()
			ok := s.verified[key]
			s.mu.Unlock()
			if ok {
				continue
			}
		}
		got, err := checksum(path)
		if err != nil {
			return errdefs.Conflict("snapshot %s: %v", rec.ID, err)
		}
		if got.SHA256 != f.SHA256 {
			return errdefs.Conflict("snapshot %s: %s does not match its checksum (sha256 %s, recorded %s): the file is corrupted; delete the snapshot", rec.ID, f.Name, got.SHA256, f.SHA256)
		}
		if st != nil {
			s.mu.Lock()
			s.verified[key] = true
			s.mu.Unlock()
		}
	}
	for _, b := range rec.Bases {
		now, err := Fingerprint(b.Field, b.Path)
		if err != nil {
			return errdefs.Conflict("snapshot %s: its %s is gone: %v", rec.ID, b.Field, err)
		}
		if now != b {
			return errdefs.Conflict("snapshot %s: its %s %s changed since the snapshot was taken (size %d→%d, modified %s→%s): the guest's memory no longer matches it; take a new snapshot",
				rec.ID, b.Field, b.Path, b.Size, now.Size, time.Unix(0, b.ModNano).UTC().Format(time.RFC3339Nano), time.Unix(0, now.ModNano).UTC().Format(time.RFC3339Nano))
		}
	}
	return nil
}
