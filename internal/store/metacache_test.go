package store

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/mergenhq/mergen/internal/errdefs"
)

// A record rewritten by another writer (another process's store, or a
// plain temp + rename) is what the next read returns, not the record this
// store decoded before; a deleted VM is not found.
func TestReadMetaSeesRewritesByOtherWriters(t *testing.T) {
	s := newStore(t)
	other, err := Open(s.Layout)
	if err != nil {
		t.Fatal(err)
	}
	id := NewID()
	if err := s.Create(id, files(id)); err != nil {
		t.Fatal(err)
	}
	if m, err := s.ReadMeta(id); err != nil || m.GuestIP != "172.30.0.2" {
		t.Fatalf("ReadMeta = %+v, %v", m, err)
	}

	// Same length as before, so only the file's identity tells them apart.
	b, _ := MarshalMeta(Meta{ID: id, GuestIP: "172.30.0.3"})
	if err := other.WriteFile(id, FileMeta, b); err != nil {
		t.Fatal(err)
	}
	if m, err := s.ReadMeta(id); err != nil || m.GuestIP != "172.30.0.3" {
		t.Fatalf("after another store's rewrite: %q, %v; want 172.30.0.3", m.GuestIP, err)
	}
	if ms, err := s.List(); err != nil || len(ms) != 1 || ms[0].GuestIP != "172.30.0.3" {
		t.Fatalf("List after the rewrite = %+v, %v", ms, err)
	}

	b, _ = MarshalMeta(Meta{ID: id, GuestIP: "172.30.0.4"})
	path := s.Layout.VM(id).Meta
	tmp := filepath.Join(filepath.Dir(path), ".meta.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if m, err := s.ReadMeta(id); err != nil || m.GuestIP != "172.30.0.4" {
		t.Fatalf("after a rename by hand: %q, %v; want 172.30.0.4", m.GuestIP, err)
	}

	if err := other.Delete(id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadMeta(id); !errdefs.IsNotFound(err) {
		t.Fatalf("ReadMeta of a VM another store deleted: %v, want not found", err)
	}
	if ms, err := s.List(); err != nil || len(ms) != 0 {
		t.Fatalf("List after the delete = %+v, %v", ms, err)
	}
	if n := s.metas.Len(); n != 0 {
		t.Fatalf("%d records of deleted VMs still cached", n)
	}
}

// What ReadMeta returns is the caller's: changing it changes neither the
// cache nor what the next reader gets.
func TestReadMetaReturnsACopy(t *testing.T) {
	s := newStore(t)
	id := NewID()
	meta, _ := MarshalMeta(Meta{ID: id, Tags: map[string]string{"a": "1"}, Ports: []Port{{Guest: 80, Host: 20000, Protocol: "tcp"}},
		Bridge: &Bridge{Name: "br0"}, Metadata: json.RawMessage(`{"k":1}`)})
	f := files(id)
	f[FileMeta] = meta
	if err := s.Create(id, f); err != nil {
		t.Fatal(err)
	}
	m, err := s.ReadMeta(id)
	if err != nil {
		t.Fatal(err)
	}
	metadata := string(m.Metadata)
	m.Tags["a"] = "2"
	m.Ports[0].Host = 1
	m.Bridge.Name = "x"
	m.Metadata[1] = 'X'
	again, err := s.ReadMeta(id)
	if err != nil {
		t.Fatal(err)
	}
	if again.Tags["a"] != "1" || again.Ports[0].Host != 20000 || again.Bridge.Name != "br0" || string(again.Metadata) != metadata {
		t.Fatalf("a caller's change reached the next reader: %+v", again)
	}
}

// clone copies every map, slice and pointer of Meta; a field of such a
// kind added to Meta (or to a struct it holds by value) must be added to
// clone and to this list.
func TestMetaCloneCoversEveryReference(t *testing.T) {
	cloned := map[string]bool{"DiskRoots": true, "Ports": true, "Bridge": true, "Tags": true, "Metadata": true, "ExtraEnv": true, "Argv": true, "HealthCheck": true}
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			name := prefix + f.Name
			switch f.Type.Kind() {
			case reflect.Map, reflect.Slice, reflect.Pointer, reflect.Interface, reflect.Chan, reflect.Func:
				if !cloned[name] {
					t.Errorf("Meta.%s (%s) is shared by clone: copy it there and list it here", name, f.Type)
				}
			case reflect.Struct:
				if f.Type.PkgPath() != "time" {
					walk(name+".", f.Type)
				}
			}
		}
	}
	walk("", reflect.TypeOf(Meta{}))
}
