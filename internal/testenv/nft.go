package testenv

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// NftTable loads a table of the test's own, given in nft syntax as the
// table's body ("counter c {}\nchain x { ... }"), and deletes it when the
// test ends. Tests use it to count packets at chosen places and to drop
// what must never leave this machine, whatever the code under test does.
func NftTable(t testing.TB, family, name, body string) {
	t.Helper()
	nft := Tool(t, "nft")
	script := fmt.Sprintf("table %s %s {\n%s\n}\n", family, name, body)
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testenv: nft -f:\n%s\n%v: %s", script, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(nft, "delete", "table", family, name).CombinedOutput(); err != nil {
			t.Errorf("testenv: delete table %s %s: %v: %s", family, name, err, out)
		}
	})
}

// NftCounters returns the packet count of every named counter of a table.
func NftCounters(t testing.TB, family, table string) map[string]uint64 {
	t.Helper()
	out, err := exec.Command(Tool(t, "nft"), "-j", "list", "counters", "table", family, table).Output()
	if err != nil {
		t.Fatalf("testenv: nft list counters of %s %s: %v", family, table, err)
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("testenv: nft -j list counters: %v\n%s", err, out)
	}
	counts := map[string]uint64{}
	for _, o := range doc.Nftables {
		if o.Counter != nil {
			counts[o.Counter.Name] = o.Counter.Packets
		}
	}
	return counts
}
