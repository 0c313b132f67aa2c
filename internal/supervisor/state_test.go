package supervisor

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mergenhq/mergen/internal/atomicfile"
)

// readState keeps what it decoded while the file is the same, and reads
// every new record: a rename over it, a removal, a rewrite in place of
// another size, a record that does not decode.
func TestReadStateIsReadAgainWhenTheRecordChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "supervisor.state.json")
	want := func(step, active string, pid int) {
		t.Helper()
		st, err := readState(path)
		if err != nil || st.ActiveState != active || st.MainPID != pid {
			t.Fatalf("%s: read %+v, %v; want %s with main pid %d", step, st, err, active, pid)
		}
	}
	want("no record yet", "inactive", 0)

	if err := atomicfile.WriteFile(path, []byte(`{"activeState":"active","subState":"running","mainPID":41}`), 0o644); err != nil {
		t.Fatal(err)
	}
	want("first record", "active", 41)
	want("same record again (cached)", "active", 41)
	if states.Len() == 0 {
		t.Fatal("an unchanged record is not cached")
	}

	// The same size by rename: a new inode, so read again.
	if err := atomicfile.WriteFile(path, []byte(`{"activeState":"active","subState":"running","mainPID":42}`), 0o644); err != nil {
		t.Fatal(err)
	}
	want("replaced by rename", "active", 42)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	want("removed (a new start)", "inactive", 0)

	if err := os.WriteFile(path, []byte(`{"activeState":"failed","subState":"failed"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	want("written again", "failed", 0)
	if err := os.WriteFile(path, []byte(`{"activeState":"inactive","subState":"dead","result":"success"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	want("rewritten in place, another size", "inactive", 0)

	if err := atomicfile.WriteFile(path, []byte(`{"activeState":`), 0o644); err != nil {
		t.Fatal(err)
	}
	if st, err := readState(path); err == nil {
		t.Fatalf("a record that does not decode read as %+v", st)
	}
	if err := atomicfile.WriteFile(path, []byte(`{"activeState":"active","subState":"running","mainPID":7}`), 0o644); err != nil {
		t.Fatal(err)
	}
	want("after a bad record", "active", 7)
}
