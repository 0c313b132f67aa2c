package manager_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/manager"
	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/wire"
)

// failingHook is a hooks document with one strict command hook for event
// that fails.
func failingHook(event string) json.RawMessage {
	return json.RawMessage(`{"` + event + `":[{"command":["/bin/sh","-c","echo hook says no >&2; exit 7"],"strict":true}]}`)
}

// allowCommands is the environment of a host whose operator accepts command
// hooks in create requests.
var allowCommands = map[string]string{"MGR_ALLOW_VM_COMMAND_HOOKS": "1"}

// A command hook in a create request runs as the daemon's user: refused,
// naming the field, unless the operator allows it; nothing is kept.
func TestCommandHooksInACreateNeedTheOperatorsConsent(t *testing.T) {
	h := newHost(t, nil)
	_, err := h.mgr.Create(context.Background(), wire.CreateRequest{Hooks: failingHook("onCreate")})
	if !errdefs.IsInvalid(err) || !contains(err.Error(), "hooks.onCreate[0].command: command hooks in API requests are disabled", "MGR_ALLOW_VM_COMMAND_HOOKS=1") {
		t.Fatalf("Create with a command hook = %v; want invalid, naming the field and the setting", err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Fatalf("the refused create left %v", left)
	}
	allowed := newHost(t, allowCommands)
	if _, err := allowed.mgr.Create(context.Background(), wire.CreateRequest{Hooks: json.RawMessage(`{"onCreate":[{"command":["/bin/true"]}]}`)}); err != nil {
		t.Fatalf("Create with a command hook where they are allowed = %v", err)
	}
	_, err = allowed.mgr.Create(context.Background(), wire.CreateRequest{Hooks: json.RawMessage(`{"onCreate":[{"command":["true"]}]}`)})
	if !errdefs.IsInvalid(err) || !contains(err.Error(), `hooks.onCreate[0].command: "true" must be an absolute path`) {
		t.Fatalf("Create with a relative command = %v; want invalid, naming the field", err)
	}
}

// Without a service manager a VM cannot run: start, stop and restart answer
// unavailable with the reason, and the VM stays as it was.
func TestStartStopWithoutAServiceManagerAreUnavailable(t *testing.T) {
	h := newHost(t, nil)
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ops := map[string]func(context.Context, string) error{"start": h.mgr.Start, "stop": h.mgr.Stop, "restart": h.mgr.Restart}
	for name, op := range ops {
		err := op(context.Background(), vm.ID)
		if !errdefs.IsUnavailable(err) || !contains(err.Error(), vm.ID, errNoSupervisor.Error()) {
			t.Errorf("%s = %v; want unavailable naming the VM and the reason", name, err)
		}
	}
	got, err := h.mgr.Get(context.Background(), vm.ID)
	if err != nil || got.Service.Available {
		t.Fatalf("Get after the refused operations = %+v, %v; want the VM, service unavailable", got.Service, err)
	}
}

// Operations on a VM that does not exist are not found; on something that
// is not an id at all, invalid, before any path is built from it.
func TestOperationsOnUnknownOrMalformedIDs(t *testing.T) {
	h := newHost(t, nil)
	unknown := store.NewID()
	ops := map[string]func(context.Context, string) error{
		"start": h.mgr.Start, "stop": h.mgr.Stop, "restart": h.mgr.Restart, "delete": h.mgr.Delete,
		"get": func(ctx context.Context, id string) error { _, err := h.mgr.Get(ctx, id); return err },
	}
	for name, op := range ops {
		if err := op(context.Background(), unknown); !errdefs.IsNotFound(err) {
			t.Errorf("%s of an unknown VM = %v; want not found", name, err)
		}
		for _, bad := range []string{"../../etc", "web", unknown + "/..", "3F0C2B1E-7A4D-4E5F-9B6A-1C2D3E4F5A6B"} {
			if err := op(context.Background(), bad); !errdefs.IsInvalid(err) {
				t.Errorf("%s(%q) = %v; want invalid", name, bad, err)
			}
		}
	}
	if _, err := h.mgr.FindByName(context.Background(), "web"); !errdefs.IsNotFound(err) {
		t.Errorf("FindByName of an unused name = %v; want not found", err)
	}
}

// A best-effort onCreate hook that fails does not fail the create.
func TestAFailingBestEffortHookDoesNotFailTheCreate(t *testing.T) {
	h := newHost(t, allowCommands)
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{
		Hooks: json.RawMessage(`{"onCreate":[{"command":["/bin/false"]}]}`),
	})
	if err != nil || !h.store.Exists(vm.ID) {
		t.Fatalf("Create with a failing best-effort hook = %v; want the VM created", err)
	}
}

// The onCreate hooks see the VM as created: its id and guest address in
// the environment, the whole event on stdin.
func TestOnCreateHooksReceiveTheVM(t *testing.T) {
	h := newHost(t, allowCommands)
	out := h.dir + "/hook.out"
	hooksDoc, _ := json.Marshal(map[string]any{"onCreate": []any{map[string]any{
		"command": []string{"/bin/sh", "-c", `{ echo "$MERGEN_EVENT $MERGEN_VM_ID $MERGEN_VM_GUEST_IP"; cat; } > "$OUT"`},
		"env":     map[string]string{"OUT": out},
		"strict":  true,
	}}})
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{Hooks: hooksDoc, Tags: map[string]string{"name": "hooked"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !contains(string(b), "onCreate "+vm.ID+" "+vm.Network.GuestIP+"\n", `"vmId":"`+vm.ID+`"`, `"name":"hooked"`) {
		t.Fatalf("the hook saw %q; want the event, the VM's id and address, and the event document on stdin", b)
	}
}

// A strict onDelete hook that fails vetoes the delete: unavailable, naming
// the hook and its exit status but not its output, and the VM is kept
// whole. The hook was accepted at create: it still runs after the operator
// stops accepting command hooks in requests.
func TestAStrictOnDeleteHookVetoesTheDelete(t *testing.T) {
	h := newHost(t, allowCommands)
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{Hooks: failingHook("onDelete")})
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	cfg := h.cfg
	cfg.AllowVMCommands = false
	h.mgr = manager.New(manager.Options{Config: cfg, Store: h.store, SupervisorErr: errNoSupervisor, Log: slog.New(slog.NewTextHandler(&log, nil))})
	err = h.mgr.Delete(context.Background(), vm.ID)
	if !errdefs.IsUnavailable(err) || !contains(err.Error(), vm.ID, "onDelete hook 0", "command /bin/sh", "exit status 7") || contains(err.Error(), "hook says no") {
		t.Fatalf("Delete = %v; want unavailable naming the VM, the hook and its exit status, without its output", err)
	}
	if !contains(log.String(), "hook says no") {
		t.Fatalf("the daemon log lacks the hook's output:\n%s", log.String())
	}
	if _, err := h.mgr.Get(context.Background(), vm.ID); err != nil {
		t.Fatalf("the VM is gone after a vetoed delete: %v", err)
	}
	next, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
	if err != nil || next.Network.GuestIP == vm.Network.GuestIP {
		t.Fatalf("next create got %s (%v); the vetoed VM still holds %s", next.Network.GuestIP, err, vm.Network.GuestIP)
	}
}

// Delete runs the lifecycle's delete stage, whose hooks (here the host's
// MGN_LIFECYCLE_PRE_DELETE_HOOKS, commands separated by ";") may refuse; a
// refusal keeps the VM whole, its address included, and the error names
// the hook and its exit status; its output goes to the log only.
func TestADeleteStageThatFailsKeepsTheVM(t *testing.T) {
	h := newHost(t, map[string]string{"MGN_LIFECYCLE_PRE_DELETE_HOOKS": "echo backup of $VM_ID failed >&2 && exit 3"})
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{Tags: map[string]string{"name": "keep"}})
	if err != nil {
		t.Fatal(err)
	}
	err = h.mgr.Delete(context.Background(), vm.ID)
	if err == nil || !contains(err.Error(), "preDelete hook of vm "+vm.ID, "MGN_LIFECYCLE_PRE_DELETE_HOOKS[0]", "exit status 3") || contains(err.Error(), "backup of") {
		t.Fatalf("Delete = %v; want the delete stage's failure naming the hook and its status, without its output", err)
	}
	if got, err := h.mgr.Get(context.Background(), vm.ID); err != nil || got.Network.GuestIP != vm.Network.GuestIP {
		t.Fatalf("after the refused delete: %+v, %v; want the VM unchanged", got.Network, err)
	}
	if _, err := h.mgr.Create(context.Background(), wire.CreateRequest{Tags: map[string]string{"name": "keep"}}); !errdefs.IsConflict(err) {
		t.Fatalf("create with the kept VM's name = %v; want a conflict", err)
	}
}

// Deleting a VM that never started removes its files and frees its address,
// ports and name for the next create.
func TestDeleteFreesWhatTheVMHeld(t *testing.T) {
	h := newHost(t, nil)
	first, err := h.mgr.Create(context.Background(), wire.CreateRequest{Tags: map[string]string{"name": "web"}, Ports: []wire.Port{{Guest: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	second, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.mgr.Delete(context.Background(), first.ID); err != nil {
		t.Fatalf("Delete of a VM that never started: %v", err)
	}
	if _, err := h.mgr.Get(context.Background(), first.ID); !errdefs.IsNotFound(err) {
		t.Errorf("Get after delete = %v; want not found", err)
	}
	p := h.store.Paths(first.ID)
	for _, path := range []string{p.ConfigDir, p.RunDir, p.DataDir, p.Lock, p.StageLock} {
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("%s still exists after delete (%v)", path, err)
		}
	}
	if err := h.mgr.Delete(context.Background(), first.ID); !errdefs.IsNotFound(err) {
		t.Errorf("second delete = %v; want not found", err)
	}
	port := first.Network.Ports[0].Host
	third, err := h.mgr.Create(context.Background(), wire.CreateRequest{Tags: map[string]string{"name": "web"}, Ports: []wire.Port{{Guest: 80, Host: port}}})
	if err != nil {
		t.Fatalf("create with the deleted VM's name and port: %v", err)
	}
	if third.Network.GuestIP != first.Network.GuestIP || third.Network.GuestIP == second.Network.GuestIP {
		t.Errorf("next create got %s; want the freed %s", third.Network.GuestIP, first.Network.GuestIP)
	}
}

// A strict onCreate hook that fails undoes the create: unavailable, nothing
// on disk, and the address, port and name are free again.
func TestAStrictOnCreateHookFailureRollsTheCreateBack(t *testing.T) {
	h := newHost(t, allowCommands)
	port := freePort(t)
	req := wire.CreateRequest{Tags: map[string]string{"name": "web"}, Ports: []wire.Port{{Guest: 80, Host: port}}}
	req.Hooks = failingHook("onCreate")
	_, err := h.mgr.Create(context.Background(), req)
	if !errdefs.IsUnavailable(err) || !contains(err.Error(), "onCreate hook 0", "exit status 7") || contains(err.Error(), "hook says no") {
		t.Fatalf("Create = %v; want unavailable with the hook's failure, without its output", err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Fatalf("the rolled back create left %v", left)
	}
	req.Hooks = nil
	vm, err := h.mgr.Create(context.Background(), req)
	if err != nil {
		t.Fatalf("create with the same name and port after the roll back: %v", err)
	}
	if vm.Network.GuestIP != "172.30.0.2" {
		t.Errorf("guest IP %s after the roll back, want the first address 172.30.0.2 again", vm.Network.GuestIP)
	}
}

// autoStart without a service manager cannot start the VM: the create is
// unavailable and keeps nothing.
func TestAutoStartWithoutAServiceManagerKeepsNothing(t *testing.T) {
	h := newHost(t, nil)
	_, err := h.mgr.Create(context.Background(), wire.CreateRequest{AutoStart: true, Tags: map[string]string{"name": "auto"}})
	if !errdefs.IsUnavailable(err) || !contains(err.Error(), errNoSupervisor.Error()) {
		t.Fatalf("Create with autoStart = %v; want unavailable with the reason", err)
	}
	if left := h.leftovers(t); len(left) > 0 {
		t.Fatalf("the failed autoStart left %v", left)
	}
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{Tags: map[string]string{"name": "auto"}})
	if err != nil || vm.Network.GuestIP != "172.30.0.2" {
		t.Fatalf("next create = %s, %v; want the name and the first address free again", vm.Network.GuestIP, err)
	}
}

// A create answers with the VM as a GET of it answers right after, field
// for field, whatever the request set or left out.
func TestACreatesAnswerIsTheVMAsAGetSeesIt(t *testing.T) {
	h := newHost(t, nil)
	data := h.disk(t, "data.ext4")
	requests := map[string]wire.CreateRequest{
		"empty": {},
		"everything": {
			VCPU: 2, MemMiB: 256, DataDisk: data,
			Ports:       []wire.Port{{Guest: 80}, {Guest: 53, Protocol: "udp"}},
			HTTPPort:    80,
			Tags:        map[string]string{"name": "answer", "team": "x"},
			Metadata:    json.RawMessage(`{"owner":{"id":7}}`),
			Restart:     "on-failure:2",
			BootArgs:    "quiet",
			ExtraEnv:    map[string]string{"A": "1"},
			Argv:        []string{"/bin/app", "--flag"},
			Hooks:       json.RawMessage(`{"onStart":[{"url":"http://127.0.0.1:9/hook"}]}`),
			HealthCheck: &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}},
		},
		"empty collections": {Tags: map[string]string{}, ExtraEnv: map[string]string{}, Ports: []wire.Port{}, Argv: []string{}},
	}
	for name, req := range requests {
		t.Run(name, func(t *testing.T) {
			created, err := h.mgr.Create(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := h.mgr.Get(context.Background(), created.ID)
			if err != nil {
				t.Fatal(err)
			}
			a, _ := json.Marshal(created)
			b, _ := json.Marshal(got)
			if string(a) != string(b) {
				t.Fatalf("create answered\n%s\nGET answers\n%s", a, b)
			}
		})
	}
}
