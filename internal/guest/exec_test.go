package guest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mergenhq/mergen/internal/execclient"
	"github.com/mergenhq/mergen/internal/execproto"
	"github.com/mergenhq/mergen/internal/testenv"
	"golang.org/x/sys/unix"
)

// execFixture is the exec agent serving a busybox root on loopback, as
// mergen-init serves the payload's root, with its own child waits (the
// test binary is no PID 1).
type execFixture struct {
	root   string
	server *execServer
	target execclient.Target
	mu     sync.Mutex
	secret []byte // the guest's copy
}

func newExecFixture(t *testing.T, opts ...func(*execServer)) *execFixture {
	t.Helper()
	testenv.RequireRoot(t) // chroot, and files owned by the image's user
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(root, 0o755))
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	bb, err := os.ReadFile(testenv.Tool(t, "busybox"))
	must(err)
	must(os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755))
	for _, a := range []string{"sh", "id", "pwd", "sleep", "echo", "cat", "stty", "env"} {
		must(os.Symlink("busybox", filepath.Join(root, "bin", a)))
	}
	must(os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\napp:x:1000:\n"), 0o644))
	for _, d := range []string{"app", "tmp"} {
		must(os.MkdirAll(filepath.Join(root, d), 0o777))
		must(os.Chmod(filepath.Join(root, d), 0o777))
	}
	// Executable by root alone: the image's user gets "permission denied".
	must(os.WriteFile(filepath.Join(root, "bin/rootonly"), []byte("#!/bin/sh\necho no\n"), 0o700))

	f := &execFixture{root: root}
	env := func(home string) []string {
		return PayloadEnv([]string{"PATH=/bin", "FOO=image"}, nil, []string{"EXTRA=vm"}, home, "guest")
	}
	secret := func() []byte {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.secret
	}
	f.server = newExecServer(root, Cred{UID: 1000, GID: 1000, Home: "/home/app"}, "/app", env, secret, newChildren(true))
	for _, o := range opts {
		o(f.server)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	t.Cleanup(func() { l.Close() })
	go f.server.serve(l)
	host := make([]byte, execproto.SecretLen)
	rand.Read(host)
	f.target = execclient.Target{VM: "vm-test", Addr: l.Addr().String(), Secret: host,
		Deliver: func(_ context.Context, s []byte) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.secret = append([]byte(nil), s...)
			return nil
		}}
	return f
}

type result struct {
	stdout, stderr string
	exit           execproto.Exit
	err            error
}

// run runs req with stdin as its input (when not nil) and collects all.
func (f *execFixture) run(t *testing.T, req execclient.Request, stdin io.Reader) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req.Stdin = stdin != nil
	s, err := execclient.Exec(ctx, f.target, req)
	if err != nil {
		return result{err: err}
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
	return result{out.String(), errb.String(), exit, err}
}

func TestExecAgentRunsCommandsInTheRoot(t *testing.T) {
	f := newExecFixture(t)
	// The guest has no secret yet: the first dial delivers the host's.
	r := f.run(t, execclient.Request{Argv: []string{"id"}}, nil)
	if r.err != nil || !strings.Contains(r.stdout, "uid=1000(app) gid=1000(app)") || r.exit.Code != 0 {
		t.Fatalf("id: %+v", r)
	}
	r = f.run(t, execclient.Request{Argv: []string{"sh", "-c", `echo "$FOO $EXTRA $REQ $HOME $(pwd)"; echo oops >&2; exit 7`}, Env: []string{"REQ=req", "FOO=over"}}, nil)
	if r.err != nil || r.stdout != "over vm req /home/app /app\n" || r.stderr != "oops\n" || r.exit.Code != 7 {
		t.Errorf("env, stderr and status: %+v", r)
	}
	r = f.run(t, execclient.Request{Argv: []string{"id", "-u"}, User: "0", Workdir: "/tmp"}, nil)
	if r.err != nil || r.stdout != "0\n" {
		t.Errorf("as root: %+v", r)
	}
	r = f.run(t, execclient.Request{Argv: []string{"no-such-command"}}, nil)
	if r.err != nil || r.exit.Code != 127 || !strings.Contains(r.stderr, "no-such-command") {
		t.Errorf("unknown command: %+v", r)
	}
	r = f.run(t, execclient.Request{Argv: []string{"/bin/rootonly"}}, nil)
	if r.err != nil || r.exit.Code != 126 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("not executable for the user: %+v", r)
	}
	r = f.run(t, execclient.Request{Argv: []string{"id"}, User: "ghost"}, nil)
	if r.err == nil || !strings.Contains(r.err.Error(), `user \"ghost\" does not exist`) {
		t.Errorf("unknown user: %+v", r)
	}
	r = f.run(t, execclient.Request{Argv: []string{"pwd"}, Workdir: "/nowhere"}, nil)
	if r.err == nil || !strings.Contains(r.err.Error(), "working directory /nowhere") {
		t.Errorf("missing workdir: %+v", r)
	}
}

func TestExecAgentStreamsLargeInputWithItsDigest(t *testing.T) {
	f := newExecFixture(t)
	data := make([]byte, 10<<20)
	rand.Read(data)
	r := f.run(t, execclient.Request{Argv: []string{"cat"}}, bytes.NewReader(data))
	if r.err != nil || r.exit.Code != 0 {
		t.Fatalf("cat: %v %+v", r.err, r.exit)
	}
	if sha256.Sum256([]byte(r.stdout)) != sha256.Sum256(data) {
		t.Errorf("cat returned %d bytes, not the %d sent", len(r.stdout), len(data))
	}
}

func TestExecAgentTerminalSizeAndResize(t *testing.T) {
	f := newExecFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := execclient.Exec(ctx, f.target, execclient.Request{Argv: []string{"sh", "-c", "stty size; read x; stty size"}, TTY: true, Cols: 120, Rows: 40, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := bufio.NewReader(s.Stdout())
	expectLine(t, out, "40 120")
	if err := s.Resize(100, 30); err != nil {
		t.Fatal(err)
	}
	// The resize frame comes before the input that lets the command go on.
	s.Stdin().Write([]byte("go\n"))
	expectLine(t, out, "30 100")
	exit, err := s.Wait()
	if err != nil || exit.Code != 0 {
		t.Errorf("exit %+v, %v", exit, err)
	}
}

func expectLine(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	for {
		l, err := r.ReadString('\n')
		if strings.TrimRight(l, "\r\n") == want {
			return
		}
		if err != nil {
			t.Fatalf("no line %q in the output: %v", want, err)
		}
	}
}

func TestExecAgentSignalsAndHangsUp(t *testing.T) {
	f := newExecFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := execclient.Exec(ctx, f.target, execclient.Request{Argv: []string{"sleep", "100"}})
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, s.Stderr())
	go io.Copy(io.Discard, s.Stdout())
	if err := s.Signal("INT"); err != nil {
		t.Fatal(err)
	}
	exit, err := s.Wait()
	if err != nil || exit.Code != 130 || exit.Signal != "INT" {
		t.Errorf("SIGINT: exit %+v, %v", exit, err)
	}
	s.Close()

	// A host that leaves: the command's group gets SIGHUP, and SIGKILL
	// after the grace when it ignores it.
	s, err = execclient.Exec(ctx, f.target, execclient.Request{Argv: []string{"sh", "-c", "trap '' HUP; echo $$ > /tmp/pid; echo started; while :; do sleep 1; done"}})
	if err != nil {
		t.Fatal(err)
	}
	expectLine(t, bufio.NewReader(s.Stdout()), "started")
	b, err := os.ReadFile(filepath.Join(f.root, "tmp/pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	s.Close()
	testenv.Eventually(t, 10*time.Second, "the abandoned command to be killed", func() bool {
		return unix.Kill(pid, 0) == unix.ESRCH
	})
}

func TestExecAgentRefusesWrongSecretAndBoundsSessions(t *testing.T) {
	var srv *execServer
	f := newExecFixture(t, func(s *execServer) { s.slots = make(chan struct{}, 1); srv = s })
	f.Deliver(t)
	bad := f.target
	bad.Secret = bytes.Repeat([]byte{1}, execproto.SecretLen)
	bad.Deliver = nil
	_, err := execclient.Dial(context.Background(), bad)
	if !errors.Is(err, execproto.ErrRefused) || !strings.Contains(err.Error(), "vm-test") {
		t.Errorf("wrong secret: %v", err)
	}
	// The host hears the refusal before the guest's handler has returned
	// and given its slot back.
	testenv.Eventually(t, 5*time.Second, "the refused session's slot to be free", func() bool { return len(srv.slots) == 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := execclient.Exec(ctx, f.target, execclient.Request{Argv: []string{"sleep", "100"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = execclient.Dial(ctx, f.target)
	if err == nil || !strings.Contains(err.Error(), "too many exec sessions") {
		t.Errorf("a session over the bound: %v", err)
	}
}

// Deliver gives the guest the host's secret, as a first dial would.
func (f *execFixture) Deliver(t *testing.T) {
	f.target.Deliver(context.Background(), f.target.Secret)
}

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func makeTar(t *testing.T, entries ...tarEntry) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Linkname: e.link, Uid: 1000, Gid: 1000, ModTime: time.Unix(1700000000, 0)}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return &b
}

func TestFilesRoundTripWithModesAndStayInTheRoot(t *testing.T) {
	f := newExecFixture(t)
	f.Deliver(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in := makeTar(t,
		tarEntry{name: "d/", typ: tar.TypeDir, mode: 0o750},
		tarEntry{name: "d/run.sh", typ: tar.TypeReg, mode: 0o4711, body: "#!/bin/sh\necho hi\n"},
		tarEntry{name: "d/link", typ: tar.TypeSymlink, link: "run.sh", mode: 0o777},
		tarEntry{name: "d/hard", typ: tar.TypeLink, link: "d/run.sh"},
	)
	if err := execclient.WriteFiles(ctx, f.target, "/app/new", in); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(f.root, "app/new/d/run.sh"))
	if err != nil || st.Mode() != 0o711|os.ModeSetuid || st.Sys().(*syscall.Stat_t).Uid != 1000 || st.ModTime().Unix() != 1700000000 {
		t.Fatalf("extracted file: %v %v", st, err)
	}
	if l, _ := os.Readlink(filepath.Join(f.root, "app/new/d/link")); l != "run.sh" {
		t.Errorf("link: %q", l)
	}
	if hst, err := os.Stat(filepath.Join(f.root, "app/new/d/hard")); err != nil || !os.SameFile(st, hst) {
		t.Errorf("hard link: %v", err)
	}

	var out bytes.Buffer
	if err := execclient.ReadFiles(ctx, f.target, "/app/new/d", &out); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	tr := tar.NewReader(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		got[h.Name] = strconv.FormatInt(h.Mode, 8) + " " + string(body) + h.Linkname
	}
	for name, want := range map[string]string{"d/": "750 ", "d/run.sh": "4711 #!/bin/sh\necho hi\n", "d/link": "777 run.sh", "d/hard": "4711 #!/bin/sh\necho hi\n"} {
		if got[name] != want {
			t.Errorf("read back %s: %q, want %q", name, got[name], want)
		}
	}

	// Links that point out of the root resolve inside it.
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "victim"), []byte("host secret"), 0o644)
	os.Symlink(filepath.Join(outside, "victim"), filepath.Join(f.root, "app/tohost"))
	os.Symlink(outside, filepath.Join(f.root, "app/hostdir"))
	out.Reset()
	if err := execclient.ReadFiles(ctx, f.target, "/app/tohost", &out); err == nil || strings.Contains(out.String(), "host secret") {
		t.Errorf("read through a link to the host: %v, %q", err, out.String())
	}
	// The link's target does not exist in the root: the write fails
	// there, and nothing lands on the host.
	err = execclient.WriteFiles(ctx, f.target, "/app/hostdir", makeTar(t, tarEntry{name: "planted", typ: tar.TypeReg, mode: 0o644, body: "x"}))
	if _, serr := os.Stat(filepath.Join(outside, "planted")); serr == nil {
		t.Errorf("a write followed a link out of the root (%v)", err)
	}
	// Once it exists in the root, the write lands there.
	os.MkdirAll(filepath.Join(f.root, outside), 0o755)
	if err := execclient.WriteFiles(ctx, f.target, "/app/hostdir", makeTar(t, tarEntry{name: "planted", typ: tar.TypeReg, mode: 0o644, body: "x"})); err != nil {
		t.Errorf("write through a link inside the root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.root, outside, "planted")); err != nil {
		t.Errorf("the write through the link is not in the root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "planted")); err == nil {
		t.Error("a write followed a link out of the root")
	}
	for name, tr := range map[string]*bytes.Buffer{
		"leaves the directory": makeTar(t, tarEntry{name: "../../../escape", typ: tar.TypeReg, mode: 0o644, body: "x"}),
		"device nodes":         makeTar(t, tarEntry{name: "null", typ: tar.TypeChar, mode: 0o666}),
		"outside the tar":      makeTar(t, tarEntry{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}),
	} {
		if err := execclient.WriteFiles(ctx, f.target, "/app", tr); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("refused %s: %v", name, err)
		}
	}
	if err := execclient.ReadFiles(ctx, f.target, "/app/../../etc/passwd", io.Discard); err == nil || !strings.Contains(err.Error(), `".." is refused`) {
		t.Errorf("a path with ..: %v", err)
	}
}

func TestFilesFullDiskLeavesNoPartialFile(t *testing.T) {
	f := newExecFixture(t)
	f.Deliver(t)
	small := filepath.Join(f.root, "small")
	os.Mkdir(small, 0o755)
	if err := unix.Mount("tmpfs", small, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(small, unix.MNT_DETACH) })
	os.WriteFile(filepath.Join(small, "big"), []byte("old"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := execclient.WriteFiles(ctx, f.target, "/small", makeTar(t, tarEntry{name: "big", typ: tar.TypeReg, mode: 0o644, body: strings.Repeat("x", 1<<20)}))
	if err == nil || !strings.Contains(err.Error(), "/small/big") || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("full disk: %v", err)
	}
	ents, _ := os.ReadDir(small)
	if len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
	if b, _ := os.ReadFile(filepath.Join(small, "big")); string(b) != "old" {
		t.Errorf("the old file became %d bytes", len(b))
	}
}
