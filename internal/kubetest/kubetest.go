// Package kubetest runs a real Kubernetes control plane for tests: etcd,
// kube-apiserver, kube-scheduler and kube-controller-manager, as built by
// `make kube` (scripts/build-kube.sh), started on 127.0.0.1 with free ports
// and certificates made for the test, and stopped when the test ends.
//
// Only loopback is used. The apiserver is told to reach kubelets by their
// InternalIP only, so nodes registered in tests must report 127.0.0.1: the
// apiserver dials that address for `kubectl logs` and `kubectl exec`.
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/mergenhq/mergen/internal/testenv"
)

// Version is the Kubernetes release scripts/build-kube.sh builds and the
// client libraries in go.mod speak to.
const Version = "v1.37.2"

// Binaries are the programs `make kube` builds into BinDir.
var Binaries = []string{"etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubectl"}

// ControlPlane is a running control plane owned by one test.
type ControlPlane struct {
	Dir        string               // per-test temp dir with certs, kubeconfigs, logs
	Server     string               // https://127.0.0.1:PORT
	Kubeconfig string               // admin (system:masters) kubeconfig path
	Client     kubernetes.Interface // admin clientset

	RESTConfig   *rest.Config // the admin client's configuration, for other clients
	CAFile       string       // the CA that signed the apiserver's certificate and every client certificate
	ClientCAFile string       // the CA the apiserver trusts for clients (the same CA; a kubelet verifies the apiserver's client certificate with it)

	bin   string
	ca    *authority
	mu    sync.Mutex
	users int
	procs []*process // in start order; stopped in reverse
}

// Start runs etcd, the apiserver, the scheduler and the controller-manager,
// and returns when the apiserver is ready and the `default` service account
// exists (pods cannot be created before). Everything stops when the test
// ends, the apiserver before etcd; if the test failed, the tail of each
// component's log (kept in Dir) is printed.
func Start(t testing.TB) *ControlPlane {
	t.Helper()
	bin, err := BinDir()
	if err != nil {
		t.Skipf("SKIPPED: %s needs the Kubernetes control plane binaries (%v); run `make kube`", t.Name(), err)
	}
	began := time.Now()
	cp := &ControlPlane{Dir: t.TempDir(), bin: bin}
	// Registered before the processes' stop, so it runs after it and shows
	// how each component ended.
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(cp.logTails(40))
		}
	})
	t.Cleanup(func() {
		began := time.Now()
		cp.stop()
		t.Logf("kubetest: control plane stopped in %v", time.Since(began).Round(10*time.Millisecond))
	})

	ca, err := newAuthority()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	cp.ca = ca
	cp.CAFile = cp.path("ca.crt")
	cp.ClientCAFile = cp.CAFile
	if err := os.WriteFile(cp.CAFile, ca.certPEM, 0o644); err != nil {
		t.Fatalf("kubetest: %v", err)
	}

	ports, err := freePorts(3)
	if err != nil {
		t.Fatalf("kubetest: free ports: %v", err)
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	cp.Server = "https://127.0.0.1:" + strconv.Itoa(ports[2])

	cp.run(t, "etcd",
		"--name=kubetest",
		"--data-dir="+cp.path("etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		// The data is thrown away with the test.
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	cp.waitFor(t, "etcd to be healthy", func() bool {
		resp, err := http.Get(etcdURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	serving, err := ca.server("kube-apiserver",
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		[]net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	// The apiserver's own client certificate for kubelets (logs, exec).
	kubeletClient, err := ca.client("kube-apiserver-kubelet-client", []string{"system:masters"})
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	saKey, err := newKey()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	saKeyPEM, err := keyPEM(saKey)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	saPubPEM, err := publicKeyPEM(saKey.Public())
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	for name, data := range map[string][]byte{
		"apiserver.crt": serving.certPEM, "apiserver.key": serving.keyPEM,
		"kubelet-client.crt": kubeletClient.certPEM, "kubelet-client.key": kubeletClient.keyPEM,
		"sa.key": saKeyPEM, "sa.pub": saPubPEM,
	} {
		if err := writeSecret(cp.path(name), data); err != nil {
			t.Fatalf("kubetest: %v", err)
		}
	}

	cp.run(t, "kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(ports[2]),
		// The default reconciler refuses a loopback advertise address.
		"--endpoint-reconciler-type=none",
		"--cert-dir="+cp.path("apiserver"),
		"--tls-cert-file="+cp.path("apiserver.crt"),
		"--tls-private-key-file="+cp.path("apiserver.key"),
		"--client-ca-file="+cp.CAFile,
		"--anonymous-auth=false",
		// As a real cluster: nodes are confined to their own objects.
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+cp.path("sa.pub"),
		"--service-account-signing-key-file="+cp.path("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--kubelet-client-certificate="+cp.path("kubelet-client.crt"),
		"--kubelet-client-key="+cp.path("kubelet-client.key"),
		// Never a node's hostname, which could resolve off this machine.
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
	)

	cp.Kubeconfig = cp.KubeconfigFor(t, "kubetest-admin", "system:masters")
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		t.Fatalf("kubetest: admin kubeconfig: %v", err)
	}
	// Tests create objects in bursts; the default 5 requests/s would make
	// them wait on the client, not on the cluster.
	cfg.QPS, cfg.Burst = 100, 200
	cp.RESTConfig = cfg
	if cp.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatalf("kubetest: admin client: %v", err)
	}

	// The scheduler and the controller-manager under their own identities,
	// which the apiserver's bootstrap RBAC roles already grant.
	cp.run(t, "kube-scheduler",
		"--kubeconfig="+cp.KubeconfigFor(t, "system:kube-scheduler"),
		"--leader-elect=false",
		"--secure-port=0",
	)
	cp.run(t, "kube-controller-manager",
		"--kubeconfig="+cp.KubeconfigFor(t, "system:kube-controller-manager"),
		"--leader-elect=false",
		"--secure-port=0",
		// Each controller gets its service account's permissions, not the
		// controller-manager's (which are only enough to mint those).
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+cp.path("sa.key"),
		"--root-ca-file="+cp.CAFile,
	)
	// Started together, the three come up side by side: the scheduler and
	// the controller-manager wait for the apiserver themselves.
	cp.waitFor(t, "the apiserver's /readyz", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		body, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok"
	})

	// The service account controller makes it; the ServiceAccount
	// admission plugin refuses pods in a namespace until it exists.
	cp.waitFor(t, "the default service account", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cp.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	})
	t.Logf("kubetest: control plane %s at %s ready in %v (logs in %s)", Version, cp.Server, time.Since(began).Round(10*time.Millisecond), cp.Dir)
	return cp
}

// KubeconfigFor writes a kubeconfig (mode 0600, in Dir) whose client
// certificate names user and groups, signed by the CA the apiserver trusts:
// for node credentials and RBAC tests. What the user may do is up to RBAC
// (and, for system:node:NAME in group system:nodes, the Node authorizer).
func (cp *ControlPlane) KubeconfigFor(t testing.TB, user string, groups ...string) string {
	t.Helper()
	if user == "" {
		t.Fatal("kubetest: KubeconfigFor: empty user")
	}
	cert, err := cp.ca.client(user, groups)
	if err != nil {
		t.Fatalf("kubetest: KubeconfigFor %q: %v", user, err)
	}
	cp.mu.Lock()
	cp.users++
	n := cp.users
	cp.mu.Unlock()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: cp.Server, CertificateAuthorityData: cp.ca.certPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert.certPEM, ClientKeyData: cert.keyPEM}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: user}
	cfg.CurrentContext = "kubetest"
	path := cp.path(fmt.Sprintf("kubeconfig-%02d-%s", n, fileSafe(user)))
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("kubetest: KubeconfigFor %q: %v", user, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatalf("kubetest: KubeconfigFor %q: %v", user, err)
	}
	return path
}

// Kubectl runs kubectl (the one `make kube` built, of Version) with the
// admin kubeconfig and returns its standard output; a failure's error
// carries its standard error.
func (cp *ControlPlane) Kubectl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(cp.bin, "kubectl"),
		append([]string{"--kubeconfig=" + cp.Kubeconfig, "--cache-dir=" + cp.path("kubectl-cache")}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// BinDir is where the control plane binaries are: MERGEN_KUBE_BIN, else
// .build/kube/bin in the repository (`make kube`). It is an error when any
// of Binaries is missing there or cannot be run.
func BinDir() (string, error) {
	dir := testenv.KubeBinOverride()
	if dir == "" {
		var err error
		if dir, err = testenv.RepoPath(".build", "kube", "bin"); err != nil {
			return "", err
		}
	}
	for _, b := range Binaries {
		if _, err := exec.LookPath(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("no usable %s in %s: %w", b, filepath.Clean(dir), err)
		}
	}
	return filepath.Clean(dir), nil
}

func (cp *ControlPlane) path(name string) string { return filepath.Join(cp.Dir, name) }

// waitFor polls cond, failing at once if a component has exited: a
// component that died will not become ready.
func (cp *ControlPlane) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 2*time.Minute, what, func() bool {
		for _, p := range cp.procs {
			select {
			case <-p.done:
				t.Fatalf("kubetest: %s exited while waiting for %s: %v (log %s)", p.name, what, p.err, p.log)
			default:
			}
		}
		return cond()
	})
}

// process is a running component; its output goes to Dir/NAME.log.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when it has exited
	err  error         // why, once done is closed

	killed bool // by stop, after SIGTERM's grace ran out
}

func (cp *ControlPlane) run(t testing.TB, name string, args ...string) {
	t.Helper()
	p := &process{name: name, log: cp.path(name + ".log"), done: make(chan struct{})}
	out, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatalf("kubetest: %s: %v", name, err)
	}
	p.cmd = exec.Command(filepath.Join(cp.bin, name), args...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{
		// A test binary that dies (a timeout's panic runs no cleanups)
		// takes its control plane with it.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := spawn(p.cmd); err != nil {
		out.Close()
		t.Fatalf("kubetest: start %s: %v", name, err)
	}
	cp.procs = append(cp.procs, p)
	go func() {
		p.err = p.cmd.Wait()
		out.Close()
		close(p.done)
	}()
}

// Stop grace per component: enough for a clean shutdown; past it the
// process is killed.
const stopGrace = 30 * time.Second

// stop ends the components in reverse start order: the controllers, then
// the apiserver, then etcd (an apiserver whose etcd is gone hangs for long
// before it exits).
func (cp *ControlPlane) stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		p := cp.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopGrace):
			p.killed = true
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	cp.procs = nil
}

// logTails is the end of each component's log, for a failed test.
func (cp *ControlPlane) logTails(lines int) string {
	var b strings.Builder
	for _, name := range Binaries {
		path := cp.path(name + ".log")
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var tail []string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if len(line) > 400 {
				line = line[:400] + "…"
			}
			if tail = append(tail, line); len(tail) > lines {
				tail = tail[1:]
			}
		}
		f.Close()
		fmt.Fprintf(&b, "\n--- last %d lines of %s ---\n%s\n", len(tail), path, strings.Join(tail, "\n"))
	}
	return b.String()
}

// freePorts finds n distinct free loopback ports, holding all of them open
// until all are found so none is handed out twice.
func freePorts(n int) ([]int, error) {
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func fileSafe(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// spawn starts cmd from one OS thread that lives as long as the process.
// Pdeathsig fires when the thread that forked the child exits, not the
// process, and Go ends threads (one locked by a goroutine that exits
// without unlocking, as namespace-switching code does); a component started
// from such a thread would be killed in the middle of a test.
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread stays
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error)
	spawnReqs <- spawnReq{cmd, done}
	return <-done
}
