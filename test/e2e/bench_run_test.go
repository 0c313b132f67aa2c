package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/demo"
	"github.com/mergenhq/mergen/internal/testenv"
)

// BenchmarkRunPhases prints the phases of `mergen run` with the demo image:
// conversion uncached and cached, create and start, boot until the guest's
// HTTP port answers (a cold boot: bench/snapshot.sh measures restores), and
// the first answer through mergen-forwarder.
//
//	go test -run '^$' -bench RunPhases -benchtime 1x ./test/e2e/
func BenchmarkRunPhases(b *testing.B) {
	testenv.RequireRoot(b)
	s := newDemoStack(b, "172.31.249.0/24")
	phase := regexp.MustCompile(`==> (\w+)[^\n]*\n(?:[^\n]*\n)*?\s+done in (\S+)`)
	for i := 0; i < b.N; i++ {
		for _, round := range []string{"uncached", "cached"} {
			name := fmt.Sprintf("bench%d%s", i, round[:1])
			args := []string{"run", "oci:" + s.image, "--name", name, "--detach", "--domain", s.domain, "--cold"}
			if round == "uncached" {
				args = append(args, "--pull")
			}
			t0 := time.Now()
			out := s.run(b, args...)
			ran := time.Since(t0)
			t1 := time.Now()
			code, body := s.get(b, name)
			first := time.Since(t1)
			if code != 200 || body != demo.Page {
				b.Fatalf("%s: forwarder answered %d %q", name, code, body)
			}
			var parts []string
			for _, m := range phase.FindAllStringSubmatch(out, -1) {
				parts = append(parts, m[1]+" "+m[2])
			}
			fmt.Printf("mergen run (%s): %s; whole command %s; first HTTPS answer through the forwarder %s\n",
				round, strings.Join(parts, ", "), ran.Round(time.Millisecond), first.Round(time.Millisecond))
			s.run(b, "vm", "rm", "-f", name)
		}
	}
}
