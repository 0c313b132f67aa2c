package e2e

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/wire"
)

// BenchmarkAPIAuth measures what the front door costs: create and get
// latency through the real HTTP API of a daemon on loopback with bearer
// tokens (MGR_API_AUTH=token) next to one without (MGR_API_AUTH=none), in
// the same run, interleaved in small rounds so that both see the same
// machine. One client, sequential requests: 200 creates and 200 gets each.
//
//	go test -run '^$' -bench APIAuth -benchtime 1x ./test/e2e/
func BenchmarkAPIAuth(b *testing.B) {
	const rounds, perRound = 10, 20
	modes := []string{"token", "none"}
	for i := 0; i < b.N; i++ {
		base := map[string]string{}
		for _, m := range modes {
			h := newHost(b, map[string]string{"MGR_SUPERVISOR": "systemd", "MGR_GUEST_CIDR": "172.30.0.0/20", "MGR_API_AUTH": m})
			base[m] = h.serve(b)
		}
		creates := map[string][]time.Duration{}
		gets := map[string][]time.Duration{}
		for r := 0; r < rounds; r++ {
			for _, m := range modes {
				for j := 0; j < perRound; j++ {
					var vm wire.VM
					t0 := time.Now()
					code, body := call(b, "POST", base[m]+"/v1/vms", map[string]any{}, &vm)
					creates[m] = append(creates[m], time.Since(t0))
					if code != 201 {
						b.Fatalf("create (auth %s): %d %s", m, code, body)
					}
					t0 = time.Now()
					code, body = call(b, "GET", base[m]+"/v1/vms/"+vm.ID, nil, nil)
					gets[m] = append(gets[m], time.Since(t0))
					if code != 200 {
						b.Fatalf("get (auth %s): %d %s", m, code, body)
					}
				}
			}
		}
		q := func(d []time.Duration, p int) float64 {
			s := append([]time.Duration(nil), d...)
			sort.Slice(s, func(x, y int) bool { return s[x] < s[y] })
			return ms(s[len(s)*p/100])
		}
		for _, op := range []struct {
			name string
			lat  map[string][]time.Duration
		}{{"create", creates}, {"get", gets}} {
			tok50, none50 := q(op.lat["token"], 50), q(op.lat["none"], 50)
			tok99, none99 := q(op.lat["token"], 99), q(op.lat["none"], 99)
			b.ReportMetric(tok50, op.name+"-token-p50-ms")
			b.ReportMetric(none50, op.name+"-none-p50-ms")
			fmt.Printf("api auth: %-6s p50 %.3f ms with a token vs %.3f ms with MGR_API_AUTH=none (ratio %.2f); p99 %.3f vs %.3f ms (%d requests each)\n",
				op.name, tok50, none50, tok50/none50, tok99, none99, len(op.lat["token"]))
		}
	}
}
