package manager

import (
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
	"github.com/mergenhq/mergen/internal/supervisor"
)

// A list answers from VM documents kept encoded between lists: decoding
// every record, building every document and encoding it again was most of
// the cost of listing many VMs, and almost none of it changes from one
// list to the next.
//
// A kept document is used only while both things it was built from are
// unchanged, and both are looked at on every list:
//   - the VM's record: the identity (filecache.Stat) of its meta.json, as
//     stat'ed before it was read. Every writer of a record (the store, the
//     start stage, the CLI, in any process) replaces it by rename, so a
//     changed record has another identity; one replaced after the stat
//     was read newer than its identity says, and is read again next time.
//   - its live part (live: service state, socket, pause marker,
//     accelerator, health), read again on every list, as documents always
//     were, and compared.
//
// The paths of a document are the layout's, which is fixed for a daemon's
// life. Kept documents are those of the last list: a VM deleted (by any
// process) is not listed and its document is dropped.

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
	paths     docPaths
	live      live
	json      []byte
}

// docPaths are the files a list looks at for each VM, built once per VM.
type docPaths struct {
	meta string
	livePaths
}

// listDocs are the kept documents by VM id.
type listDocs struct {
	mu sync.Mutex
	m  map[string]*listDoc
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

// ListJSON returns the document of every VM encoded as JSON, oldest
// first: what List returns, as encoding/json encodes it. The slices are
// shared with later lists: the caller must not modify them.
func (m *Manager) ListJSON(ctx context.Context) ([]json.RawMessage, error) {
	docs, err := m.listDocs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, len(docs))
	for i, d := range docs {
		out[i] = d.json
	}
	return out, nil
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
	var paths docPaths
	if kept != nil {
		paths = kept.paths
	} else {
		p := m.store.Paths(id)
		paths = docPaths{meta: p.Meta, livePaths: livePathsOf(p)}
	}
	record, err := filecache.Stat(paths.meta)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errdefs.NotFound("vm %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read record of vm %s: %w", id, err)
	}
	// Without a service manager the VMM is asked (documentWith), which
	// needs the whole record: that document is built anew each time.
	if kept != nil && svc.Available && record != (filecache.Identity{}) && record == kept.record {
		l := m.liveOf(id, kept.vmm, kept.hasCheck, paths.livePaths, svc, nil)
		if l == kept.live {
			return kept, nil
		}
	}
	meta, err := m.store.ReadMeta(id)
	if err != nil {
		return nil, err
	}
	v := m.documentWith(ctx, meta, svc, false)
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode document of vm %s: %w", id, err)
	}
	d := &listDoc{
		record: record, createdAt: meta.CreatedAt, id: id, vmm: meta.VMM,
		hasCheck: meta.HealthCheck != nil, usesPool: meta.Bridge == nil && meta.GuestIP != "",
		paths: paths, json: b,
		live: live{state: v.State, service: v.Service, vmm: v.VMMState, restarts: v.Restarts, health: v.Health},
	}
	if !svc.Available {
		d.record = filecache.Identity{} // never current: see above
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
