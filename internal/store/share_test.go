package store

import (
	"reflect"
	"testing"
	"time"
	"unsafe"
)

// Cached records hold one copy of what VMs have in common: the same
// strings and the same disk-roots map, while every reader still gets the
// record as written, and a copy of its own.
func TestCachedRecordsShareWhatVMsHaveInCommon(t *testing.T) {
	s := newStore(t)
	record := func(id, root string) Meta {
		return Meta{
			Version: RecordVersion, ID: id, CreatedAt: time.Unix(1700000000, 0).UTC(), VMM: "qemu",
			Kernel: root + "/vmlinux", Disks: Disks{Rootfs: root + "/rootfs.ext4", Agent: root + "/agent.ext4"},
			DiskRoots: map[string]string{"kernel": root, "rootfs": root, "agentDisk": root},
			Ports:     []Port{{Guest: 80, Host: 20000, Protocol: "tcp"}}, GuestIP: "172.30.0.2", Gateway: "172.30.0.1", Restart: "no",
		}
	}
	want := map[string]Meta{}
	var ids []string
	for _, root := range []string{"/srv/base", "/srv/base", "/srv/base", "/srv/other"} {
		id := NewID()
		m := record(id, root)
		b, err := MarshalMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Create(id, map[string][]byte{FileMeta: b, FileVMConfig: []byte(`{}`), FileHooks: []byte(`{}`), FileEnv: []byte("A=1\n")}); err != nil {
			t.Fatal(err)
		}
		want[id] = m
		ids = append(ids, id)
	}
	if _, err := s.List(); err != nil {
		t.Fatal(err)
	}
	cached := func(id string) Meta {
		t.Helper()
		m, err := s.metas.Load(s.Layout.MetaFile(id), func([]byte) (Meta, bool, error) {
			t.Fatalf("record of %s not cached", id)
			return Meta{}, false, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	mapOf := func(m map[string]string) unsafe.Pointer { return reflect.ValueOf(m).UnsafePointer() }
	a, b, other := cached(ids[0]), cached(ids[1]), cached(ids[3])
	if unsafe.StringData(a.Kernel) != unsafe.StringData(b.Kernel) || unsafe.StringData(a.Disks.Rootfs) != unsafe.StringData(b.Disks.Rootfs) ||
		unsafe.StringData(a.Gateway) != unsafe.StringData(b.Gateway) || unsafe.StringData(a.Ports[0].Protocol) != unsafe.StringData(b.Ports[0].Protocol) {
		t.Error("two cached records with the same kernel, disks, gateway and protocol hold copies of their own")
	}
	if mapOf(a.DiskRoots) != mapOf(b.DiskRoots) {
		t.Error("two cached records with equal disk roots hold a map each")
	}
	if mapOf(other.DiskRoots) == mapOf(a.DiskRoots) || other.DiskRoots["kernel"] != "/srv/other" {
		t.Errorf("a record with other disk roots shares the first ones: %v", other.DiskRoots)
	}

	// Readers get the record as written, and a copy of their own.
	for _, id := range ids {
		got, err := s.ReadMeta(id)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want[id]) {
			t.Errorf("ReadMeta(%s) = %+v, want %+v", id, got, want[id])
		}
		got.DiskRoots["kernel"] = "/changed"
	}
	if m, _ := s.ReadMeta(ids[1]); m.DiskRoots["kernel"] != "/srv/base" {
		t.Errorf("a reader's change to its record reached another VM's: %v", m.DiskRoots)
	}
}
