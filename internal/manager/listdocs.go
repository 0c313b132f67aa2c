package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/filecache"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/supervisor"
	"github.com/mergenhq/mergen/internal/vmm"
	"github.com/mergenhq/mergen/internal/wire"
)

// A list answers from VM documents kept encoded between lists: decoding
// every record, building every document and encoding it again was most of
// the cost of listing many VMs, and almost none of it changes from one
// list to the next.
//
// A kept document is used only while both things it was built from are
// unchanged, and both are looked at on every list:
//   - the VM's record: the identity (filecache.Stat) of its meta.json, as
//     stat'ed before it was read. Records are written only by the store
//     (Create, WriteFile: whichever process calls them), which replaces
//     them by rename, so a changed record has another identity (a file
//     rewritten in place by hand is seen too, unless with the same size
//     within one tick of the file system's clock: see filecache). One
//     replaced after the stat was read newer than its identity says, and
//     is read again next time.
//   - its live part (live: service state, socket, pause marker,
//     accelerator, health), read again on every list, as documents always
//     were, and compared.
//
// The paths of a document are the layout's, which is fixed for a daemon's
// life: they are not kept (about half of a document's bytes) but written
// from the VM's id into the answer (pathsJSON). Kept documents are those
// of the last list: a VM deleted (by any process) is not listed and its
// document is dropped.

// listDoc is one VM's list document, encoded, with what it was built
// from. Never modified once made: a list that finds one stale makes
// another, so lists running at once share them safely.
type listDoc struct {
	record    filecache.Identity // of meta.json, stat'ed before it was read
	createdAt time.Time
	id        string
	vmm       string // the record's VMM, for the accelerator
	hasCheck  bool   // the record has a health check
	usesPool  bool   // the VM has an address from the guest pool (metrics)
	live      live
	// json is the encoded document without its paths' value, which goes
	// at cut; cut < 0: the paths are in json (see pathsJSON).
	json []byte
	cut  int
}

// listDocs are the kept documents by VM id.
type listDocs struct {
	mu sync.Mutex
	m  map[string]*listDoc

	pathsOnce sync.Once
	paths     *pathsJSON
}

func (m *Manager) pathsJSON() *pathsJSON {
	m.docs.pathsOnce.Do(func() { m.docs.paths = newPathsJSON(m.store.Layout) })
	return m.docs.paths
}

// pathsKey begins a document's paths.
const pathsKey = `"paths":`

// pathsJSON writes the value of a document's paths from the VM's id: the
// layout's paths of a VM are the same pieces around its id, found once
// by encoding the paths of two placeholder ids. Ids are UUIDs (the store
// lists no other), which JSON takes as they are.
type pathsJSON struct {
	usable bool     // false: a root holds a placeholder; documents keep their paths
	pieces [][]byte // the value is pieces[0] id pieces[1] … id pieces[n]
	blank  []byte   // pathsKey and the value of empty paths, as encoded in a document
}

func newPathsJSON(l layout.Layout) *pathsJSON {
	const a, b = "00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"
	enc := func(id string) [][]byte {
		v, err := json.Marshal(wirePaths(l.VM(id)))
		if err != nil {
			return nil
		}
		return bytes.Split(v, []byte(id))
	}
	pj := &pathsJSON{pieces: enc(a)}
	blank, err := json.Marshal(wire.Paths{})
	if err != nil {
		return pj
	}
	pj.blank = append([]byte(pathsKey), blank...)
	other := enc(b)
	pj.usable = len(pj.pieces) > 1 && len(pj.pieces) == len(other)
	for i := range other {
		pj.usable = pj.usable && bytes.Equal(pj.pieces[i], other[i])
	}
	return pj
}

func (pj *pathsJSON) size(id string) int {
	n := (len(pj.pieces) - 1) * len(id)
	for _, p := range pj.pieces {
		n += len(p)
	}
	return n
}

func (pj *pathsJSON) append(dst []byte, id string) []byte {
	for i, p := range pj.pieces {
		if i > 0 {
			dst = append(dst, id...)
		}
		dst = append(dst, p...)
	}
	return dst
}

func (d *listDocs) get(id string) *listDoc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m[id]
}

// keep makes docs the kept documents, and only them.
func (d *listDocs) keep(docs []*listDoc) {
	m := make(map[string]*listDoc, len(docs))
	for _, doc := range docs {
		m[doc.id] = doc
	}
	d.mu.Lock()
	d.m = m
	d.mu.Unlock()
}

// EncodedVMs are the documents of a list, encoded as encoding/json
// encodes List's, oldest first.
type EncodedVMs struct {
	docs  []*listDoc
	paths *pathsJSON
}

// ListEncoded returns the document of every VM, encoded.
func (m *Manager) ListEncoded(ctx context.Context) (EncodedVMs, error) {
	docs, err := m.listDocs(ctx)
	if err != nil {
		return EncodedVMs{}, err
	}
	return EncodedVMs{docs: docs, paths: m.pathsJSON()}, nil
}

// Len is the number of VMs.
func (e EncodedVMs) Len() int { return len(e.docs) }

// Size is the length of document i.
func (e EncodedVMs) Size(i int) int {
	d := e.docs[i]
	if d.cut < 0 {
		return len(d.json)
	}
	return len(d.json) + e.paths.size(d.id)
}

// AppendDoc appends document i to dst.
func (e EncodedVMs) AppendDoc(dst []byte, i int) []byte {
	d := e.docs[i]
	if d.cut < 0 {
		return append(dst, d.json...)
	}
	dst = append(dst, d.json[:d.cut]...)
	dst = e.paths.append(dst, d.id)
	return append(dst, d.json[d.cut:]...)
}

// listDocs returns the current document of every VM, oldest first. A VM
// that cannot be read is logged and left out, as List does.
func (m *Manager) listDocs(ctx context.Context) ([]*listDoc, error) {
	ids, err := m.store.IDs()
	if err != nil {
		return nil, err
	}
	// One query of the service manager for all VMs, none per VM.
	states := map[string]supervisor.State{}
	if m.sup != nil {
		if states, err = m.sup.States(ctx, ids); err != nil {
			m.log.Debug("service states unavailable", "err", err)
		}
	}
	found := make([]*listDoc, len(ids))
	errs := make([]error, len(ids))
	inParts(len(ids), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			found[i], errs[i] = m.listDoc(ctx, ids[i], m.docs.get(ids[i]), states[ids[i]])
		}
	})
	docs := make([]*listDoc, 0, len(ids))
	for i, d := range found {
		switch {
		case errdefs.IsNotFound(errs[i]):
			errs[i] = nil // deleted while listing
		case errs[i] == nil:
			docs = append(docs, d)
		}
	}
	if err := errors.Join(errs...); err != nil {
		m.log.Warn("some VMs could not be read", "err", err)
	}
	m.docs.keep(docs)
	slices.SortFunc(docs, func(a, b *listDoc) int {
		if c := a.createdAt.Compare(b.createdAt); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	return docs, nil
}

// listDoc returns VM id's document from the service state svc: kept, the
// one the last list made (nil for none), while it is current.
func (m *Manager) listDoc(ctx context.Context, id string, kept *listDoc, svc supervisor.State) (*listDoc, error) {
	// Only these of the VM's paths: a list needs no more.
	metaFile, vmConfig, socket, paused := m.store.Layout.ListFiles(id)
	lp := livePaths{socket: socket, paused: paused}
	record, err := filecache.Stat(metaFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errdefs.NotFound("vm %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read record of vm %s: %w", id, err)
	}
	// Without a service manager a VMM whose socket is present is asked
	// (documentWith), which needs the whole record: that document is built
	// anew each time. One without a socket has nothing to ask, and its
	// document is kept as any other.
	if kept != nil && record != (filecache.Identity{}) && record == kept.record {
		accel, note := vmm.Accelerator(kept.vmm, vmConfig)
		l := m.liveOf(id, kept.hasCheck, accelerator{accel, note}, lp, svc, nil)
		if l == kept.live && (svc.Available || !l.vmm.SocketPresent) {
			return kept, nil
		}
	}
	meta, err := m.store.ReadMeta(id)
	if err != nil {
		return nil, err
	}
	v := m.documentWith(ctx, meta, svc, false)
	d := &listDoc{
		record: record, createdAt: meta.CreatedAt, id: id, vmm: meta.VMM,
		hasCheck: meta.HealthCheck != nil, usesPool: meta.Bridge == nil && meta.GuestIP != "",
		live: live{state: v.State, service: v.Service, vmm: v.VMMState, restarts: v.Restarts, health: v.Health},
		cut:  -1,
	}
	if !svc.Available && d.live.vmm.SocketPresent {
		d.record = filecache.Identity{} // never current: see above
	}
	// The paths are the layout's (they always are): kept without them.
	pj := m.pathsJSON()
	spliced := pj.usable && v.Paths == wirePaths(m.store.Paths(id))
	if spliced {
		v.Paths = wire.Paths{}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode document of vm %s: %w", id, err)
	}
	// The first `"paths":{` of a document is its paths: the fields before
	// them are numbers, fixed objects and strings, where a quote is escaped.
	if i := bytes.Index(b, pj.blank); spliced && i >= 0 {
		d.cut = i + len(pathsKey)
		d.json = make([]byte, 0, len(b)-len(pj.blank)+len(pathsKey))
		d.json = append(append(d.json, b[:d.cut]...), b[i+len(pj.blank):]...)
	} else {
		d.json = append([]byte(nil), b...) // kept: no spare capacity
	}
	return d, nil
}

// inParts runs f over [0, n) split into one part per processor, at once:
// what a list does for each VM is mostly system calls (stat), which
// another processor can make meanwhile. A short list is one part.
func inParts(n int, f func(lo, hi int)) {
	parts := min(runtime.GOMAXPROCS(0), n/minPart)
	if parts <= 1 {
		f(0, n)
		return
	}
	var wg sync.WaitGroup
	for p := 0; p < parts; p++ {
		lo, hi := n*p/parts, n*(p+1)/parts
		wg.Go(func() { f(lo, hi) })
	}
	wg.Wait()
}

// minPart is the fewest VMs worth a goroutine of their own in a list.
const minPart = 128
