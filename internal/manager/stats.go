package manager

import (
	"context"
	"io/fs"
	"path/filepath"
	"syscall"

	"github.com/mergenhq/mergen/internal/proc"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmnet"
	"github.com/mergenhq/mergen/internal/wire"
)

// Stats reads what VM id uses now: its VMM's CPU time and resident memory
// (/proc), its tap's counters (netlink, in the VM's namespace) and the
// blocks its data directory takes. A stopped VM has only the last.
func (m *Manager) Stats(ctx context.Context, id string) (wire.Stats, error) {
	if err := store.ValidateID(id); err != nil {
		return wire.Stats{}, err
	}
	meta, err := m.store.ReadMeta(id)
	if err != nil {
		return wire.Stats{}, err
	}
	p := m.store.Paths(id)
	s := wire.Stats{ID: id, DiskBytes: allocated(p.DataDir)}
	vmmProc, err := proc.ReadPIDFile(p.PIDFile)
	if err != nil || !vmmProc.Alive() {
		return s, nil
	}
	s.Running, s.VMMPID = true, vmmProc.PID
	if u, err := proc.UsageOf(vmmProc.PID); err == nil {
		s.CPUSeconds, s.RSSBytes = u.CPUSeconds(), u.RSSBytes
	}
	if c, err := vmnet.Counters(meta.Netns, meta.TapName); err == nil {
		s.NetRxBytes, s.NetTxBytes, s.NetRxPackets, s.NetTxPackets = c.RxBytes, c.TxBytes, c.RxPackets, c.TxPackets
	}
	return s, nil
}

// allocated is the bytes of disk the files below dir take (sparse files
// count what they hold, not their size).
func allocated(dir string) int64 {
	var total int64
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	return total
}
