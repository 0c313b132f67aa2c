package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// The test image has busybox and sh, no applet links: commands are run as
// busybox applets.
//
// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestExecAndCopyRealVM drives mergen exec and mergen cp against a real
// guest under QEMU, as a user would: the payload's user, exit statuses,
// mergen logs -f,
// 10 MiB through cat, Ctrl-C, a terminal in tmux with a resize, a file
// round trip with its mode, a path outside the root refused, the serial
// console, 20 sessions at once, 100 MiB onto a full guest disk (507), a
// flood read slowly (bounded memory), and a stopped VM's 409.
func TestExecAndCopyRealVM(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: boots a QEMU guest")
	}
	vh := newVMHost(t, "detached", "172.31.242.0/24")
	h := vh.host
	payload := webPayload(t, h.path("data", "images", "web"), "hello\n", "8080")
	b := &bareHost{h: h, bin: vh.mergen, port: freePort(t)}
	b.d = h.startBinary(t, vh.mergen, b.port)
	t.Cleanup(func() { dumpConsoles(t, h) })
	// A small data disk holds the guest's writable layer: a large upload
	// fills it.
	data := filepath.Join(h.env["MGR_DATA_ROOT"], "volumes", "box.ext4")
	os.MkdirAll(filepath.Dir(data), 0o755)
	if out, err := exec.Command(testenv.Tool(t, "mkfs.ext4"), "-q", "-F", "-L", "mergen-data", data, "48M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	var vm wire.VM
	code, raw := b.api(t, "POST", "/v1/vms", map[string]any{
		"payloadDisk": payload, "memMiB": 256, "httpPort": 8080, "autoStart": true, "dataDisk": data,
		"ports": []map[string]any{{"guest": 8080, "host": 0}}, "tags": map[string]string{"name": "box"},
	}, &vm)
	mustStatus(t, code, raw, 201)
	waitHTTP(t, b, vm.Network.Ports[0].Host, "/", 90*time.Second)

	// mergenCmd is the CLI talking to this daemon over TCP with its token.
	mergenCmd := func(args ...string) *exec.Cmd {
		cmd := exec.Command(vh.mergen, args...)
		cmd.Env = append(os.Environ(), "MERGEN_API="+b.d.base, "MERGEN_API_TOKEN="+h.token(t), "MGR_API_SOCKET="+h.path("no.sock"))
		return cmd
	}
	cli := func(stdin []byte, args ...string) (string, string, int) {
		t.Helper()
		cmd := mergenCmd(args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("mergen %v: %v", args, err)
		}
		return out.String(), errb.String(), cmd.ProcessState.ExitCode()
	}

	if out, errs, code := cli(nil, "exec", "box", "--", "busybox", "id"); code != 0 || !strings.Contains(out, "uid=1000(web)") {
		t.Fatalf("exec id: %d %q %q; want the payload user web", code, out, errs)
	}
	if _, _, code := cli(nil, "exec", "box", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exit 7 came back as %d", code)
	}
	if _, errs, code := cli(nil, "exec", "box", "--", "no-such-command"); code != 127 {
		t.Fatalf("an unknown command exited %d (%q), want 127", code, errs)
	}
	if out, _, code := cli(nil, "exec", "-e", "GREETING=hi there", "-w", "/tmp", "box", "--", "sh", "-c", `echo "$GREETING in $(pwd)"`); code != 0 || out != "hi there in /tmp\n" {
		t.Fatalf("env and workdir: %d %q", code, out)
	}

	// mergen logs -f shows a line the payload prints after the follow
	// started: httpd logs a 404 it had never answered before. The follow
	// is under way once the last line before it has arrived.
	follow := mergenCmd("logs", "-f", "--tail", "1", "box")
	var followed testenv.Log
	follow.Stdout = &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "mergen logs -f to print the last line so far", func() bool { return followed.String() != "" })
	if strings.Contains(followed.String(), "response:404") {
		t.Fatalf("a 404 before the test asked for one: %q", followed.String())
	}
	httpGet(vm.Network.Ports[0].Host, "/no-such-page")
	testenv.Eventually(t, 20*time.Second, "mergen logs -f to show the new 404", func() bool {
		return strings.Contains(followed.String(), "response:404")
	})
	follow.Process.Kill()
	follow.Wait()

	// 10 MiB through cat.
	blob := make([]byte, 10<<20)
	rand.Read(blob)
	out, errs, code := cli(blob, "exec", "-i", "box", "--", "busybox", "cat")
	if code != 0 || sha256.Sum256([]byte(out)) != sha256.Sum256(blob) {
		t.Fatalf("10 MiB through cat: exit %d, %d bytes back (%q)", code, len(out), errs)
	}

	// Ctrl-C stops the remote command.
	sleep := mergenCmd("exec", "box", "--", "busybox", "sleep", "100")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the remote sleep to run", func() bool {
		out, _, _ := cli(nil, "exec", "box", "--", "busybox", "ps")
		return strings.Contains(out, "sleep 100")
	})
	sleep.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- sleep.Wait() }()
	select {
	case <-done:
		if c := sleep.ProcessState.ExitCode(); c != 130 {
			t.Fatalf("Ctrl-C'd sleep exited %d, want 130", c)
		}
	case <-time.After(20 * time.Second):
		sleep.Process.Kill()
		t.Fatal("Ctrl-C did not stop the remote sleep")
	}

	// cp round trip with the mode.
	local := h.path("script.sh")
	os.WriteFile(local, []byte("#!/bin/sh\necho copied\n"), 0o750)
	if _, errs, code := cli(nil, "cp", local, "box:/tmp/script.sh"); code != 0 {
		t.Fatalf("cp in: %d %s", code, errs)
	}
	if out, errs, code := cli(nil, "exec", "-u", "root", "box", "--", "/tmp/script.sh"); out != "copied\n" {
		ls, _, _ := cli(nil, "exec", "box", "--", "busybox", "ls", "-la", "/tmp")
		t.Fatalf("the copied script ran as %q, %q, exit %d; /tmp:\n%s", out, errs, code, ls)
	}
	back := h.path("back.sh")
	if _, errs, code := cli(nil, "cp", "box:/tmp/script.sh", back); code != 0 {
		t.Fatalf("cp out: %d %s", code, errs)
	}
	if fi, err := os.Stat(back); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("copied back: %v %v; want mode 0750", fi, err)
	}
	if got, _ := os.ReadFile(back); string(got) != "#!/bin/sh\necho copied\n" {
		t.Fatalf("copied back %q", got)
	}
	if _, errs, code := cli(nil, "cp", "box:/../../etc/shadow", h.path("shadow")); code == 0 {
		t.Fatalf("a path outside the guest's root was copied (%s)", errs)
	}

	// A terminal, driven through tmux: keys in, the pane read back.
	session := fmt.Sprintf("mergen-exec-%d", os.Getpid())
	env := fmt.Sprintf("MERGEN_API=%s MERGEN_API_TOKEN=%s MGR_API_SOCKET=%s", b.d.base, h.token(t), h.path("no.sock"))
	shell := newTerminal(t, session, 100, 30, "env "+env+" "+vh.mergen+" exec -it box sh")
	shell.waitFor("$") // the remote shell's prompt
	shell.keys("echo $((6*7))", "Enter")
	shell.waitFor("42")
	shell.keys("busybox stty size", "Enter")
	shell.waitFor("30 100")
	shell.resize(120, 40)
	// The new size travels tmux → mergen (SIGWINCH) → the guest's
	// terminal: ask until the answer shows it.
	polls := 0
	testenv.Eventually(t, 30*time.Second, "the resize to reach the guest", func() bool {
		if polls%25 == 0 { // about every half second, ask again
			shell.keys("busybox stty size", "Enter")
		}
		polls++
		return shell.shows("40 120")
	})

	// The interactive serial console, in tmux too: a root shell of the
	// guest's own system; Ctrl-] detaches.
	console := newTerminal(t, session+"-console", 100, 30, "env "+env+" "+vh.mergen+" console box; echo console-ended; sleep 60")
	console.waitFor("detach with Ctrl-]")
	console.keys("echo $((7*6))x; id -u", "Enter")
	console.waitFor("42x")
	if code, raw := b.api(t, "GET", "/v1/vms/"+vm.ID+"/console/attach", nil, nil); code != 409 {
		t.Fatalf("a second console attach answered %d %s; want 409", code, raw)
	}
	console.keys("C-]")
	console.waitFor("console-ended")

	// Twenty at once.
	var wg sync.WaitGroup
	failed := make(chan string, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, errs, code := cli(nil, "exec", "box", "--", "busybox", "echo", fmt.Sprint(i)); code != 0 || out != fmt.Sprintf("%d\n", i) {
				failed <- fmt.Sprintf("exec %d: %d %q %q", i, code, out, errs)
			}
		}()
	}
	wg.Wait()
	close(failed)
	for f := range failed {
		t.Error(f)
	}

	// 100 MiB onto the 48 MiB disk: 507 naming the full disk, nothing
	// partial left, and the guest goes on.
	up, _ := http.NewRequest("PUT", b.d.base+"/v1/vms/"+vm.ID+"/files?path=/www/big", io.LimitReader(zeros{}, 100<<20))
	up.ContentLength = 100 << 20
	up.Header.Set("Content-Type", "application/octet-stream")
	up.Header.Set("Authorization", "Bearer "+h.token(t))
	resp, err := http.DefaultClient.Do(up)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 507 || !strings.Contains(string(body), "no space left") {
		t.Fatalf("100 MiB onto a full guest disk answered %d %s; want 507 saying no space left", resp.StatusCode, body)
	}
	if out, _, _ := cli(nil, "exec", "box", "--", "busybox", "ls", "-a", "/www"); strings.Contains(out, "big") {
		t.Fatalf("the failed upload left a file: %q", out)
	}

	// A command flooding output to a client that reads slowly: the
	// daemon's memory stays bounded and other sessions go on.
	rss := func() int {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.d.cmd.Process.Pid))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				var kb int
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
				return kb
			}
		}
		return 0
	}
	flood := mergenCmd("exec", "box", "--", "busybox", "yes", strings.Repeat("x", 1000))
	pipe, _ := flood.StdoutPipe()
	if err := flood.Start(); err != nil {
		t.Fatal(err)
	}
	before := rss()
	chunk := make([]byte, 64<<10)
	// The reader takes one chunk per whole exec run beside it: slow, and
	// every other session answers meanwhile.
	for i := range 20 {
		io.ReadFull(pipe, chunk)
		want := fmt.Sprintf("still here %d\n", i)
		if out, _, code := cli(nil, "exec", "box", "--", "busybox", "echo", "still", "here", fmt.Sprint(i)); code != 0 || out != want {
			t.Fatalf("beside the flood, exec answered %d %q", code, out)
		}
	}
	if grew := rss() - before; grew > 32<<10 {
		t.Fatalf("the daemon grew by %d KiB while a client read a flood slowly", grew)
	}
	flood.Process.Kill()
	flood.Wait()

	// What the running VM uses, as the host sees it.
	var st wire.Stats
	code, raw = b.api(t, "GET", "/v1/vms/"+vm.ID+"/stats", nil, &st)
	mustStatus(t, code, raw, 200)
	if !st.Running || st.CPUSeconds <= 0 || st.RSSBytes < 16<<20 || st.NetRxBytes == 0 || st.NetTxBytes < 10<<20 || st.NetRxPackets == 0 || st.DiskBytes == 0 {
		t.Fatalf("stats of a running VM that moved 10 MiB each way: %s", raw)
	}
	if out, errs, code := cli(nil, "stats", "--no-stream", "box"); code != 0 || !strings.Contains(out, "box") || !strings.Contains(out, "running") {
		t.Fatalf("mergen stats: %d %q %q", code, out, errs)
	}

	// A stopped VM answers 409.
	code, raw = b.api(t, "POST", "/v1/vms/"+vm.ID+"/stop", nil, nil)
	mustStatus(t, code, raw, 200)
	if _, errs, code := cli(nil, "exec", "box", "--", "true"); code == 0 || !strings.Contains(errs, "409") {
		t.Fatalf("exec in a stopped VM: %d %q; want a 409", code, errs)
	}
	code, raw = b.api(t, "GET", "/v1/vms/"+vm.ID+"/files?path=/etc/passwd", nil, nil)
	if code != 409 {
		t.Fatalf("files of a stopped VM: %d %s", code, raw)
	}
}
