package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/auth"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// daemonProc is the mergen binary running `mergen server`.
type daemonProc struct {
	cmd  *exec.Cmd
	base string
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startBinary runs the built daemon with the host's environment and waits
// until /healthz answers.
func (h *host) startBinary(t testing.TB, bin string, port int) *daemonProc {
	t.Helper()
	cmd := exec.Command(bin, "server")
	cmd.Env = os.Environ()
	for k, v := range h.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, fmt.Sprintf("MGR_HTTP_ADDR=127.0.0.1:%d", port))
	logf, err := os.Create(h.path(fmt.Sprintf("daemon-%d.log", time.Now().UnixNano())))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			// VMs outlive their daemon by design: a test that failed half
			// way must not leave guests, namespaces or rules behind.
			var list struct {
				VMs []struct {
					ID string `json:"id"`
				} `json:"vms"`
			}
			token, _ := auth.First(h.env["MGR_API_TOKEN_FILE"])
			if code, _ := callToken(t, http.DefaultClient, token, "GET", d.base+"/v1/vms", nil, &list); code == 200 {
				for _, vm := range list.VMs {
					callToken(t, http.DefaultClient, token, "DELETE", d.base+"/v1/vms/"+vm.ID, nil, nil)
				}
			}
			cmd.Process.Kill()
			cmd.Wait()
		}
		logf.Close()
	})
	for i := 0; i < 300; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			// The token file exists before the daemon listens.
			h.trust(t, d.base)
			return d
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("daemon did not listen on %d; log in %s", port, logf.Name())
	return nil
}

// TestDaemonKilledMidCreatesLeavesWholeVMsOnly SIGKILLs the daemon while
// creates stream in, restarts it, and shows that every VM on disk is whole,
// nothing half-made is visible, and no address or port is held by anything
// but a VM.
func TestDaemonKilledMidCreatesLeavesWholeVMsOnly(t *testing.T) {
	bin := testenv.Build(t, "./cmd/mergen")
	h := newHost(t, noServiceManager)
	port := freePort(t)
	d := h.startBinary(t, bin, port)

	token := h.token(t)
	var created atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := `{"ports":[{"guest":80},{"guest":443}]}`
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := httpPost(d.base+"/v1/vms", token, body)
				if err != nil {
					return // the daemon is gone
				}
				if resp == 201 {
					created.Add(1)
				}
			}
		}()
	}
	for created.Load() < 40 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.cmd.Wait()
	close(stop)
	wg.Wait()

	// Every directory that carries a VM id is complete and parses.
	cfgRoot := h.env["MGR_CONFIG_ROOT"]
	ids, err := h.store(t).IDs()
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(ids)) < created.Load() {
		t.Fatalf("%d VMs on disk but %d creates were acknowledged", len(ids), created.Load())
	}
	for _, id := range ids {
		for _, f := range []string{"meta.json", "vm.json", "hooks.json", "env"} {
			b, err := os.ReadFile(filepath.Join(cfgRoot, id, f))
			if err != nil {
				t.Fatalf("vm %s is missing %s after the kill: %v", id, f, err)
			}
			if strings.HasSuffix(f, ".json") && !json.Valid(b) {
				t.Fatalf("vm %s has a torn %s", id, f)
			}
		}
	}

	// After a restart, interrupted work is swept and the daemon serves the
	// same VMs.
	d2 := h.startBinary(t, bin, port)
	for _, e := range vmDirs(t, h) {
		if strings.HasPrefix(e, ".") {
			t.Fatalf("restart did not sweep %s", e)
		}
	}
	var list struct {
		VMs []wire.VM `json:"vms"`
	}
	code, body := call(t, "GET", d2.base+"/v1/vms", nil, &list)
	mustStatus(t, code, body, 200)
	if len(list.VMs) != len(ids) {
		t.Fatalf("restarted daemon lists %d VMs, disk has %d", len(list.VMs), len(ids))
	}
	// New creates after the restart never collide with what survived.
	for i := 0; i < 5; i++ {
		var vm wire.VM
		code, body := call(t, "POST", d2.base+"/v1/vms", map[string]any{"ports": []map[string]any{{"guest": 80}}}, &vm)
		mustStatus(t, code, body, 201)
		list.VMs = append(list.VMs, vm)
	}
	ips, ports := map[string]bool{}, map[int]bool{}
	for _, vm := range list.VMs {
		if ips[vm.Network.GuestIP] {
			t.Fatalf("guest IP %s handed out twice", vm.Network.GuestIP)
		}
		ips[vm.Network.GuestIP] = true
		for _, p := range vm.Network.Ports {
			if ports[p.Host] {
				t.Fatalf("host port %d handed out twice", p.Host)
			}
			ports[p.Host] = true
		}
	}
	// Nothing leaked: delete everything, and the first address and the
	// lowest ports are free again.
	for _, vm := range list.VMs {
		code, body := call(t, "DELETE", d2.base+"/v1/vms/"+vm.ID, nil, nil)
		mustStatus(t, code, body, 200)
	}
	var vm wire.VM
	code, body = call(t, "POST", d2.base+"/v1/vms", map[string]any{"ports": []map[string]any{{"guest": 80}}}, &vm)
	mustStatus(t, code, body, 201)
	if vm.Network.GuestIP != "172.30.0.2" {
		t.Fatalf("first address after deleting everything is %s: an address leaked", vm.Network.GuestIP)
	}
}

func httpPost(url, token, body string) (int, error) {
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
