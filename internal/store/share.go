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
// small map costs about 300 bytes. It remembers the few maps handed out
// last, not all of them: records are decoded concurrently and in no set
// order, so hosts with two or three disk sources would otherwise see the
// maps alternate, and a bounded list forgets the roots of deleted VMs.
type sharedRoots struct {
	mu     sync.Mutex
	recent [8]map[string]string // most recently handed out first
}

// share returns the remembered map that equals roots, else roots itself
// (with its paths shared), which is remembered in place of the oldest.
func (r *sharedRoots) share(roots map[string]string) map[string]string {
	if roots == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, m := range r.recent {
		if m != nil && maps.Equal(roots, m) {
			copy(r.recent[1:i+1], r.recent[:i])
			r.recent[0] = m
			return m
		}
	}
	for k, v := range roots {
		roots[k] = canonical(v)
	}
	copy(r.recent[1:], r.recent[:len(r.recent)-1])
	r.recent[0] = roots
	return roots
}
