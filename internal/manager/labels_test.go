package manager_test

import (
	"context"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/wire"
)

// A routing tag's value is a forwarder label: a second VM may not take it,
// under the same key or another routing key, whatever its case.
func TestRoutingTagValuesAreUniqueAcrossVMs(t *testing.T) {
	h := newHost(t, nil)
	ctx := context.Background()
	shop, err := h.mgr.Create(ctx, wire.CreateRequest{Tags: map[string]string{"app": "shop"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tags := range []map[string]string{
		{"app": "shop"},
		{"app": "Shop"},
		{"name": "shop"},
	} {
		_, err := h.mgr.Create(ctx, wire.CreateRequest{Tags: tags})
		if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "already routes to vm "+shop.ID) {
			t.Errorf("create with tags %v: %v, want a conflict naming vm %s", tags, err, shop.ID)
		}
	}
	// Tags that are not routing tags are free-form.
	if _, err := h.mgr.Create(ctx, wire.CreateRequest{Tags: map[string]string{"x": "shop", "team": "shop"}}); err != nil {
		t.Errorf("a non-routing tag with a taken value was refused: %v", err)
	}
	// Once the owner is gone, the label is free again.
	if err := h.mgr.Delete(ctx, shop.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.mgr.Create(ctx, wire.CreateRequest{Tags: map[string]string{"name": "shop"}}); err != nil {
		t.Errorf("label of a deleted VM still taken: %v", err)
	}
}

// The short id names the VM's namespace and tap and is a forwarder label:
// a new VM whose id would share it with an existing VM gets another id.
func TestANewVMNeverSharesAnotherVMsShortID(t *testing.T) {
	h := newHost(t, nil)
	ids := []string{
		"0b6f4a2e-1111-4111-8111-111111111111",
		"0b6f4a2e-2222-4222-8222-222222222222", // same short id as the first
		"7c1d9e30-3333-4333-8333-333333333333",
	}
	manager.SetNewID(h.mgr, func() string { id := ids[0]; ids = ids[1:]; return id })
	ctx := context.Background()
	first, err := h.mgr.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := h.mgr.Create(ctx, wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if second.ID != "7c1d9e30-3333-4333-8333-333333333333" {
		t.Fatalf("second VM got id %s, want the next id after the colliding one", second.ID)
	}
	if second.Network.TapName != store.TapName(second.ID) || second.Network.Netns != store.NetnsName(second.ID) || second.Network.MAC == first.Network.MAC {
		t.Fatalf("names not derived from the new id: %+v", second.Network)
	}
	if h.store.Exists("0b6f4a2e-2222-4222-8222-222222222222") {
		t.Fatal("the colliding id was stored")
	}
}
