package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/execclient"
	"github.com/mergenhq/mergen/internal/execproto"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// BenchmarkExecRoundTrip prints, from one run on one guest, the round trip
// of running `true` through the API (mergen's client, the daemon's
// WebSocket relay, then the exec agent) next to the bare transport: the
// same TCP channel in the VM's namespace with the same secret, without the
// API, p50 and p99.
//
//	go test -run '^$' -bench ExecRoundTrip -benchtime 1x ./test/e2e/
func BenchmarkExecRoundTrip(b *testing.B) {
	testenv.RequireRoot(b)
	vh := newVMHost(b, "detached", "172.31.240.0/24")
	h := vh.host
	payload := webPayload(b, h.path("data", "images", "web"), "hello\n", "8080")
	d := h.startBinary(b, vh.mergen, freePort(b))
	var vm wire.VM
	code, raw := call(b, "POST", d.base+"/v1/vms", map[string]any{"payloadDisk": payload, "memMiB": 256, "httpPort": 8080, "autoStart": true,
		"ports": []map[string]any{{"guest": 8080, "host": 0}}}, &vm)
	mustStatus(b, code, raw, 201)
	testenv.Eventually(b, 90*time.Second, "the guest to answer HTTP", func() bool {
		_, err := httpGet(vm.Network.Ports[0].Host, "/")
		return err == nil
	})
	c, err := client.New(d.base, client.WithToken(h.token(b)))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	req := execproto.ExecRequest{Argv: []string{"/bin/busybox", "true"}}
	viaAPI := func() time.Duration {
		t0 := time.Now()
		exit, err := c.Exec(ctx, vm.ID, req, client.ExecIO{Stdout: io.Discard, Stderr: io.Discard})
		if err != nil || exit.Code != 0 {
			b.Fatalf("exec through the API: %+v %v", exit, err)
		}
		return time.Since(t0)
	}
	viaAPI() // delivers the secret to the guest
	secret, err := os.ReadFile(filepath.Join(h.env["MGR_RUN_ROOT"], vm.ID, "agent.secret"))
	if err != nil {
		b.Fatal(err)
	}
	target := execclient.Target{VM: vm.ID, Netns: vm.Network.Netns, Secret: secret,
		Addr: net.JoinHostPort(vm.Network.GuestIP, strconv.Itoa(execproto.Port))}
	bare := func() time.Duration {
		t0 := time.Now()
		s, err := execclient.Exec(ctx, target, req)
		if err != nil {
			b.Fatal(err)
		}
		go io.Copy(io.Discard, s.Stderr())
		io.Copy(io.Discard, s.Stdout())
		exit, err := s.Wait()
		s.Close()
		if err != nil || exit.Code != 0 {
			b.Fatalf("bare exec: %+v %v", exit, err)
		}
		return time.Since(t0)
	}
	const rounds = 50
	pct := func(ds []time.Duration, p int) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[(len(s)-1)*p/100].Round(100 * time.Microsecond)
	}
	for i := 0; i < b.N; i++ {
		var api, raw []time.Duration
		for range rounds { // interleaved: both see the same guest load
			api = append(api, viaAPI())
			raw = append(raw, bare())
		}
		fmt.Printf("exec round trip of `true` (QEMU, TCG, %d each, interleaved): through the API p50 %s p99 %s; bare transport p50 %s p99 %s\n",
			rounds, pct(api, 50), pct(api, 99), pct(raw, 50), pct(raw, 99))
	}
}
