package guest_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"

	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/agentproto"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/proc"
	"github.com/mergenhq/mergen/internal/testenv"
)

// bootLimit bounds one guest's whole life under TCG; a guest that has not
// powered off by then counts as hung.
const bootLimit = 90 * time.Second

// image describes a tiny busybox "container image" written as a payload disk.
type image struct {
	files   map[string]string // path -> content (mode 0755 when it starts with #!)
	meta    *imagemeta.ImageMeta
	runtime *imagemeta.Runtime
	rawMeta string // written instead of meta when set (corrupt JSON)
	noMeta  bool
}

func busyboxImage(entry string) image {
	return image{
		files: map[string]string{
			"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
			"/etc/group":  "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
			"/entry.sh":   entry,
		},
		meta: &imagemeta.ImageMeta{Image: "test", Entrypoint: []string{"/entry.sh"},
			Env: []string{"PATH=/bin", "FOO=image"}, WorkingDir: "/app", User: "app"},
		runtime: &imagemeta.Runtime{Version: 1, Image: "test", Argv: []string{"/entry.sh"},
			Env: []string{"PATH=/bin", "FOO=image", "BAR=image", "BAZ=image"}, WorkingDir: "/app", User: "app"},
	}
}

func mkfs(t *testing.T, dir, label, out string, size string) {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "mkfs.ext4"), "-q", "-F", "-L", label, "-d", dir, out, size)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v\n%s", label, err, b)
	}
}

func (im image) disk(t *testing.T, out string) {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	bb, err := os.ReadFile(testenv.Tool(t, "busybox"))
	must(err)
	must(os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755))
	for _, a := range []string{"sh", "id", "pwd", "sleep", "echo", "cat", "ls", "sync", "ip", "hostname", "grep", "date", "tr", "stat"} {
		must(os.Symlink("busybox", filepath.Join(root, "bin", a)))
	}
	for p, c := range im.files {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(c, "#!") {
			mode = 0o755
		}
		must(os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
		must(os.WriteFile(filepath.Join(root, p), []byte(c), mode))
	}
	// The image's working directory belongs to its user, as a Dockerfile's
	// chown would make it.
	must(os.MkdirAll(filepath.Join(root, "app"), 0o755))
	must(os.Chown(filepath.Join(root, "app"), 1000, 1000))
	md := filepath.Join(root, imagemeta.MetaDir)
	must(os.MkdirAll(md, 0o755))
	if !im.noMeta {
		raw := []byte(im.rawMeta)
		if im.rawMeta == "" {
			raw, _ = json.Marshal(im.meta)
		}
		must(os.WriteFile(filepath.Join(md, imagemeta.ImageMetaFile), raw, 0o644))
	}
	rt, _ := json.Marshal(im.runtime)
	must(os.WriteFile(filepath.Join(md, imagemeta.RuntimeFile), rt, 0o644))
	mkfs(t, root, imagemeta.LabelPayload, out, "16M")
}

// vm is one QEMU TCG guest booted from the base assets.
type vm struct {
	t       *testing.T
	cmd     *exec.Cmd
	qmp     string
	mu      sync.Mutex
	console bytes.Buffer
	lines   chan string
	done    chan error
}

type bootOpts struct {
	payload string
	env     string // env disk image, optional
	data    string // data disk image, optional
	agent   string // agent disk image, optional
	cmdline string // extra kernel parameters
	nic     bool   // a virtio NIC on a QEMU hub with no other port: frames go nowhere
	// agentSock, when set, gives the guest the agent's virtio-serial port,
	// its host side a unix socket QEMU listens on at this path.
	agentSock string
	// netns, when set, runs QEMU in that network namespace with a virtio
	// NIC on its tap device "tap0".
	netns string
}

func boot(t *testing.T, o bootOpts) *vm {
	t.Helper()
	assets := testenv.Assets(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root.ext4")
	copyFile(t, filepath.Join(assets, "golden-rootfs.ext4"), root)
	v := &vm{t: t, qmp: filepath.Join(dir, "qmp.sock"), lines: make(chan string, 1024), done: make(chan error, 1)}
	args := []string{"-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", "256",
		"-nographic", "-nodefaults", "-no-reboot", "-serial", "stdio", "-monitor", "none",
		"-qmp", "unix:" + v.qmp + ",server=on,wait=off",
		"-kernel", filepath.Join(assets, "vmlinuz"), "-initrd", filepath.Join(assets, "initrd.img"),
		"-append", "console=ttyS0 reboot=k panic=1 init=/sbin/init quiet " + o.cmdline,
		"-drive", "file=" + root + ",if=virtio,format=raw",
		"-drive", "file=" + o.payload + ",if=virtio,format=raw,readonly=on",
	}
	if o.env != "" {
		args = append(args, "-drive", "file="+o.env+",if=virtio,format=raw,readonly=on")
	}
	if o.data != "" {
		args = append(args, "-drive", "file="+o.data+",if=virtio,format=raw")
	}
	if o.agent != "" {
		args = append(args, "-drive", "file="+o.agent+",if=virtio,format=raw,readonly=on")
	}
	if o.nic {
		args = append(args, "-netdev", "hubport,id=n0,hubid=0", "-device", "virtio-net-pci,netdev=n0")
	}
	if o.agentSock != "" {
		args = append(args, "-device", "virtio-serial-pci",
			"-chardev", "socket,id=agent0,path="+o.agentSock+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent0,name="+agentproto.SerialName)
	}
	qemu := testenv.Tool(t, "qemu-system-x86_64")
	if o.netns != "" {
		args = append(args, "-netdev", "tap,id=t0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-pci,netdev=t0")
		// ip execs QEMU in the namespace: the process killed at the end
		// is QEMU itself.
		args = append([]string{"netns", "exec", o.netns, qemu}, args...)
		qemu = testenv.Tool(t, "ip")
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	t.Cleanup(cancel)
	v.cmd = exec.CommandContext(ctx, qemu, args...)
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	v.cmd.Stderr = v.cmd.Stdout
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l := strings.TrimRight(sc.Text(), "\r")
			v.mu.Lock()
			v.console.WriteString(l + "\n")
			v.mu.Unlock()
			select {
			case v.lines <- l:
			default:
			}
		}
		close(v.lines)
		v.done <- v.cmd.Wait()
	}()
	t.Cleanup(func() {
		cancel()
		if t.Failed() {
			t.Logf("console:\n%s", v.log())
		}
	})
	return v
}

func (v *vm) log() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.console.String()
}

// waitFor reads console lines until one contains s.
func (v *vm) waitFor(s string) {
	v.t.Helper()
	for l := range v.lines {
		if strings.Contains(l, s) {
			return
		}
	}
	v.t.Fatalf("guest ended before printing %q", s)
}

// wait waits for QEMU to exit (the guest powered off) and returns the console.
func (v *vm) wait() string {
	v.t.Helper()
	for range v.lines {
	}
	if err := <-v.done; err != nil {
		v.t.Fatalf("qemu: %v (a guest that does not power off within %v counts as hung)", err, bootLimit)
	}
	return v.log()
}

// qmpCommand sends one QMP command.
func (v *vm) qmpCommand(cmd string, args any) {
	v.t.Helper()
	c, err := net.Dial("unix", v.qmp)
	if err != nil {
		v.t.Fatalf("qmp: %v", err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	r.ReadString('\n') // greeting
	enc := json.NewEncoder(c)
	enc.Encode(map[string]any{"execute": "qmp_capabilities"})
	r.ReadString('\n')
	enc.Encode(map[string]any{"execute": cmd, "arguments": args})
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			v.t.Fatalf("qmp %s: %v", cmd, err)
		}
		if strings.Contains(l, `"return"`) {
			return
		}
		if strings.Contains(l, `"error"`) {
			v.t.Fatalf("qmp %s: %s", cmd, l)
		}
	}
}

func ctrlAltDel(v *vm) {
	v.qmpCommand("send-key", map[string]any{"keys": []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func envParam(m map[string]string) string {
	b, _ := json.Marshal(m)
	return "mergen.env=" + base64.RawURLEncoding.EncodeToString(b)
}

func skipShort(t *testing.T) {
	t.Helper()
	// Root: the image's files need their owners (mkfs.ext4 -d keeps them).
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("boots a guest under emulation; skipped with -short")
	}
}

func mustContain(t *testing.T, console string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(console, w) {
			t.Errorf("console lacks %q", w)
		}
	}
}

// The payload of the main boot: it reports who and where it runs, leaves
// orphans for PID 1 to reap and counts zombies from inside, writes to its
// root, leaves a background process running, then waits for SIGTERM.
const mainEntry = `#!/bin/sh
echo "id: $(id -u):$(id -g) groups $(id -G)"
echo "pwd: $(pwd)"
echo "env: FOO=$FOO BAR=$BAR BAZ=$BAZ HOME=$HOME"
echo "hostname: $(hostname)"
echo "addr: $(ip -4 -o addr show dev eth0 | grep -o 'inet [0-9./]*')"
echo "route: $(ip route | grep default)"
echo "resolv: $(cat /etc/resolv.conf)"
for i in 1 2 3 4 5; do sh -c 'sleep 0.2 & exit 0'; done
sleep 2
z=0
for f in /proc/[0-9]*/stat; do
  read -r l < "$f" 2>/dev/null || continue
  case "$l" in *") Z "*) z=$((z+1));; esac
done
echo "zombies: $z"
echo private > /app/written
# A daemon left behind holds the console pipe: it must not delay power-off.
sleep 1000 &
sync
trap 'echo "got SIGTERM"; exit 3' TERM
echo ready
while :; do sleep 1; done
`

// TestGuestRunsImageAsItsUserAndStopsOnCtrlAltDel boots the real kernel,
// initramfs and golden rootfs with a payload, env and data disk, and checks
// what the issue asks of one well-formed boot.
func TestGuestRunsImageAsItsUserAndStopsOnCtrlAltDel(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload.ext4")
	busyboxImage(mainEntry).disk(t, payload)
	envDir := t.TempDir()
	os.WriteFile(filepath.Join(envDir, imagemeta.EnvFile), []byte("# from the env disk\nBAR=envdisk\nBAZ=envdisk\n"), 0o644)
	envDisk := filepath.Join(dir, "env.ext4")
	mkfs(t, envDir, imagemeta.LabelEnv, envDisk, "4M")
	data := filepath.Join(dir, "data.ext4")
	mkfs(t, t.TempDir(), imagemeta.LabelData, data, "16M")
	before := fileSum(t, payload)
	// An agent disk whose init differs from the golden rootfs's (one byte
	// appended to the same program): the guest must hand over to it.
	agentDir := t.TempDir()
	init, err := os.ReadFile(filepath.Join(testenv.Assets(t), "bin", "sbin-init"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(agentDir, "sbin-init"), append(init, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(dir, "agent.ext4")
	mkfs(t, agentDir, imagemeta.LabelAgent, agent, "16M")

	sock := agentSocketPath(t)

	// The NIC's only peer is an empty QEMU hub: the guest configures it but
	// nothing it might send leaves QEMU.
	v := boot(t, bootOpts{payload: payload, env: envDisk, data: data, agent: agent, nic: true, agentSock: sock,
		cmdline: "ip=172.31.250.2::172.31.250.1:255.255.255.0:guest1:eth0:off:172.31.250.1 " + envParam(map[string]string{"BAZ": "cmdline"})})
	// A host may connect to the agent before the guest has booted: its
	// request waits in the port until the agent reads it.
	conn := dialAgent(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	pinged := make(chan error, 1)
	go func() { _, err := agentproto.Call(ctx, conn, agentproto.Request{Op: agentproto.OpPing}); pinged <- err }()
	v.waitFor("[payload] ready")
	if err := <-pinged; err != nil {
		t.Errorf("agent ping sent before boot: %v", err)
	}
	ctrlAltDel(v)
	console := v.wait()

	mustContain(t, console,
		"mergen-init: agent disk: running its init",
		"[payload] id: 1000:1000 groups 1000 2000", // the image's user, primary and supplementary groups
		"[payload] pwd: /app",
		"[payload] env: FOO=image BAR=envdisk BAZ=cmdline HOME=/home/app", // image < env disk < mergen.env
		"[payload] hostname: guest1",                                      // from ip=, applied by mergen-init
		"[payload] addr: inet 172.31.250.2/24",
		"[payload] route: default via 172.31.250.1 dev eth0",
		"[payload] resolv: nameserver 172.31.250.1",
		"[payload] zombies: 0",
		"[payload] got SIGTERM",
		"mergen-init: exit status 3",
	)
	if !regexp.MustCompile(`mergen-init: boot timeline: kernel-start->payload-exec [0-9.]+s`).MatchString(console) {
		t.Error("console lacks the boot timeline line")
	}
	if fileSum(t, payload) != before {
		t.Error("the payload disk changed")
	}
	// The writes landed in the VM's own upper layer on its data disk.
	for _, p := range []string{"/upper/app/written"} {
		out, err := exec.Command(testenv.Tool(t, "debugfs"), "-R", "cat "+p, data).Output()
		if err != nil || strings.TrimSpace(string(out)) != "private" {
			t.Errorf("data disk %s = %q (%v), want the payload's write", p, out, err)
		}
	}
}

// TestGuestBadInputPowersOffWithStatus boots one guest per kind of bad input:
// each must print a clear message and power off with a non-zero status.
func TestGuestBadInputPowersOffWithStatus(t *testing.T) {
	skipShort(t)
	ok := "#!/bin/sh\necho should-not-run\n"
	cases := []struct {
		name    string
		image   func() image
		envFile string
		want    []string
	}{
		{"missing image-meta", func() image { im := busyboxImage(ok); im.noMeta = true; return im }, "",
			[]string{"/.mergen/image-meta.json", "no such file", "exit status 78"}},
		{"corrupt image-meta", func() image { im := busyboxImage(ok); im.rawMeta = "{not json"; return im }, "",
			[]string{"image-meta.json is not valid JSON", "exit status 78"}},
		{"missing entrypoint", func() image {
			im := busyboxImage(ok)
			im.runtime.Argv = []string{"/no/such/entry"}
			return im
		}, "", []string{`"/no/such/entry" does not exist in the image`, "exit status 127"}},
		{"unknown user", func() image { im := busyboxImage(ok); im.runtime.User = "ghost"; return im }, "",
			[]string{`user "ghost" does not exist in the image's /etc/passwd`, "exit status 78"}},
		{"malformed env line", func() image { return busyboxImage(ok) }, "GOOD=1\nthis line has no equals\n",
			[]string{"env disk: env file line 2", "is not KEY=VALUE", "exit status 78"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			payload := filepath.Join(dir, "payload.ext4")
			c.image().disk(t, payload)
			o := bootOpts{payload: payload}
			if c.envFile != "" {
				ed := t.TempDir()
				os.WriteFile(filepath.Join(ed, imagemeta.EnvFile), []byte(c.envFile), 0o644)
				o.env = filepath.Join(dir, "env.ext4")
				mkfs(t, ed, imagemeta.LabelEnv, o.env, "4M")
			}
			console := boot(t, o).wait()
			mustContain(t, console, c.want...)
			if strings.Contains(console, "should-not-run") {
				t.Error("the payload ran despite the bad input")
			}
		})
	}
}

// TestGuestRestartsStopsOnPowerButtonAndKillsAfterTimeout checks the restart
// policy, the second stop path (the ACPI power button, QEMU
// system_powerdown) and SIGKILL for a payload that ignores the stop signal.
func TestGuestRestartsStopsOnPowerButtonAndKillsAfterTimeout(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload.ext4")
	// The first run fails and is restarted; the second ignores SIGTERM and
	// must be killed once the stop timeout passes.
	entry := "#!/bin/sh\nn=$(cat /app/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /app/count\necho \"run $n\"\n" +
		"[ $n -lt 2 ] && exit 1\ntrap 'echo \"got SIGTERM, ignoring it\"' TERM\necho ready\nwhile :; do sleep 1; done\n"
	busyboxImage(entry).disk(t, payload)
	v := boot(t, bootOpts{payload: payload, cmdline: "mergen.restart=on-failure mergen.stop_timeout=2"})
	v.waitFor("[payload] ready")
	v.qmpCommand("system_powerdown", map[string]any{})
	console := v.wait()
	mustContain(t, console, "[payload] run 1", "restarting (policy on-failure)", "[payload] run 2",
		"[payload] got SIGTERM, ignoring it", "payload still running after 2s: SIGKILL",
		"mergen-init: exit status 137") // 128 + SIGKILL
}

// The payload of the agent boot: on every start it says which extraEnv and
// hostname it got, then every half second what the guest looks like from
// inside (name, clock, MAC, addresses, default route, the env file's mode,
// owner and content, and what sourcing it gives). Its first run ends, with
// a failure the restart policy answers, once the guest has its new name.
const agentEntry = `#!/bin/sh
n=$(cat /app/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /app/count
echo "run $n: GREETING=$GREETING HOSTNAME=$HOSTNAME"
while :; do
  echo "state: hostname=$(hostname) year=$(date +%Y) mac=$(cat /sys/class/net/eth0/address) addr=$(ip -4 -o addr show dev eth0 | grep -o 'inet [0-9./]*' | tr '\n' ' ')route=$(ip route | grep default)"
  echo "envfile: $(stat -c '%a %u:%g' /run/mergen/env) $(tr '\n' '|' < /run/mergen/env)"
  echo "sourced: $(. /run/mergen/env; echo "$GREETING")"
  [ $n -eq 1 ] && [ "$(hostname)" = newhost ] && exit 1
  sleep 0.5
done
`

// agentSocketPath is where QEMU is to listen for the agent's host side. A
// unix socket's path must fit in 108 bytes: not under t.TempDir().
func agentSocketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mergen-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "agent.sock")
}

// dialAgent connects to the agent socket QEMU listens on.
func dialAgent(t *testing.T, sock string) net.Conn {
	t.Helper()
	var c net.Conn
	testenv.Eventually(t, 30*time.Second, "QEMU's agent socket", func() bool {
		var err error
		c, err = net.Dial("unix", sock)
		return err == nil
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// TestGuestAgentGivesARunningGuestANewIdentity plays the host of a VM
// restored from a snapshot: it tells the running guest, over the
// virtio-serial port, its new name, address, MAC, extraEnv and clock, and
// the payload shows from inside that each took effect.
func TestGuestAgentGivesARunningGuestANewIdentity(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload.ext4")
	busyboxImage(agentEntry).disk(t, payload)
	sock := agentSocketPath(t)

	// The NIC's only peer is an empty QEMU hub: nothing the guest sends
	// leaves QEMU.
	v := boot(t, bootOpts{payload: payload, nic: true, agentSock: sock,
		cmdline: "mergen.restart=on-failure ip=172.31.250.2::172.31.250.1:255.255.255.0:guest1:eth0:off " +
			envParam(map[string]string{"GREETING": "cold boot"})})

	// At cold boot the env file holds the command line's extraEnv, for the
	// image's user alone.
	v.waitFor("[payload] envfile: 600 1000:1000 GREETING='cold boot'|")

	// The agent opened its port before the payload started, with no host
	// connected: it has been waiting for one, as in a restored guest.
	conn := dialAgent(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	start := time.Now()
	if _, err := agentproto.Call(ctx, conn, agentproto.Request{Op: agentproto.OpPing}); err != nil {
		t.Fatalf("ping: %v", err)
	}
	t.Logf("the waiting agent answered a new host in %v", time.Since(start))

	id := agentproto.Identity{Hostname: "newhost", Device: "eth0", Addr: "172.31.251.7/24", Gateway: "172.31.251.1",
		MAC: "52:54:00:12:34:99", Env: map[string]string{"GREETING": "it's a new VM"},
		UnixNano: time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC).UnixNano(), Entropy: make([]byte, 64)}
	if _, err := rand.Read(id.Entropy); err != nil {
		t.Fatal(err)
	}
	// The guest checks what it is sent, and says what is wrong.
	bad := id
	bad.Entropy = id.Entropy[:8]
	if err := agentproto.WriteLine(conn, agentproto.Request{Op: agentproto.OpIdentity, Identity: &bad}); err != nil {
		t.Fatal(err)
	}
	if line, err := agentproto.ReadLine(bufio.NewReader(conn)); err != nil || !strings.Contains(string(line), "entropy: 8 bytes") {
		t.Fatalf("short entropy: the guest answered %q, %v", line, err)
	}

	if _, err := agentproto.Call(ctx, conn, agentproto.Request{Op: agentproto.OpIdentity, Identity: &id}); err != nil {
		t.Fatalf("identity: %v", err)
	}
	v.waitFor("mergen-init: identity applied: hostname newhost, address 172.31.251.7/24")
	// The first run ends once it sees the new name; the restarted payload
	// gets the new extraEnv and hostname in its environment.
	v.waitFor("[payload] run 2: GREETING=it's a new VM HOSTNAME=newhost")
	v.waitFor("[payload] state: hostname=newhost year=2030 mac=52:54:00:12:34:99 addr=inet 172.31.251.7/24 route=default via 172.31.251.1 dev eth0")
	v.waitFor(`[payload] envfile: 600 1000:1000 GREETING='it'\''s a new VM'|`)
	v.waitFor("[payload] sourced: it's a new VM")

	// The host leaves; the next one is served too. One that leaves in the
	// middle of a request leaves nothing behind for the one after it.
	conn.Close()
	conn2 := dialAgent(t, sock)
	if _, err := agentproto.Call(ctx, conn2, agentproto.Request{Op: agentproto.OpPing}); err != nil {
		t.Fatalf("ping on a second connection: %v", err)
	}
	conn2.Write([]byte(`{"op":"identity","identity":{"hostname":"half`))
	conn2.Close()
	conn3 := dialAgent(t, sock)
	if _, err := agentproto.Call(ctx, conn3, agentproto.Request{Op: agentproto.OpPing}); err != nil {
		t.Fatalf("ping after a host left mid-request: %v", err)
	}

	ctrlAltDel(v)
	console := v.wait()
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, "mergen-init:") && (strings.Contains(l, "new VM") || strings.Contains(l, "cold boot")) {
			t.Errorf("mergen-init printed an env value: %q", l)
		}
	}
	mustContain(t, console, "mergen-init: agent: serving org.mergen.agent on /dev/vport")
}

// TestGuestWaitsForItsEnvironmentFromTheAgent plays the host of a VM whose
// extraEnv was too large for the kernel command line
// (mergen.env_from=agent): the guest does not start its payload until the
// host hands the environment over the agent channel, and then the payload
// and its env file have all of it.
func TestGuestWaitsForItsEnvironmentFromTheAgent(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload.ext4")
	busyboxImage(agentEntry).disk(t, payload)
	sock := agentSocketPath(t)
	v := boot(t, bootOpts{payload: payload, nic: true, agentSock: sock,
		cmdline: "ip=172.31.250.2::172.31.250.1:255.255.255.0:guest1:eth0:off mergen.env_from=agent"})

	v.waitFor("mergen-init: waiting for the VM's environment from the host (mergen.env_from=agent)")
	conn := dialAgent(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	if _, err := agentproto.Call(ctx, conn, agentproto.Request{Op: agentproto.OpPing}); err != nil {
		t.Fatalf("ping: %v", err)
	}
	big := strings.Repeat("0123456789abcdef", 256) // 4 KiB: far more than the command line takes
	env := map[string]string{"GREETING": "from the agent", "BIG": big}
	if _, err := agentproto.Call(ctx, conn, agentproto.Request{Op: agentproto.OpEnv, Env: env}); err != nil {
		t.Fatalf("env: %v", err)
	}
	// The payload started only once the environment had come: on the
	// console, the one's line comes before the other's.
	v.waitFor("mergen-init: payload started")
	c := v.log()
	received := strings.Index(c, "mergen-init: agent: environment received (2 variables)")
	if started := strings.Index(c, "mergen-init: payload started"); received < 0 || started < received {
		t.Fatalf("the payload started before its environment came:\n%s", c)
	}
	v.waitFor("[payload] run 1: GREETING=from the agent HOSTNAME=guest1")
	v.waitFor("[payload] envfile: 600 1000:1000 BIG='" + big + "'|GREETING='from the agent'|")

	ctrlAltDel(v)
	console := v.wait()
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, "mergen-init:") && (strings.Contains(l, "from the agent") || strings.Contains(l, "0123456789abcdef")) {
			t.Errorf("mergen-init printed an env value: %q", l)
		}
	}
}

// A guest whose agent port has no host on it leaves the host's processor
// alone: the agent waits for the port to signal a host, so a VM whose
// payload sleeps costs its VMM next to nothing. (An agent that read its
// port again as soon as it read as ended kept the guest's processor busy,
// and QEMU took a whole host CPU, for as long as no host was connected.)
func TestGuestAgentWithNoHostLeavesTheProcessorIdle(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload.ext4")
	busyboxImage("#!/bin/sh\necho sleeping\nexec sleep 3600\n").disk(t, payload)
	v := boot(t, bootOpts{payload: payload, agentSock: agentSocketPath(t)})
	v.waitFor("mergen-init: agent: serving org.mergen.agent on /dev/vport")
	v.waitFor("[payload] sleeping")

	// Processor time, not elapsed time, is what is asserted: a busy host
	// can only make an idle guest's share smaller.
	const window = 3 * time.Second
	pid := v.cmd.Process.Pid
	before, err := proc.UsageOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	<-time.After(window)
	after, err := proc.UsageOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	used := after.CPUSeconds() - before.CPUSeconds()
	t.Logf("QEMU used %.2fs of processor time in %v with the guest idle", used, window)
	if used > window.Seconds()/2 {
		t.Errorf("an idle guest with no host on its agent port kept QEMU busy: %.2fs of processor time in %v", used, window)
	}
	ctrlAltDel(v)
	v.wait()
}
