package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/store"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// envStart writes what the payload's own environment holds (GREETING, and
// BIG's length and SHA-256) before it serves envCGI.
const envStart = `#!/bin/sh
echo "process: GREETING=$GREETING BIG=${#BIG} $(printf %s "$BIG" | sha256sum | cut -d' ' -f1)" > /tmp/env.txt
exec /bin/busybox httpd -f -v -p 8080 -h /www
`

// envCGI reports the payload's environment as it started, and the VM's
// env file as the guest wrote it.
const envCGI = `#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
cat /tmp/env.txt
. /run/mergen/env
echo "file: GREETING=$GREETING BIG=${#BIG} $(printf %s "$BIG" | sha256sum | cut -d' ' -f1)"
`

// TestAnEnvironmentLargerThanTheCommandLineReachesThePayload: a VM whose
// extraEnv is too large for its kernel command line boots with
// mergen.env_from=agent, the post-start stage hands the environment over
// the agent channel, and the payload starts with all of it; its env file
// holds it too.
func TestAnEnvironmentLargerThanTheCommandLineReachesThePayload(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a QEMU guest")
	}
	b := startBareHost(t, "172.31.231.0/24")
	payload := payloadDisk(t, b.h.path("data", "images", "env"), "env\n",
		map[string]string{"www/start.sh": envStart, "www/cgi-bin/env": envCGI},
		[]string{"/bin/sh", "/www/start.sh"}, "web", "/www")

	big := strings.Repeat("0123456789abcdef", 512) // 8 KiB: far more than the command line takes
	sum := sha256.Sum256([]byte(big))
	var vm wire.VM
	code, raw := b.api(t, "POST", "/v1/vms", map[string]any{
		"payloadDisk": payload, "memMiB": 256, "httpPort": 8080, "autoStart": true,
		"ports":    []map[string]any{{"guest": 8080, "host": 0}},
		"extraEnv": map[string]string{"GREETING": "hello from the agent", "BIG": big},
	}, &vm)
	mustStatus(t, code, raw, 201)

	var meta store.Meta
	code, raw = b.api(t, "GET", "/v1/vms/"+vm.ID+"/meta.json", nil, &meta)
	mustStatus(t, code, raw, 200)
	if !strings.Contains(meta.BootArgs, "mergen.env_from=agent") || strings.Contains(meta.BootArgs, "mergen.env=") {
		t.Fatalf("kernel command line %q: want mergen.env_from=agent and no mergen.env=", meta.BootArgs)
	}

	got := waitHTTP(t, b, vm.Network.Ports[0].Host, "/cgi-bin/env", 90*time.Second)
	want := "GREETING=hello from the agent BIG=8192 " + hex.EncodeToString(sum[:])
	if !strings.Contains(got, "process: "+want) || !strings.Contains(got, "file: "+want) {
		t.Fatalf("the guest reports:\n%s\nwant the process and the env file with %q", got, want)
	}
}
