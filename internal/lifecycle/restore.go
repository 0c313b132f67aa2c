package lifecycle

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
	"github.com/mergenhq/mergen/internal/execclient"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
)

// restoreSpec is the VM's spec, with Restore set while the VM's restore
// directory holds a snapshot its first start has not consumed yet.
func restoreSpec(m store.Meta, p layout.VM) vmm.Spec {
	spec := store.Spec(m, p)
	if fi, err := os.Stat(p.RestoreDir); err == nil && fi.IsDir() {
		spec.Restore = &vmm.Restore{Dir: p.RestoreDir}
	}
	return spec
}

// restored finishes a start from a snapshot: the VMM runs the snapshot's
// guest, which still believes it is the snapshot's VM. The agent in the
// guest is told the VM's own identity (address, MAC, hostname, extraEnv)
// with the host's clock and fresh entropy; only then is the restore
// consumed (its directory removed), so a later start boots the VM's disks.
// A guest that cannot be told fails the start: a VM must not run on with
// another VM's identity.
func (r *Runner) restored(ctx context.Context, driver vmm.Driver, spec vmm.Spec, m store.Meta) error {
	if err := driver.Restored(ctx, spec); err != nil {
		return err
	}
	id, err := identity(m, r.Store.Paths(m.ID).AgentSecret)
	if err != nil {
		return err
	}
	err = tellUntilTaken(ctx, driver, spec, func() agentproto.Request {
		id.UnixNano = time.Now().UnixNano() // a restored guest's clock is the snapshot's
		return agentproto.Request{Op: agentproto.OpIdentity, Identity: &id}
	})
	if err != nil {
		return fmt.Errorf("restore: the guest's agent did not take the VM's identity: %w", err)
	}
	r.Log.Info("restored from snapshot", "vm", m.ID, "snapshot", m.Snapshot, "guestIP", m.GuestIP)
	if err := os.RemoveAll(spec.Restore.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restore: consume %s: %w", spec.Restore.Dir, err)
	}
	return nil
}

// identity is what a restored guest must take on to be VM m, its exec
// agent's secret (kept at secretPath, made when missing) included: the
// snapshot's guest holds the source VM's, which must not open this one.
func identity(m store.Meta, secretPath string) (agentproto.Identity, error) {
	id := agentproto.Identity{Hostname: store.Hostname(m), Device: "eth0", MAC: m.MAC, Gateway: m.Gateway, Env: m.ExtraEnv}
	if m.GuestIP != "" {
		ip, err := netip.ParseAddr(m.GuestIP)
		if err != nil {
			return id, fmt.Errorf("restore: guest address %q: %w", m.GuestIP, err)
		}
		id.Addr = netip.PrefixFrom(ip, m.PrefixLen).String()
	}
	id.Entropy = make([]byte, 64)
	if _, err := rand.Read(id.Entropy); err != nil {
		return id, fmt.Errorf("restore: entropy: %w", err)
	}
	secret, err := execclient.EnsureSecret(secretPath)
	if err != nil {
		return id, fmt.Errorf("restore: %w", err)
	}
	id.Secret = secret
	return id, nil
}
