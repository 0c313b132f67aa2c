package manager_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/wire"
)

// A create's answer is made from what the create wrote, without asking the
// service manager or reading the VM back: it is the document a GET gives
// right after, for either VMM, with or without a supervisor.
func TestTheCreateAnswerIsWhatAGetSaysAfter(t *testing.T) {
	hosts := map[string]func(t *testing.T) *manager.Manager{
		"no supervisor":       func(t *testing.T) *manager.Manager { return newHost(t, map[string]string{"MGR_VMM": "qemu"}).mgr },
		"detached supervisor": func(t *testing.T) *manager.Manager { return newListHost(t).mgr },
	}
	for hostName, newManager := range hosts {
		for _, vmmName := range []string{"qemu", "firecracker"} {
			t.Run(hostName+", "+vmmName, func(t *testing.T) {
				ctx := context.Background()
				mgr := newManager(t)
				created, err := mgr.Create(ctx, wire.CreateRequest{
					VMM:   vmmName,
					Tags:  map[string]string{"name": "web-" + vmmName},
					Ports: []wire.Port{{Guest: 80, Protocol: "tcp"}},
				})
				if err != nil {
					t.Fatal(err)
				}
				if created.VMMState.Accelerator == "" {
					t.Errorf("the answer names no accelerator: %+v", created.VMMState)
				}
				got, err := mgr.Get(ctx, created.ID)
				if err != nil {
					t.Fatal(err)
				}
				a, _ := json.Marshal(created)
				b, _ := json.Marshal(got)
				if string(a) != string(b) {
					t.Fatalf("the create's answer differs from a GET's right after:\ncreate %s\nget    %s", a, b)
				}
			})
		}
	}
}

// bootArgs, extraEnv and argv each within their limits can still make a
// kernel command line Firecracker would refuse at boot: the create is
// refused instead, naming them, and leaves nothing behind.
func TestACommandLineFirecrackerWouldRefuseIsRefusedAtCreate(t *testing.T) {
	h := newHost(t, nil)
	_, err := h.mgr.Create(context.Background(), wire.CreateRequest{
		VMM:      "firecracker",
		BootArgs: "quiet " + strings.Repeat("a", 1000),
		ExtraEnv: map[string]string{"CONFIG": strings.Repeat("x", 350)}, // still on the command line
		Argv:     []string{"/bin/app", strings.Repeat("y", 350)},
	})
	if !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "bootArgs, extraEnv and argv") {
		t.Fatalf("create = %v; want it refused as invalid, naming bootArgs, extraEnv and argv", err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Fatalf("the refused create left %v", left)
	}
}
