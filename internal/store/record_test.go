package store

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/lock"
)

const fixtureID = "3f0c2b1e-7a4d-4e5f-9b6a-1c2d3e4f5a6b"

// storeWithV1 is a store holding the VM of testdata/v1: meta.json and env
// exactly as mergen wrote them before records had a version.
func storeWithV1(t *testing.T) *Store {
	t.Helper()
	d := t.TempDir()
	s, err := Open(layout.Layout{ConfigRoot: filepath.Join(d, "vm.d"), RunRoot: filepath.Join(d, "run"), DataRoot: filepath.Join(d, "data")})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, name := range []string{FileMeta, FileEnv} {
		b, err := os.ReadFile(filepath.Join("testdata", "v1", name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	if err := s.Create(fixtureID, files); err != nil {
		t.Fatal(err)
	}
	// As earlier versions left it.
	if err := os.Chmod(s.Paths(fixtureID).Meta, 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

var fixtureDriver = config.Driver{
	FirecrackerBin: "/opt/firecracker/firecracker",
	Jailer:         true, JailerBin: "/opt/firecracker/jailer", JailerUID: "990", JailerGID: "990",
	ChrootBase: "/srv/jail",
}

func TestAVersion1RecordReadsInTheCurrentFormWithTheDriverSettingsOfItsEnvFile(t *testing.T) {
	s := storeWithV1(t)
	m, err := s.ReadMeta(fixtureID)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != RecordVersion || m.VMM != "firecracker" || m.Driver != fixtureDriver {
		t.Fatalf("read v1 record as version %d, vmm %q, driver %+v; want %d, firecracker, %+v", m.Version, m.VMM, m.Driver, RecordVersion, fixtureDriver)
	}
	if m.GuestIP != "172.30.0.7" || m.Tags["name"] != "web" || len(m.Ports) != 1 || m.Ports[0].Host != 20003 || m.Disks.Payload == "" {
		t.Fatalf("fields lost in the upgrade: %+v", m)
	}
	// Reading does not write: the file is rewritten only by Migrate.
	if b, _ := s.ReadFile(fixtureID, FileMeta); strings.Contains(string(b), `"version"`) {
		t.Fatal("ReadMeta rewrote the record")
	}
}

func TestMigrateRewritesUnderTheVMsLockAndOnlyOnce(t *testing.T) {
	s := storeWithV1(t)

	// Another operation holds the VM: Migrate waits, then leaves the
	// record alone and says so.
	held, err := lock.Acquire(context.Background(), s.Paths(fixtureID).Lock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	done, err := s.Migrate(ctx)
	cancel()
	if err == nil || len(done) != 0 {
		t.Fatalf("Migrate with the VM locked: done %v, err %v; want nothing done and an error", done, err)
	}
	if b, _ := s.ReadFile(fixtureID, FileMeta); strings.Contains(string(b), `"version"`) {
		t.Fatal("record rewritten while another process held the VM's lock")
	}
	held.Release()

	done, err = s.Migrate(context.Background())
	if err != nil || len(done) != 1 || done[0] != fixtureID {
		t.Fatalf("Migrate: done %v, err %v", done, err)
	}
	b, err := s.ReadFile(fixtureID, FileMeta)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw["version"]) != "2" {
		t.Errorf("rewritten record has version %s, want 2", raw["version"])
	}
	if _, ok := raw["paths"]; ok {
		t.Error("rewritten record still stores paths; they come from the layout")
	}
	var d config.Driver
	if err := json.Unmarshal(raw["driver"], &d); err != nil || d != fixtureDriver {
		t.Errorf("rewritten driver %+v (%v), want %+v", d, err, fixtureDriver)
	}
	env, err := s.ReadFile(fixtureID, FileEnv)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(env), "MGR_JAILER") || strings.Contains(string(env), "MGR_RUN_ROOT") || strings.Contains(string(env), "PATH=") ||
		!strings.Contains(string(env), "MGN_VM_ID="+fixtureID) || !strings.Contains(string(env), "MGR_CONFIG_ROOT="+s.Layout.ConfigRoot+"\n") {
		t.Errorf("env file not in the new form (identity and its own config root; host settings come from the unit):\n%s", env)
	}
	// The rewritten record reads back the same.
	m, err := s.ReadMeta(fixtureID)
	if err != nil || m.Driver != fixtureDriver || m.GuestIP != "172.30.0.7" {
		t.Fatalf("after migration: %+v, %v", m, err)
	}
	// Earlier versions wrote meta.json world-readable; it holds extraEnv.
	if st, err := os.Stat(s.Paths(fixtureID).Meta); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("meta.json after migration: %v, %v; want mode 0600", st.Mode().Perm(), err)
	}
	// Nothing left to do the second time.
	if done, err := s.Migrate(context.Background()); err != nil || len(done) != 0 {
		t.Fatalf("second Migrate: done %v, err %v", done, err)
	}
}

func TestARecordFromANewerMergenIsRefusedNotMisread(t *testing.T) {
	s := storeWithV1(t)
	if err := s.WriteFile(fixtureID, FileMeta, []byte(`{"version": 99, "id": "`+fixtureID+`"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadMeta(fixtureID); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("ReadMeta of a version 99 record: %v", err)
	}
}

func TestPathsComeFromTheLayoutNotTheRecord(t *testing.T) {
	s := storeWithV1(t)
	p := s.Paths(fixtureID)
	if !strings.HasPrefix(p.Socket, s.Layout.RunRoot) || !strings.HasPrefix(p.ConsoleLog, s.Layout.DataRoot) || !strings.HasPrefix(p.Meta, s.Layout.ConfigRoot) {
		t.Fatalf("paths not under the store's roots: %+v", p)
	}
}
