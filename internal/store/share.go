package store

import (
	"maps"
	"sync"
	"unique"
)

// The store keeps the records it decoded (Store.metas) for as long as
// their VMs exist, a thousand or more in one daemon, and much of a record
// is the same from one VM to the next: the driver's settings, the kernel
// and disk paths, their roots. Decoded for the cache, a record takes the
// one copy of each that the others hold, about 0.7 KB less per VM. A
// cached record is never modified (readers get a clone), so sharing is
// safe.

// shareCommon points m's strings that VMs usually have in common at
// their canonical copies. unique forgets a copy once nothing holds it, so
// a value that only one deleted VM had is not kept.
func (m *Meta) shareCommon() {
	for _, s := range []*string{
		&m.VMM, &m.Kernel, &m.Initrd, &m.Gateway, &m.Restart, &m.Snapshot,
		&m.Disks.Rootfs, &m.Disks.Agent, &m.Disks.Payload, &m.Disks.Env, &m.Disks.Data,
		&m.Driver.FirecrackerBin, &m.Driver.JailerBin, &m.Driver.JailerUID, &m.Driver.JailerGID,
		&m.Driver.ChrootBase, &m.Driver.QEMUBin, &m.Driver.QEMUMachine, &m.Driver.QEMUAccel,
	} {
		*s = canonical(*s)
	}
	for i := range m.Ports {
		m.Ports[i].Protocol = canonical(m.Ports[i].Protocol)
	}
	if m.Bridge != nil {
		m.Bridge.Name, m.Bridge.Netmask = canonical(m.Bridge.Name), canonical(m.Bridge.Netmask)
	}
}

func canonical(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}

// sharedRoots gives records with equal disk roots one map: the roots are
// the same for every VM whose disks came from the same places, and a
// small map costs about 300 bytes.
type sharedRoots struct {
	mu   sync.Mutex
	last map[string]string // of the last record decoded with roots
}

// share returns the map that equals roots: the last one handed out when
// equal, else roots itself (with its paths shared), which becomes it.
func (r *sharedRoots) share(roots map[string]string) map[string]string {
	if roots == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if maps.Equal(roots, r.last) {
		return r.last
	}
	for k, v := range roots {
		roots[k] = canonical(v)
	}
	r.last = roots
	return roots
}
