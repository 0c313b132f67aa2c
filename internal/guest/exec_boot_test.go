package guest_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
	"github.com/mergenhq/mergen/internal/execclient"
	"github.com/mergenhq/mergen/internal/execproto"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/testenv"
)

// testNetns makes a network namespace holding only a tap "tap0" with the
// guest's gateway address: the guest's traffic ends there, and the test
// reaches the guest only from inside it.
func testNetns(t *testing.T) string {
	t.Helper()
	ip := testenv.Tool(t, "ip")
	name := fmt.Sprintf("mergen-exectest-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { exec.Command(ip, "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "up")
	run("-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap")
	run("-n", name, "addr", "add", "172.31.250.1/24", "dev", "tap0")
	run("-n", name, "link", "set", "tap0", "up")
	return name
}

// TestGuestExecAgentOverTCP plays the daemon's part: it delivers the VM's
// secret over the agent port when the guest refuses it, then runs
// commands and copies files over TCP from inside the VM's namespace.
func TestGuestExecAgentOverTCP(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload.ext4")
	busyboxImage("#!/bin/sh\necho ready\nwhile :; do sleep 1; done\n").disk(t, payload)
	// This tree's init on the agent disk: it takes over from the golden
	// rootfs's, which may predate the exec agent.
	agentDir := t.TempDir()
	copyFile(t, testenv.Build(t, "./cmd/mergen-init"), filepath.Join(agentDir, "sbin-init"))
	os.Chmod(filepath.Join(agentDir, "sbin-init"), 0o755)
	agent := filepath.Join(dir, "agent.ext4")
	mkfs(t, agentDir, imagemeta.LabelAgent, agent, "32M")
	sockDir, err := os.MkdirTemp("", "mergen-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "agent.sock")
	ns := testNetns(t)

	v := boot(t, bootOpts{payload: payload, agent: agent, agentSock: sock, netns: ns,
		cmdline: "ip=172.31.250.2::172.31.250.1:255.255.255.0:guest1:eth0:off"})
	v.waitFor("mergen-init: exec: listening on port 10022")
	v.waitFor("[payload] ready")

	secret := make([]byte, execproto.SecretLen)
	rand.Read(secret)
	delivered := 0
	target := execclient.Target{VM: "boot-test", Netns: ns, Addr: fmt.Sprintf("172.31.250.2:%d", execproto.Port), Secret: secret,
		Deliver: func(ctx context.Context, s []byte) error {
			delivered++
			conn := dialAgent(t, sock)
			defer conn.Close()
			_, err := agentproto.Call(ctx, conn, agentproto.Request{Op: agentproto.OpSecret, Secret: s})
			return err
		}}
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()

	// No secret in the guest yet, and none delivered: refused.
	noDeliver := target
	noDeliver.Deliver = nil
	if _, err := execclient.Dial(ctx, noDeliver); !errors.Is(err, execproto.ErrRefused) {
		t.Fatalf("before delivery: %v", err)
	}
	run := func(req execclient.Request, stdin io.Reader) (string, string, execproto.Exit) {
		t.Helper()
		req.Stdin = stdin != nil
		s, err := execclient.Exec(ctx, target, req)
		if err != nil {
			t.Fatalf("exec %q: %v", req.Argv, err)
		}
		defer s.Close()
		if stdin != nil {
			go func() { io.Copy(s.Stdin(), stdin); s.Stdin().Close() }()
		}
		var out, errb bytes.Buffer
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); io.Copy(&out, s.Stdout()) }()
		go func() { defer wg.Done(); io.Copy(&errb, s.Stderr()) }()
		exit, err := s.Wait()
		wg.Wait()
		if err != nil {
			t.Fatalf("exec %q: %v", req.Argv, err)
		}
		return out.String(), errb.String(), exit
	}

	out, _, exit := run(execclient.Request{Argv: []string{"id"}}, nil)
	if !strings.HasPrefix(out, "uid=1000(app) gid=1000(app)") || exit.Code != 0 || delivered != 1 {
		t.Errorf("id: %q %+v after %d deliveries", out, exit, delivered)
	}
	if _, _, exit := run(execclient.Request{Argv: []string{"sh", "-c", "exit 7"}}, nil); exit.Code != 7 {
		t.Errorf("exit 7: %+v", exit)
	}
	if _, stderr, exit := run(execclient.Request{Argv: []string{"no-such-thing"}}, nil); exit.Code != 127 || !strings.Contains(stderr, "no-such-thing") {
		t.Errorf("unknown command: %+v %q", exit, stderr)
	}

	// A terminal of the size asked, resized.
	s, err := execclient.Exec(ctx, target, execclient.Request{Argv: []string{"sh", "-c", "stty size; read x; stty size"}, TTY: true, Cols: 120, Rows: 40, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	tty := bufio.NewReader(s.Stdout())
	waitLine(t, tty, "40 120")
	s.Resize(100, 30)
	s.Stdin().Write([]byte("go\n"))
	waitLine(t, tty, "30 100")
	if exit, err := s.Wait(); err != nil || exit.Code != 0 {
		t.Errorf("tty exit %+v, %v", exit, err)
	}
	s.Close()

	// 10 MiB through cat, intact.
	data := make([]byte, 10<<20)
	rand.Read(data)
	start := time.Now()
	out, _, exit = run(execclient.Request{Argv: []string{"cat"}}, bytes.NewReader(data))
	if exit.Code != 0 || sha256.Sum256([]byte(out)) != sha256.Sum256(data) {
		t.Errorf("cat: %d bytes back of %d, exit %+v", len(out), len(data), exit)
	}
	t.Logf("10 MiB through cat in %v", time.Since(start))

	// SIGINT stops a sleep.
	s, err = execclient.Exec(ctx, target, execclient.Request{Argv: []string{"sleep", "100"}})
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, s.Stdout())
	go io.Copy(io.Discard, s.Stderr())
	s.Signal("INT")
	if exit, err := s.Wait(); err != nil || exit.Code != 130 || exit.Signal != "INT" {
		t.Errorf("SIGINT: %+v, %v", exit, err)
	}
	s.Close()

	// A file in and out, with its mode.
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "tool.sh", Typeflag: tar.TypeReg, Mode: 0o750, Size: 19, Uid: 1000, Gid: 1000})
	tw.Write([]byte("#!/bin/sh\necho hi\n\n"))
	tw.Close()
	if err := execclient.WriteFiles(ctx, target, "/app/in", &tb); err != nil {
		t.Fatalf("write: %v", err)
	}
	if out, _, _ := run(execclient.Request{Argv: []string{"/app/in/tool.sh"}}, nil); out != "hi\n" {
		t.Errorf("the written script ran with %q", out)
	}
	var rb bytes.Buffer
	if err := execclient.ReadFiles(ctx, target, "/app/in/tool.sh", &rb); err != nil {
		t.Fatalf("read: %v", err)
	}
	h, err := tar.NewReader(&rb).Next()
	if err != nil || h.Name != "tool.sh" || h.Mode != 0o750 || h.Uid != 1000 || h.Size != 19 {
		t.Errorf("read back: %+v, %v", h, err)
	}
	if err := execclient.ReadFiles(ctx, target, "/app/../../../etc/passwd", io.Discard); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("a path out of the root: %v", err)
	}

	wrong := noDeliver
	wrong.Secret = bytes.Repeat([]byte{9}, execproto.SecretLen)
	if _, err := execclient.Dial(ctx, wrong); !errors.Is(err, execproto.ErrRefused) {
		t.Errorf("wrong secret: %v", err)
	}

	ctrlAltDel(v)
	console := v.wait()
	if strings.Contains(console, string(secret)) {
		t.Error("the secret reached the console")
	}
}

func waitLine(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	for {
		l, err := r.ReadString('\n')
		if strings.TrimRight(l, "\r\n") == want {
			return
		}
		if err != nil {
			t.Fatalf("no line %q: %v", want, err)
		}
	}
}
