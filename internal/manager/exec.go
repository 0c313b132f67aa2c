package manager

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/execclient"
	"github.com/mergenhq/mergen/internal/execproto"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/vmm"
)

// deliverTimeout bounds one delivery of the exec secret over the agent
// channel.
const deliverTimeout = 10 * time.Second

// deliveries serialises secret deliveries: QEMU's agent port takes one
// host at a time, and many sessions opened at once on a freshly booted VM
// would all find the secret missing.
var deliveries sync.Mutex

// ExecTarget is how to reach VM id's exec agent (docs/exec.md): inside the
// VM's network namespace at its guest address, with the VM's secret, which
// is handed to the guest over the VMM's agent channel when the guest does
// not have it yet. A VM whose guest is not running is a conflict.
func (m *Manager) ExecTarget(ctx context.Context, id string) (execclient.Target, error) {
	if err := store.ValidateID(id); err != nil {
		return execclient.Target{}, errdefs.Invalid("%v", err)
	}
	meta, err := m.store.ReadMeta(id)
	if err != nil {
		return execclient.Target{}, err
	}
	driver, err := vmm.New(meta.VMM, meta.Driver)
	if err != nil {
		return execclient.Target{}, fmt.Errorf("exec vm %s: %w", id, err)
	}
	// The service manager's view and the pause marker, not the VMM's
	// socket: QEMU's QMP takes one client at a time, and many sessions
	// open at once.
	p := m.store.Paths(id)
	svc := m.serviceState(ctx, id)
	if !svc.Active {
		word := svc.ActiveState
		if word == "" || word == "inactive" {
			word = "stopped"
		}
		return execclient.Target{}, errdefs.Conflict("vm %s is %s: exec and files need a running guest", id, word)
	}
	if _, err := os.Stat(p.Paused); err == nil {
		return execclient.Target{}, errdefs.Conflict("vm %s is paused: resume it first (exec and files need a running guest)", id)
	}
	if meta.GuestIP == "" {
		return execclient.Target{}, errdefs.Conflict("vm %s has no guest address to reach its exec agent at", id)
	}
	secret, err := execclient.EnsureSecret(p.AgentSecret)
	if err != nil {
		return execclient.Target{}, fmt.Errorf("exec vm %s: %w", id, err)
	}
	spec := store.Spec(meta, p)
	return execclient.Target{
		VM:     id,
		Netns:  meta.Netns,
		Addr:   net.JoinHostPort(meta.GuestIP, strconv.Itoa(execproto.Port)),
		Secret: secret,
		Deliver: func(ctx context.Context, s []byte) error {
			deliveries.Lock()
			defer deliveries.Unlock()
			ctx, cancel := context.WithTimeout(ctx, deliverTimeout)
			defer cancel()
			return vmm.CallAgent(ctx, driver, spec, agentproto.Request{Op: agentproto.OpSecret, Secret: s})
		},
	}, nil
}

// consoles are the VMs whose interactive console is attached: QEMU's
// socket takes one client at a time, and a second would wait unseen.
var consoles sync.Map // id → struct{}

// AttachConsole connects to VM id's interactive serial console; release
// lets the next one attach. A VM that is not running, or one attached
// already, is a conflict; a VMM without the console is unavailable.
func (m *Manager) AttachConsole(ctx context.Context, id string) (net.Conn, func(), error) {
	if err := store.ValidateID(id); err != nil {
		return nil, nil, errdefs.Invalid("%v", err)
	}
	meta, err := m.store.ReadMeta(id)
	if err != nil {
		return nil, nil, err
	}
	if svc := m.serviceState(ctx, id); !svc.Active {
		return nil, nil, errdefs.Conflict("vm %s is not running: the console needs a running guest", id)
	}
	driver, err := vmm.New(meta.VMM, meta.Driver)
	if err != nil {
		return nil, nil, fmt.Errorf("console vm %s: %w", id, err)
	}
	if _, busy := consoles.LoadOrStore(id, struct{}{}); busy {
		return nil, nil, errdefs.Conflict("vm %s: its console is attached already (one at a time)", id)
	}
	release := func() { consoles.Delete(id) }
	conn, err := driver.Console(ctx, store.Spec(meta, m.store.Paths(id)))
	if err != nil {
		release()
		return nil, nil, err
	}
	return conn, release, nil
}
