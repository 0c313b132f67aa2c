package manager

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/mergenhq/mergen/internal/layout"
	"github.com/mergenhq/mergen/internal/store"
)

// The paths a list writes from a VM's id are those encoding/json gives,
// whatever the roots: names JSON escapes, relative and root directories.
// A root holding a placeholder id makes the pieces unusable (documents
// then keep their paths), never wrong.
func TestPathsJSONIsTheEncodedPaths(t *testing.T) {
	id := store.NewID()
	for _, root := range []string{"/var/lib/mergen", `/q"uote<&>é\`, "/", "rel/dir", "/x/00000000-0000-4000-8000-000000000000"} {
		l := layout.Layout{ConfigRoot: root + "/vm.d", DataRoot: root, RunRoot: root + "/run"}
		pj := newPathsJSON(l)
		want, err := json.Marshal(wirePaths(l.VM(id)))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains([]byte(root), []byte("00000000-0000-4000-8000-000000000000")) {
			if pj.usable {
				t.Errorf("root %q holds a placeholder id, and its pieces are used", root)
			}
			continue
		}
		if !pj.usable {
			t.Errorf("root %q: pieces not usable", root)
			continue
		}
		if got := pj.append([]byte("x"), id); !bytes.Equal(got, append([]byte("x"), want...)) || pj.size(id) != len(want) {
			t.Errorf("root %q: paths written as (size %d)\n%s\nencoded\n%s", root, pj.size(id), got, want)
		}
	}
}
