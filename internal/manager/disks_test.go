package manager_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
	"github.com/mergenhq/mergen/internal/wire"
)

// The disk attacks of the isolation issue, replayed: daemon state offered
// as a VM's disk — another VM's hooks.json as a payload disk, a global hook
// as a writable data disk, the forwarder's TLS key as an env disk, and the
// rest of what the daemon keeps — is refused with 400 naming the field, and
// nothing is created. It is refused even when an operator lists a directory
// holding all of it in MGR_DISK_ROOTS, and when a link in an allowed root
// leads there.
func TestCreateRefusesDaemonStateAsADisk(t *testing.T) {
	for _, wide := range []bool{false, true} {
		name := "default roots"
		var env map[string]string
		if wide {
			name, env = "MGR_DISK_ROOTS=/", map[string]string{"MGR_DISK_ROOTS": "/"}
		}
		t.Run(name, func(t *testing.T) {
			h := newHost(t, env)
			victim, err := h.mgr.Create(context.Background(), wire.CreateRequest{Tags: map[string]string{"name": "victim"}})
			if err != nil {
				t.Fatal(err)
			}
			p := h.store.Paths(victim.ID)
			hook := filepath.Join(h.cfg.GlobalHooksDir, "x.json")
			key := filepath.Join(h.cfg.DataRoot, "certs", "wildcard.example.com.key")
			logFile := filepath.Join(h.cfg.DataRoot, "logs", "forwarder.log")
			for _, f := range []string{hook, key, logFile, p.ConsoleLog, h.cfg.DaemonLogFile, filepath.Join(p.RunDir, "vmm.pid")} {
				writeFile(t, f, "daemon state")
			}
			linkToKey := filepath.Join(h.images, "innocent.ext4")
			if err := os.Symlink(key, linkToKey); err != nil {
				t.Fatal(err)
			}
			cases := []struct {
				name string
				req  wire.CreateRequest
				want string
			}{
				{"another VM's hooks.json as payloadDisk", wire.CreateRequest{PayloadDisk: p.Hooks}, "payloadDisk: "},
				{"another VM's vm.json as rootfs", wire.CreateRequest{Rootfs: p.VMConfig}, "rootfs: "},
				{"another VM's record as kernel", wire.CreateRequest{Kernel: p.Meta}, "kernel: "},
				{"a global hook as dataDisk", wire.CreateRequest{DataDisk: hook}, "dataDisk: "},
				{"the wildcard key as envDisk", wire.CreateRequest{EnvDisk: key}, "envDisk: "},
				{"a link in the images root to the key as envDisk", wire.CreateRequest{EnvDisk: linkToKey}, "envDisk: "},
				{"another VM's console log as agentDisk", wire.CreateRequest{AgentDisk: p.ConsoleLog}, "agentDisk: "},
				{"a log as initrd", wire.CreateRequest{Initrd: logFile}, "initrd: "},
				{"the daemon log as payloadDisk", wire.CreateRequest{PayloadDisk: h.cfg.DaemonLogFile}, "payloadDisk: "},
				{"a run file as dataDisk", wire.CreateRequest{DataDisk: filepath.Join(p.RunDir, "vmm.pid")}, "dataDisk: "},
				{"a path into the state through dot-dot", wire.CreateRequest{PayloadDisk: h.images + "/../certs/wildcard.example.com.key"}, "payloadDisk: "},
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					vm, err := h.mgr.Create(context.Background(), c.req)
					if !errdefs.IsInvalid(err) {
						t.Fatalf("Create = %s, %v; want an invalid-request error (400)", vm.ID, err)
					}
					if !strings.HasPrefix(err.Error(), c.want) {
						t.Errorf("error %q does not name the field (%q)", err, c.want)
					}
					if wide && !strings.Contains(err.Error(), "daemon's state") {
						t.Errorf("error %q does not say the path is daemon state", err)
					}
					if strings.Contains(err.Error(), "daemon state\n") || strings.Contains(err.Error(), "{") {
						t.Errorf("error %q echoes the file", err)
					}
					if ids, _ := h.store.IDs(); len(ids) != 1 {
						t.Errorf("%d VMs stored after a refused create, want the victim only", len(ids))
					}
				})
			}
			if left := h.leftovers(t); len(left) != 2 { // the victim's config and data directories
				t.Errorf("refused creates left %v", left)
			}
		})
	}
}

// The daemon's state is refused wherever its configured paths lead: here
// its data root is a link, and the certificates' directory is made only
// after the daemon started (the areas are resolved once, when the manager
// is made, as far as they exist then). Offered by its real path, the key
// is still daemon state, even with every directory an allowed root.
func TestDaemonStateMadeAfterStartBehindALinkIsRefused(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "data")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, map[string]string{"MGR_DATA_ROOT": link, "MGR_DISK_ROOTS": "/"})
	key := filepath.Join(real, "certs", "wildcard.example.com.key")
	if _, err := os.Stat(filepath.Dir(key)); !os.IsNotExist(err) {
		t.Fatalf("the certificates' directory exists before the test makes it (%v)", err)
	}
	writeFile(t, key, "daemon state")
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{EnvDisk: key})
	if !errdefs.IsInvalid(err) || !contains(err.Error(), "envDisk: ", "daemon's state") {
		t.Fatalf("Create = %s, %v; want a refusal of envDisk as daemon state", vm.ID, err)
	}
}

// Writable data disks come from the volumes dir or MGR_DISK_ROOTS: the base
// assets and the images are every VM's read-only disks, and a guest writing
// to one would change them for all.
func TestCreateTakesDataDisksOnlyFromVolumes(t *testing.T) {
	extra := t.TempDir()
	h := newHost(t, map[string]string{"MGR_DISK_ROOTS": extra})
	image := filepath.Join(h.images, "app", "rootfs.ext4")
	writeFile(t, image, "image")
	for _, shared := range []string{image, h.cfg.DefaultRootfs} {
		_, err := h.mgr.Create(context.Background(), wire.CreateRequest{DataDisk: shared})
		if !errdefs.IsInvalid(err) || !contains(err.Error(), "dataDisk: ", "read-only", h.cfg.VolumesDir) {
			t.Errorf("dataDisk %s: %v; want a refusal pointing at the volumes dir", shared, err)
		}
	}
	// Read-only, the same image is fine.
	if _, err := h.mgr.Create(context.Background(), wire.CreateRequest{PayloadDisk: image}); err != nil {
		t.Errorf("payloadDisk from the images root: %v", err)
	}
	for _, p := range []string{h.disk(t, "data.ext4"), filepath.Join(extra, "data.ext4")} {
		writeFile(t, p, "data")
		if _, err := h.mgr.Create(context.Background(), wire.CreateRequest{DataDisk: p}); err != nil {
			t.Errorf("dataDisk %s: %v", p, err)
		}
	}
}

// The record keeps, for each file, the root it was checked below: the
// start stage opens it there. A path given through a link inside a root is
// stored resolved, below the resolved root; defaults below their root.
func TestCreateRecordsTheRootOfEachDisk(t *testing.T) {
	h := newHost(t, nil)
	payload := filepath.Join(h.images, "web", "payload.ext4")
	writeFile(t, payload, "payload")
	data := h.disk(t, "data.ext4")
	link := filepath.Join(h.images, "current")
	if err := os.Symlink("web", link); err != nil {
		t.Fatal(err)
	}
	vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{PayloadDisk: filepath.Join(link, "payload.ext4"), DataDisk: data})
	if err != nil {
		t.Fatal(err)
	}
	m, err := h.store.ReadMeta(vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"kernel":      {h.cfg.DefaultKernel, h.cfg.BaseAssetsDir},
		"rootfs":      {h.cfg.DefaultRootfs, h.cfg.BaseAssetsDir},
		"payloadDisk": {payload, h.cfg.ImagesRoot},
		"dataDisk":    {data, h.cfg.VolumesDir},
	}
	files := map[string]string{}
	for _, f := range m.Files() {
		files[f.Field] = f.Path
	}
	for field, w := range want {
		if files[field] != w[0] || m.DiskRoots[field] != w[1] {
			t.Errorf("%s: %s below %s; want %s below %s", field, files[field], m.DiskRoots[field], w[0], w[1])
		}
	}
	if len(m.DiskRoots) != len(want) {
		t.Errorf("diskRoots %v, want one per file", m.DiskRoots)
	}
}

// A VM's data disk is its own: another VM may not attach it in any role.
func TestCreateRefusesAnotherVMsDataDiskInAnyRole(t *testing.T) {
	h := newHost(t, nil)
	data := h.disk(t, "data.ext4")
	owner, err := h.mgr.Create(context.Background(), wire.CreateRequest{DataDisk: data})
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []wire.CreateRequest{{PayloadDisk: data}, {EnvDisk: data}, {Rootfs: data}} {
		_, err := h.mgr.Create(context.Background(), req)
		if !errdefs.IsConflict(err) || !contains(err.Error(), "data disk of vm "+owner.ID) {
			t.Errorf("%+v: %v; want a conflict naming the owner", req, err)
		}
	}
}

// A default disk is placed again whenever its path leads to another file
// than at the last create: a link moved to another file is followed there,
// and a link moved into the daemon's state is refused, however many
// creates placed the default before.
func TestADefaultDiskIsPlacedAgainWhenItsPathLeadsToAnotherFile(t *testing.T) {
	outside := t.TempDir()
	first, second := filepath.Join(outside, "a", "rootfs.ext4"), filepath.Join(outside, "b", "rootfs.ext4")
	writeFile(t, first, "first")
	writeFile(t, second, "second")
	link := filepath.Join(outside, "current.ext4")
	if err := os.Symlink(first, link); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, map[string]string{"MGR_DEFAULT_ROOTFS": link})
	moveLink := func(to string) {
		t.Helper()
		tmp := link + ".new"
		if err := os.Symlink(to, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, link); err != nil {
			t.Fatal(err)
		}
	}
	rootfsOf := func() (path, root string, err error) {
		t.Helper()
		vm, err := h.mgr.Create(context.Background(), wire.CreateRequest{})
		if err != nil {
			return "", "", err
		}
		m, err := h.store.ReadMeta(vm.ID)
		if err != nil {
			t.Fatal(err)
		}
		return m.Disks.Rootfs, m.DiskRoots["rootfs"], nil
	}
	for range 2 {
		if path, root, err := rootfsOf(); err != nil || path != first || root != filepath.Dir(first) {
			t.Fatalf("rootfs %s below %s (%v); want %s below its directory", path, root, err, first)
		}
	}
	moveLink(second)
	if path, root, err := rootfsOf(); err != nil || path != second || root != filepath.Dir(second) {
		t.Fatalf("after the link moved: rootfs %s below %s (%v); want %s below its directory", path, root, err, second)
	}
	key := filepath.Join(h.cfg.DataRoot, "certs", "wildcard.example.com.key")
	writeFile(t, key, "daemon state")
	moveLink(key)
	if path, _, err := rootfsOf(); !errdefs.IsInvalid(err) || !contains(err.Error(), "rootfs: ", "daemon's state") {
		t.Fatalf("after the link moved into the daemon's state: rootfs %s, %v; want a refusal", path, err)
	}
}
