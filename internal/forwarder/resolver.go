package forwarder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mergenhq/mergen/internal/health"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/store"
)

// minPrefixLen is the shortest id prefix that selects a VM: the 8-character
// short id that also names the VM's namespace and tap. Shorter prefixes are
// too likely to collide with tag values such as "app".
const minPrefixLen = 8

// Resolution failures. ErrNotFound maps to 404, ErrAmbiguous to 409.
var (
	ErrNotFound  = errors.New("no VM for label")
	ErrAmbiguous = errors.New("label matches more than one VM")
)

// AmbiguousError names the VMs a label matched and how.
type AmbiguousError struct {
	Label string
	By    string // "id prefix" or "tag value"
	IDs   []string
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("label %q matches %d VMs by %s: %s", e.Label, len(e.IDs), e.By, strings.Join(e.IDs, ", "))
}

func (e *AmbiguousError) Unwrap() error { return ErrAmbiguous }

// Target is where one VM's HTTP traffic goes. Problem is non-empty when the
// VM was found but cannot be reached (no httpPort, bad address, bad
// namespace name); the proxy answers 502 with it.
type Target struct {
	ID        string
	Addr      netip.AddrPort
	NetnsPath string // empty: dial in the forwarder's own namespace (bridge mode)
	Problem   string
}

// index is an immutable snapshot of the config root. Lookups never touch
// the file system.
type index struct {
	built time.Time
	// rootMod is the config root's modification time when the index was
	// built: a VM directory renamed in or out changes it.
	rootMod time.Time
	byID    map[string]*Target
	ids     []string // sorted, for prefix search
	byTag   map[string][]*Target
	files   map[string]fileStamp // per VM dir, to skip re-parsing unchanged meta.json
}

type fileStamp struct {
	mod    time.Time
	size   int64
	target *Target
	tags   []string
}

// Resolver maps labels to VMs from the meta.json files under a config root.
// It keeps an index rebuilt at most once per TTL: a hit on a stale index is
// answered at once and refreshes in the background; a miss refreshes first
// when the index is stale or the config root changed since it was built (a
// VM directory renamed in or out), so a VM created a moment ago is found on
// its first try. Changes to an existing VM are seen after the TTL.
type Resolver struct {
	configRoot string
	netnsRoot  string
	labelTags  []string // tag keys whose values are labels
	ttl        time.Duration
	log        *slog.Logger
	now        func() time.Time

	cur       atomic.Pointer[index]
	rebuildMu sync.Mutex
	bgRunning atomic.Bool

	health sync.Map // VM id → healthStamp
}

// healthStamp is a VM's health status as read from its health file of
// that modification time and size.
type healthStamp struct {
	mod    time.Time
	size   int64
	status string
}

// NewResolver returns a resolver; it reads nothing until the first lookup
// or Refresh. Besides ids and unique id prefixes, the values of the tags
// labelTags name route to their VM (FWD_LABEL_TAGS); other tags are not
// labels, so no tag a VM chooses can shadow another VM's hostname.
func NewResolver(configRoot, netnsRoot string, labelTags []string, ttl time.Duration, log *slog.Logger) *Resolver {
	return &Resolver{configRoot: configRoot, netnsRoot: netnsRoot, labelTags: labelTags, ttl: ttl, log: log, now: time.Now}
}

// Refresh rebuilds the index now.
func (r *Resolver) Refresh(ctx context.Context) error {
	r.rebuildMu.Lock()
	defer r.rebuildMu.Unlock()
	return r.rebuildLocked(ctx)
}

// Size is the number of VMs in the current index.
func (r *Resolver) Size() int {
	if idx := r.cur.Load(); idx != nil {
		return len(idx.byID)
	}
	return 0
}

// Resolve finds the VM for a label (already validated by Domain.Label).
// Precedence: full id, then id prefix of at least 8 characters (the short
// id), then tag value. A prefix or tag value shared by several VMs is an
// *AmbiguousError; a later rule is never consulted to break the tie.
func (r *Resolver) Resolve(ctx context.Context, label string) (*Target, error) {
	idx := r.cur.Load()
	stale := idx == nil || r.now().Sub(idx.built) >= r.ttl
	if idx != nil {
		t, err := idx.lookup(label)
		// A miss on a fresh index is final unless a VM directory came or
		// went since: one stat, on misses only.
		if err == nil || !errors.Is(err, ErrNotFound) || (!stale && !r.rootChanged(idx)) {
			if stale {
				r.refreshInBackground()
			}
			return t, err
		}
	}
	// Miss (or no index yet) on a stale index: refresh, unless another
	// caller did while we waited for the lock.
	r.rebuildMu.Lock()
	if cur := r.cur.Load(); cur == nil || r.now().Sub(cur.built) >= r.ttl || r.rootChanged(cur) {
		if err := r.rebuildLocked(ctx); err != nil {
			r.rebuildMu.Unlock()
			return nil, err
		}
	}
	r.rebuildMu.Unlock()
	return r.cur.Load().lookup(label)
}

// rootChanged reports whether a VM was created or deleted since idx was
// built: one stat of the config root. A VM created a moment after the last
// rebuild (one restored from a snapshot answers within a second) is thus
// found on its first request, not only after the TTL.
func (r *Resolver) rootChanged(idx *index) bool {
	st, err := os.Stat(r.configRoot)
	return err == nil && !st.ModTime().Equal(idx.rootMod)
}

func (r *Resolver) refreshInBackground() {
	if !r.bgRunning.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer r.bgRunning.Store(false)
		if err := r.Refresh(context.Background()); err != nil {
			r.log.Warn("resolver refresh failed", "configRoot", r.configRoot, "err", err)
		}
	}()
}

func (idx *index) lookup(label string) (*Target, error) {
	if t, ok := idx.byID[label]; ok {
		return t, nil
	}
	if len(label) >= minPrefixLen {
		i := sort.SearchStrings(idx.ids, label)
		var hits []string
		for ; i < len(idx.ids) && strings.HasPrefix(idx.ids[i], label); i++ {
			hits = append(hits, idx.ids[i])
			if len(hits) > 8 { // enough to name the ambiguity
				break
			}
		}
		switch len(hits) {
		case 0:
		case 1:
			return idx.byID[hits[0]], nil
		default:
			return nil, &AmbiguousError{Label: label, By: "id prefix", IDs: hits}
		}
	}
	switch ts := idx.byTag[label]; len(ts) {
	case 0:
		return nil, fmt.Errorf("%w %q", ErrNotFound, label)
	case 1:
		return ts[0], nil
	default:
		ids := make([]string, 0, len(ts))
		for _, t := range ts {
			ids = append(ids, t.ID)
		}
		sort.Strings(ids)
		return nil, &AmbiguousError{Label: label, By: "tag value", IDs: ids}
	}
}

// rebuildLocked scans the config root. A VM whose meta.json is unchanged
// (same size and modification time) keeps its parsed entry.
func (r *Resolver) rebuildLocked(ctx context.Context) error {
	var rootMod time.Time
	if st, err := os.Stat(r.configRoot); err == nil {
		rootMod = st.ModTime()
	}
	entries, err := os.ReadDir(r.configRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("resolver: read config root %s: %w", r.configRoot, err)
	}
	var prev map[string]fileStamp
	if old := r.cur.Load(); old != nil {
		prev = old.files
	}
	next := &index{
		byID:  make(map[string]*Target, len(entries)),
		byTag: make(map[string][]*Target),
		files: make(map[string]fileStamp, len(entries)),
	}
	for _, e := range entries {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		name := e.Name()
		// Dot directories are the store's temporary and trash areas.
		if strings.HasPrefix(name, ".") || !e.IsDir() {
			continue
		}
		path := filepath.Join(r.configRoot, name, store.FileMeta)
		st, err := os.Stat(path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				r.log.Warn("skipping VM: cannot stat meta.json", "vm", name, "err", err)
			}
			continue
		}
		fs, ok := prev[name]
		if !ok || !fs.mod.Equal(st.ModTime()) || fs.size != st.Size() {
			fs, err = r.load(name, path)
			if err != nil {
				r.log.Warn("skipping VM: unusable meta.json", "vm", name, "path", path, "err", err)
				continue
			}
			fs.mod, fs.size = st.ModTime(), st.Size()
		}
		next.files[name] = fs
		next.byID[fs.target.ID] = fs.target
		for _, tag := range fs.tags {
			next.byTag[tag] = append(next.byTag[tag], fs.target)
		}
	}
	next.ids = make([]string, 0, len(next.byID))
	for id := range next.byID {
		next.ids = append(next.ids, id)
	}
	sort.Strings(next.ids)
	next.built, next.rootMod = r.now(), rootMod
	r.cur.Store(next)
	return nil
}

// maxMetaSize bounds what one meta.json may cost to read.
const maxMetaSize = 1 << 20

func (r *Resolver) load(dir, path string) (fileStamp, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileStamp{}, err
	}
	defer f.Close()
	var m store.Meta
	dec := json.NewDecoder(&limitedReader{r: f, n: maxMetaSize})
	if err := dec.Decode(&m); err != nil {
		return fileStamp{}, fmt.Errorf("decode: %w", err)
	}
	if m.ID == "" {
		return fileStamp{}, errors.New("field id is empty")
	}
	if m.ID != dir {
		return fileStamp{}, fmt.Errorf("field id %q does not match its directory %q", m.ID, dir)
	}
	t := &Target{ID: strings.ToLower(m.ID)}
	t.Problem = r.fillAddr(t, &m)
	var tags []string
	seen := map[string]bool{}
	for _, k := range r.labelTags {
		v, ok := m.Tags[k]
		if !ok {
			continue
		}
		v = strings.ToLower(v)
		// A tag value that is not a DNS label can never arrive as SNI.
		if checkLabel(v) != nil || seen[v] {
			continue
		}
		seen[v] = true
		tags = append(tags, v)
	}
	return fileStamp{target: t, tags: tags}, nil
}

// fillAddr sets the dial address and namespace, or says why there is none.
func (r *Resolver) fillAddr(t *Target, m *store.Meta) string {
	if m.HTTPPort <= 0 || m.HTTPPort > 65535 {
		return fmt.Sprintf("vm %s has no usable httpPort (%d)", m.ID, m.HTTPPort)
	}
	ip, err := netip.ParseAddr(m.GuestIP)
	if err != nil {
		return fmt.Sprintf("vm %s has no usable guestIP (%q)", m.ID, m.GuestIP)
	}
	t.Addr = netip.AddrPortFrom(ip.Unmap(), uint16(m.HTTPPort))
	if m.Netns == "" {
		return ""
	}
	if strings.ContainsAny(m.Netns, "/\x00") || m.Netns == "." || strings.Contains(m.Netns, "..") {
		return fmt.Sprintf("vm %s: netns %q is not a plain name under the namespace root", m.ID, m.Netns)
	}
	t.NetnsPath = filepath.Join(r.netnsRoot, m.Netns)
	return ""
}

type limitedReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("meta.json larger than %d bytes", maxMetaSize)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// Health is the status of VM id's health check (internal/health): starting,
// ready or unhealthy, or "" for a VM without one (or that is not running).
// It costs one stat of the VM's health file; the file is read again only
// when it changed.
func (r *Resolver) Health(id string) string {
	path := layout.Layout{ConfigRoot: r.configRoot}.VM(id).Health
	st, err := os.Stat(path)
	if err != nil {
		r.health.Delete(id)
		return ""
	}
	if v, ok := r.health.Load(id); ok {
		if hs := v.(healthStamp); hs.mod.Equal(st.ModTime()) && hs.size == st.Size() {
			return hs.status
		}
	}
	hst, err := health.Read(path)
	if err != nil {
		r.log.Debug("health file unreadable", "vm", id, "err", err)
		return ""
	}
	r.health.Store(id, healthStamp{mod: st.ModTime(), size: st.Size(), status: hst.Status})
	return hst.Status
}
