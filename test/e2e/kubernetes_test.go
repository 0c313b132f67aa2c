package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mergenhq/mergen/internal/demo"
	"github.com/mergenhq/mergen/internal/kubenode"
	"github.com/mergenhq/mergen/internal/kubetest"
	"github.com/mergenhq/mergen/internal/testenv"
	"github.com/mergenhq/mergen/internal/wire"
)

// kubeNode is one mergen host joined to a real control plane: a demo stack
// (daemon, forwarder, the bundled demo image) and mergen-node for it.
type kubeNode struct {
	*demoStack
	cp     *kubetest.ControlPlane
	name   string
	args   []string
	agent  *exec.Cmd // nil while stopped
	exited chan struct{}
	log    string
	logf   *os.File
}

// startKubeControlPlane starts the control plane and grants the mergen:nodes
// group what deploy/kubernetes/node-rbac.yaml grants.
func startKubeControlPlane(t *testing.T) *kubetest.ControlPlane {
	t.Helper()
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: runs a Kubernetes control plane and boots QEMU guests")
	}
	cp := kubetest.Start(t)
	rbac := filepath.Join(testenv.RepoRoot(t), "deploy", "kubernetes", "node-rbac.yaml")
	if out, err := cp.Kubectl(t, "apply", "-f", rbac); err != nil {
		t.Fatalf("apply %s: %v\n%s", rbac, err, out)
	}
	return cp
}

// joinNode starts mergen-node for the stack as node name, with the node
// credentials docs/kubernetes.md describes (system:node:<name> in
// system:nodes and mergen:nodes). allocatable is the memory it offers: the
// reserve is the host's memory less it.
func joinNode(t *testing.T, cp *kubetest.ControlPlane, s *demoStack, name string, allocatable int64) *kubeNode {
	t.Helper()
	mem, err := kubenode.HostMemory()
	if err != nil {
		t.Fatal(err)
	}
	n := &kubeNode{demoStack: s, cp: cp, name: name, log: s.h.path("node-" + name + ".log")}
	n.args = []string{"--name", name, "--kubeconfig", cp.KubeconfigFor(t, "system:node:"+name, "system:nodes", "mergen:nodes"),
		"--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--client-ca", cp.ClientCAFile,
		"--reserve-memory", fmt.Sprint(mem - allocatable), "--insecure-registry",
		"--resync", "5s", "--daemon-check", "1s", "--log-level", "debug", "--log-format", "text"}
	logf, err := os.Create(n.log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.stop(t)
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(n.log)
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			t.Logf("==== node %s log\n%s", name, b)
		}
	})
	n.logf = logf
	n.start(t)
	return n
}

// start runs the node agent and waits until its node is Ready.
func (n *kubeNode) start(t *testing.T) {
	t.Helper()
	n.agent = exec.Command(testenv.Build(t, "./cmd/mergen-node"), n.args...)
	n.agent.Env = n.env()
	n.agent.Stdout, n.agent.Stderr = n.logf, n.logf
	if err := n.agent.Start(); err != nil {
		t.Fatal(err)
	}
	n.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { cmd.Wait(); close(exited) }(n.agent, n.exited)
	testenv.Eventually(t, 60*time.Second, "node "+n.name+" to be Ready", func() bool {
		select {
		case <-n.exited:
			b, _ := os.ReadFile(n.log)
			t.Fatalf("mergen-node %s exited: %s", n.name, b)
		default:
		}
		return nodeReady(t, n.cp, n.name) == corev1.ConditionTrue
	})
}

// stop ends the node agent (SIGTERM) and waits for it.
func (n *kubeNode) stop(t *testing.T) {
	if n.agent == nil {
		return
	}
	n.agent.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(20 * time.Second):
		n.agent.Process.Kill()
		<-n.exited
	}
	n.agent = nil
}

// env is the environment of a mergen command on the stack's host: the
// daemon's settings, and its socket as the API.
func (s *demoStack) env() []string {
	env := os.Environ()
	for k, v := range s.h.env {
		env = append(env, k+"="+v)
	}
	return append(env, "MERGEN_API=unix://"+s.h.env["MGR_API_SOCKET"])
}

func nodeReady(t *testing.T, cp *kubetest.ControlPlane, name string) corev1.ConditionStatus {
	t.Helper()
	return nodeCondition(t, cp, name).Status
}

func nodeCondition(t *testing.T, cp *kubetest.ControlPlane, name string) corev1.NodeCondition {
	t.Helper()
	node, err := cp.Client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return corev1.NodeCondition{}
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c
		}
	}
	return corev1.NodeCondition{}
}

// demoPod is a pod of the demo image that tolerates mergen nodes, with its
// HTTP port and a readiness probe on it; mut changes it.
func demoPod(name, image string, mut func(p *corev1.Pod)) *corev1.Pod {
	grace := int64(5)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			Tolerations:                   []corev1.Toleration{{Key: kubenode.TaintMicroVM, Operator: corev1.TolerationOpEqual, Value: "true", Effect: corev1.TaintEffectNoSchedule}},
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:  "web",
				Image: image,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: demo.Port}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				// Generous: guests boot slowly under TCG, several at once, and
				// a VM that turns unhealthy is restarted (docs/kubernetes.md).
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}},
					PeriodSeconds: 2, TimeoutSeconds: 5, FailureThreshold: 10, InitialDelaySeconds: 180,
				},
			}},
		},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

func createPod(t *testing.T, cp *kubetest.ControlPlane, p *corev1.Pod) {
	t.Helper()
	if _, err := cp.Client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
}

func getPod(t *testing.T, cp *kubetest.ControlPlane, name string) *corev1.Pod {
	t.Helper()
	p, err := cp.Client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s: %v", name, err)
	}
	return p
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitPodReady waits until the pod runs and is Ready, failing at once if it
// fails.
func waitPodReady(t *testing.T, cp *kubetest.ControlPlane, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	testenv.Eventually(t, 4*time.Minute, "pod "+name+" to be Running and Ready", func() bool {
		p = getPod(t, cp, name)
		if p.Status.Phase == corev1.PodFailed {
			t.Fatalf("pod %s failed: %s %s\nevents:\n%s", name, p.Status.Reason, p.Status.Message, podEvents(t, cp, name))
		}
		return p.Status.Phase == corev1.PodRunning && podReady(p)
	})
	return p
}

// podEvents are the pod's events, one "Type Reason: message" line each.
func podEvents(t *testing.T, cp *kubetest.ControlPlane, name string) string {
	t.Helper()
	evs, err := cp.Client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		t.Fatalf("events of %s: %v", name, err)
	}
	var b strings.Builder
	for _, e := range evs.Items {
		fmt.Fprintf(&b, "%s %s: %s\n", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

func waitEvent(t *testing.T, cp *kubetest.ControlPlane, pod, want string) string {
	t.Helper()
	var evs string
	testenv.Eventually(t, 2*time.Minute, fmt.Sprintf("an event of pod %s saying %q", pod, want), func() bool {
		evs = podEvents(t, cp, pod)
		return strings.Contains(evs, want)
	})
	return evs
}

func vmIDOf(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	if len(p.Status.ContainerStatuses) != 1 {
		t.Fatalf("pod %s container statuses %+v", p.Name, p.Status.ContainerStatuses)
	}
	id, ok := strings.CutPrefix(p.Status.ContainerStatuses[0].ContainerID, "mergen://")
	if !ok {
		t.Fatalf("pod %s container id %q", p.Name, p.Status.ContainerStatuses[0].ContainerID)
	}
	return id
}

// vmsOf lists the stack's VMs through its daemon.
func vmsOf(t *testing.T, s *demoStack) []wire.VM {
	t.Helper()
	var list wire.VMList
	code, body := call(t, "GET", s.d.base+"/v1/vms", nil, &list)
	mustStatus(t, code, body, 200)
	return list.VMs
}

// assertNothingLeft checks that VM id left no VM, namespace, tap, nftables
// rule, process or file on the stack's host.
func assertNothingLeft(t *testing.T, s *demoStack, id string) {
	t.Helper()
	for _, vm := range vmsOf(t, s) {
		if vm.ID == id {
			t.Fatalf("the daemon still has VM %s", id)
		}
	}
	short := wire.ShortID(id)
	for _, check := range []struct {
		args []string
		not  string
	}{
		{[]string{"ip", "netns", "list"}, "mergen-" + short},
		{[]string{"ip", "-o", "link", "show"}, short},
		{[]string{"nft", "list", "ruleset"}, short},
		{[]string{"nft", "list", "ruleset"}, "mergen vm " + id},
		{[]string{"ps", "-eo", "args"}, id},
	} {
		out, err := exec.Command(check.args[0], check.args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", check.args, err, out)
		}
		if strings.Contains(string(out), check.not) {
			t.Fatalf("%v still shows %q after the pod's delete:\n%s", check.args, check.not, out)
		}
	}
	for _, f := range rootFiles(s.h) {
		if strings.Contains(f, id) {
			t.Fatalf("file left after the pod's delete: %s", f)
		}
	}
}

// kubectl runs kubectl against the control plane and fails the test on an
// error.
func kubectl(t *testing.T, cp *kubetest.ControlPlane, args ...string) string {
	t.Helper()
	out, err := cp.Kubectl(t, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// TestKubernetesPodLifeOnAMergenNode: a pod that tolerates mergen nodes is
// scheduled onto one, its image is converted and its VM boots; it turns
// Running and Ready when its readiness probe (the VM's health check)
// passes; kubectl logs (-f) shows the payload's output, kubectl exec runs
// id in the guest, its HTTP port answers through the forwarder under the
// pod's name; deleting it leaves nothing on the host.
func TestKubernetesPodLifeOnAMergenNode(t *testing.T) {
	cp := startKubeControlPlane(t)
	s := newDemoStack(t, "172.31.228.0/24")
	t.Cleanup(func() { dumpConsoles(t, s.h) })
	agent := joinNode(t, cp, s, "mergen-1", 2<<30)

	node, err := cp.Client.CoreV1().Nodes().Get(context.Background(), "mergen-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tainted := false // (the node lifecycle controller's not-ready taint may still be there too)
	for _, taint := range node.Spec.Taints {
		tainted = tainted || taint == corev1.Taint{Key: kubenode.TaintMicroVM, Value: "true", Effect: corev1.TaintEffectNoSchedule}
	}
	if node.Labels[kubenode.LabelVMM] != "qemu" || !tainted {
		t.Fatalf("node labels %v taints %v", node.Labels, node.Spec.Taints)
	}
	if got := node.Status.Allocatable.Memory().Value(); got != 2<<30 {
		t.Fatalf("allocatable memory %d, want %d", got, 2<<30)
	}
	testenv.Eventually(t, 30*time.Second, "the node's lease in kube-node-lease", func() bool {
		_, err := cp.Client.CoordinationV1().Leases("kube-node-lease").Get(context.Background(), "mergen-1", metav1.GetOptions{})
		return err == nil
	})

	ctx := context.Background()
	if _, err := cp.Client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "greeting"}, Data: map[string]string{"text": "hello"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "word"}, StringData: map[string]string{"word": "s3cret"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createPod(t, cp, demoPod("web", "oci:"+s.image, func(p *corev1.Pod) {
		c := &p.Spec.Containers[0]
		// command and args replace the image's entrypoint and cmd; env
		// from a literal, a ConfigMap and a Secret reaches the payload,
		// with a value too large for the guest's kernel command line
		// (handed over the agent channel at start).
		c.Command = []string{"/bin/busybox", "sh", "-c"}
		c.Args = []string{`echo "started $GREETING $WORD $LITERAL ${#LARGE}"; exec /bin/busybox httpd -f -v -p 8080 -h /www`}
		c.Env = []corev1.EnvVar{
			{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "greeting"}, Key: "text"}}},
			{Name: "WORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "word"}, Key: "word"}}},
			{Name: "LITERAL", Value: "literally"},
			{Name: "LARGE", Value: strings.Repeat("k", 2000)},
		}
	}))
	p := waitPodReady(t, cp, "web")
	if p.Spec.NodeName != "mergen-1" || p.Status.PodIP == "" || !strings.HasPrefix(p.Status.PodIP, "172.31.228.") {
		t.Fatalf("pod on %q with IP %q", p.Spec.NodeName, p.Status.PodIP)
	}
	id := vmIDOf(t, p)
	evs := podEvents(t, cp, "web")
	for _, want := range []string{"Normal Scheduled", "Normal Converting", "Normal Converted", "Normal Created: VM " + id, "Normal Ready"} {
		if !strings.Contains(evs, want) {
			t.Fatalf("pod events lack %q:\n%s", want, evs)
		}
	}
	vms := vmsOf(t, s)
	if len(vms) != 1 || vms[0].ID != id || vms[0].Tags[kubenode.TagPod] != "web" || vms[0].Tags[kubenode.TagNode] != "mergen-1" ||
		vms[0].MemMiB != 256 || vms[0].VCPU != 1 || vms[0].HTTPPort != demo.Port || vms[0].Restart != "always" {
		t.Fatalf("the daemon's VMs: %+v", vms)
	}

	// kubectl logs shows the payload's output; -f follows it.
	testenv.Eventually(t, 30*time.Second, "kubectl logs to show the payload's first line", func() bool {
		out, _ := cp.Kubectl(t, "logs", "web")
		return strings.Contains(out, "started hello s3cret literally 2000")
	})
	follow := startFollow(t, cp, "web")
	// The HTTP port answers through the forwarder, by the pod's name.
	if code, body := s.get(t, "web"); code != 200 || body != demo.Page {
		t.Fatalf("https://web.%s/ answered %d %q", s.domain, code, body)
	}
	follow.wait(t, "response:200")

	// kubectl exec runs id in the guest, as the image's user.
	if out := kubectl(t, cp, "exec", "web", "--", "id"); !strings.Contains(out, "uid=33(www)") {
		t.Fatalf("kubectl exec web -- id: %q", out)
	}
	// A failing command's status is exec's.
	if out, err := cp.Kubectl(t, "exec", "web", "--", "sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("kubectl exec of exit 3: %v %q", err, out)
	}
	// The node's kubelet endpoint answers only callers the API server
	// vouches for: without credentials, no logs and no exec.
	listen := agent.args[slices.Index(agent.args, "--listen")+1]
	anon := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, path := range []string{"/containerLogs/default/web/web", "/exec/default/web/web?command=id&output=1"} {
		resp, err := anon.Get("https://" + listen + path)
		if err != nil {
			t.Fatalf("GET %s without credentials: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			t.Fatalf("GET %s without credentials answered %d %q, want 401 or 403", path, resp.StatusCode, body)
		}
	}
	// kubectl exec -it: a terminal of the window's size, driven in tmux.
	bin, err := kubetest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	shell := newTerminal(t, fmt.Sprintf("mergen-kube-exec-%d", os.Getpid()), 100, 30, filepath.Join(bin, "kubectl")+" --kubeconfig="+cp.Kubeconfig+" exec -it web -- sh")
	shell.waitFor("$")
	shell.keys("echo $((6*7))", "Enter")
	shell.waitFor("42")
	shell.keys("busybox stty size", "Enter")
	shell.waitFor("30 100")
	shell.keys("exit", "Enter")

	kubectl(t, cp, "delete", "pod", "web", "--wait=true", "--timeout=90s")
	if _, err := cp.Client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("pod web after delete: %v", err)
	}
	assertNothingLeft(t, s, id)
}

// follower is a running `kubectl logs -f`.
type follower struct {
	mu  sync.Mutex
	out strings.Builder
}

func startFollow(t *testing.T, cp *kubetest.ControlPlane, pod string) *follower {
	t.Helper()
	bin, err := kubetest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "kubectl"), "--kubeconfig="+cp.Kubeconfig, "logs", "-f", "--tail=1", pod)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &follower{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f.mu.Lock()
			f.out.WriteString(sc.Text() + "\n")
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); cmd.Wait(); <-done })
	return f
}

// wait waits until the followed output holds want.
func (f *follower) wait(t *testing.T, want string) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("kubectl logs -f to show %q", want), func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return strings.Contains(f.out.String(), want)
	})
}

// TestKubernetesTwoMergenNodes: two mergen hosts (two daemons with their own
// roots on this machine) join one control plane. A Deployment of 4 is
// spread over both by capacity (each offers memory for two of its pods); a
// pod asking for more memory than either has stays Pending with the
// scheduler's reason; killing one daemon keeps its VMs serving, turns its
// node NotReady, and the node is Ready again when the daemon returns.
func TestKubernetesTwoMergenNodes(t *testing.T) {
	cp := startKubeControlPlane(t)
	a := newDemoStack(t, "172.31.227.0/24")
	b := newDemoStack(t, "172.31.226.0/24")
	t.Cleanup(func() { dumpConsoles(t, a.h); dumpConsoles(t, b.h) })
	// 600 MiB each: two pods of 256 MiB fit, a third does not.
	nodes := map[string]*kubeNode{
		"mergen-a": joinNode(t, cp, a, "mergen-a", 600<<20),
		"mergen-b": joinNode(t, cp, b, "mergen-b", 600<<20),
	}

	// One image reference for both nodes: a's copy of the demo image, which
	// b reads too (the two hosts share this machine's file system). Each
	// converts it into its own images root.
	image := "oci:" + a.image

	tmpl := demoPod("", image, nil)
	replicas := int32(4)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}}, Spec: tmpl.Spec},
		},
	}
	ctx := context.Background()
	if _, err := cp.Client.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	testenv.Eventually(t, 6*time.Minute, "the Deployment's 4 pods to be Running and Ready", func() bool {
		list, err := cp.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			t.Fatal(err)
		}
		pods = list.Items
		ready := 0
		for i := range pods {
			if pods[i].Status.Phase == corev1.PodFailed {
				t.Fatalf("pod %s failed: %s %s", pods[i].Name, pods[i].Status.Reason, pods[i].Status.Message)
			}
			if podReady(&pods[i]) {
				ready++
			}
		}
		return ready == 4 && len(pods) == 4
	})
	per := map[string][]string{}
	for _, p := range pods {
		per[p.Spec.NodeName] = append(per[p.Spec.NodeName], p.Name)
	}
	if len(per["mergen-a"]) != 2 || len(per["mergen-b"]) != 2 {
		t.Fatalf("the Deployment's pods by node: %v", per)
	}
	t.Logf("the Deployment's pods by node: %v", per)
	for name, n := range nodes {
		if got := len(vmsOf(t, n.demoStack)); got != 2 {
			t.Fatalf("node %s's daemon has %d VMs, want 2", name, got)
		}
		for _, pod := range per[name] {
			if code, body := n.get(t, pod); code != 200 || body != demo.Page {
				t.Fatalf("pod %s through %s's forwarder: %d %q", pod, name, code, body)
			}
		}
	}

	// More memory than either node has: Pending, with the scheduler's reason.
	createPod(t, cp, demoPod("big", image, func(p *corev1.Pod) {
		big := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("1Gi")}
		p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: big, Limits: big}
	}))
	evs := waitEvent(t, cp, "big", "Insufficient memory")
	if !strings.Contains(evs, "FailedScheduling") {
		t.Fatalf("big's events:\n%s", evs)
	}
	if p := getPod(t, cp, "big"); p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
		t.Fatalf("big is %s on %q", p.Status.Phase, p.Spec.NodeName)
	}

	// Kill node a's daemon: its VMs serve on, its node turns NotReady
	// saying why, and Ready again once the daemon is back.
	if err := a.d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.d.cmd.Wait()
	testenv.Eventually(t, 60*time.Second, "node mergen-a to turn NotReady", func() bool {
		c := nodeCondition(t, cp, "mergen-a")
		return c.Status == corev1.ConditionFalse && c.Reason == "DaemonUnreachable"
	})
	for _, pod := range per["mergen-a"] {
		if code, body := a.get(t, pod); code != 200 || body != demo.Page {
			t.Fatalf("pod %s with its daemon killed: %d %q", pod, code, body)
		}
	}
	a.d = a.h.startBinary(t, a.mergen, freePort(t))
	testenv.Eventually(t, 60*time.Second, "node mergen-a to be Ready again", func() bool {
		return nodeReady(t, cp, "mergen-a") == corev1.ConditionTrue
	})
	for _, pod := range per["mergen-a"] {
		if p := getPod(t, cp, pod); p.Status.Phase != corev1.PodRunning || !podReady(p) {
			t.Fatalf("pod %s after its daemon came back: %s ready=%v", pod, p.Status.Phase, podReady(p))
		}
		if code, _ := a.get(t, pod); code != 200 {
			t.Fatalf("pod %s after its daemon came back: %d", pod, code)
		}
	}

	// Deleting the Deployment (and the pending pod) leaves no VM.
	kubectl(t, cp, "delete", "deployment", "web", "--wait=true")
	kubectl(t, cp, "delete", "pod", "big", "--wait=true")
	testenv.Eventually(t, 2*time.Minute, "every pod of the Deployment to be gone", func() bool {
		list, err := cp.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0
	})
	for name, n := range nodes {
		testenv.Eventually(t, time.Minute, "node "+name+"'s VMs to be deleted", func() bool { return len(vmsOf(t, n.demoStack)) == 0 })
	}
}

// TestKubernetesBadInput: each pod mergen cannot run fails with an event
// naming what is wrong, and nothing is made on the host for it; a pod
// without the toleration is never placed on a mergen node; a node started
// without usable credentials stops at once saying so, registering nothing.
func TestKubernetesBadInput(t *testing.T) {
	cp := startKubeControlPlane(t)
	s := newDemoStack(t, "172.31.225.0/24")
	t.Cleanup(func() { dumpConsoles(t, s.h) })

	// A node without credentials, and one whose user RBAC does not know.
	run := func(args ...string) (string, error) {
		cmd := exec.Command(testenv.Build(t, "./cmd/mergen-node"), append([]string{"--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t))}, args...)...)
		cmd.Env = append(s.env(), "KUBECONFIG=")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("--name", "no-creds"); err == nil || !strings.Contains(out, "no Kubernetes credentials: give --kubeconfig") {
		t.Fatalf("node without credentials: %v\n%s", err, out)
	}
	if out, err := run("--name", "stranger", "--kubeconfig", cp.KubeconfigFor(t, "stranger")); err == nil || !strings.Contains(out, "may not read nodes") || !strings.Contains(out, "node-rbac.yaml") {
		t.Fatalf("node whose user RBAC does not know: %v\n%s", err, out)
	}
	for _, n := range []string{"no-creds", "stranger"} {
		if _, err := cp.Client.CoreV1().Nodes().Get(context.Background(), n, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("node %s registered anyway: %v", n, err)
		}
	}

	joinNode(t, cp, s, "mergen-bad", 2<<30)
	// An image that does not exist, in a real registry on loopback.
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	missing := strings.TrimPrefix(reg.URL, "http://") + "/nothing/here:1"

	image := "oci:" + s.image
	cases := []struct {
		pod, reason, message string
		mut                  func(p *corev1.Pod)
	}{
		{"two-containers", kubenode.ReasonUnsupported, "spec.containers: 2 containers; a mergen pod is one microVM running exactly one container", func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "sidecar", Image: image})
		}},
		{"host-path", kubenode.ReasonUnsupported, `spec.volumes[0] "etc": hostPath volumes are not supported by mergen`, func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "etc", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc"}}}}
		}},
		{"missing-image", kubenode.ReasonImageFailed, "image " + missing + ":", func(p *corev1.Pod) {
			p.Spec.Containers[0].Image = missing
		}},
		{"tiny", kubenode.ReasonUnsupported, "spec.containers[0].resources.limits.memory: 64Mi is below mergen's minimum of 128Mi", func(p *corev1.Pod) {
			tiny := corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}
			p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: tiny, Limits: tiny}
		}},
	}
	for _, c := range cases {
		createPod(t, cp, demoPod(c.pod, image, c.mut))
	}

	for _, c := range cases {
		var p *corev1.Pod
		testenv.Eventually(t, 2*time.Minute, "pod "+c.pod+" to fail", func() bool {
			p = getPod(t, cp, c.pod)
			return p.Status.Phase == corev1.PodFailed
		})
		if p.Status.Reason != c.reason || !strings.Contains(p.Status.Message, c.message) {
			t.Fatalf("pod %s failed with %q %q, want %q and a message with %q", c.pod, p.Status.Reason, p.Status.Message, c.reason, c.message)
		}
		waitEvent(t, cp, c.pod, "Warning "+c.reason+": "+c.message)
	}

	// Without the toleration the pod is never placed: the scheduler says
	// the node's taint is not tolerated. The node's only taint by now is
	// mergen's (the pods above, which tolerate it alone, were placed).
	node, err := cp.Client.CoreV1().Nodes().Get(context.Background(), "mergen-bad", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(node.Spec.Taints) != 1 || node.Spec.Taints[0].Key != kubenode.TaintMicroVM {
		t.Fatalf("node taints %+v", node.Spec.Taints)
	}
	createPod(t, cp, demoPod("no-toleration", image, func(p *corev1.Pod) { p.Spec.Tolerations = nil }))
	waitEvent(t, cp, "no-toleration", "FailedScheduling: 0/1 nodes are available: 1 node(s) had untolerated taint")
	if p := getPod(t, cp, "no-toleration"); p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
		t.Fatalf("no-toleration is %s on %q", p.Status.Phase, p.Spec.NodeName)
	}

	// Nothing was made on the host: no VM, and no image directory for the
	// image that was not there.
	if vms := vmsOf(t, s); len(vms) != 0 {
		t.Fatalf("VMs made for refused pods: %+v", vms)
	}
	for _, f := range rootFiles(s.h) {
		if strings.Contains(f, "nothing/here") || strings.Contains(f, strings.Split(missing, "/")[0]) {
			t.Fatalf("left behind by the failed conversion: %s", f)
		}
	}
}

// TestKubernetesNodeAgentRestartConverges: while a node agent is down, a
// pod is force-deleted from Kubernetes and another pod's VM disappears.
// The restarted agent adopts the VM of the pod that is still there (no new
// VM), removes the VM Kubernetes forgot, and fails the pod whose VM is gone,
// so that its controller would replace it.
func TestKubernetesNodeAgentRestartConverges(t *testing.T) {
	cp := startKubeControlPlane(t)
	s := newDemoStack(t, "172.31.224.0/24")
	t.Cleanup(func() { dumpConsoles(t, s.h) })
	n := joinNode(t, cp, s, "mergen-r", 2<<30)
	image := "oci:" + s.image
	ids := map[string]string{}
	for _, name := range []string{"keep", "forgotten", "lost"} {
		createPod(t, cp, demoPod(name, image, nil))
	}
	for _, name := range []string{"keep", "forgotten", "lost"} {
		ids[name] = vmIDOf(t, waitPodReady(t, cp, name))
	}

	n.stop(t)
	kubectl(t, cp, "delete", "pod", "forgotten", "--force", "--grace-period=0")
	code, body := call(t, "DELETE", s.d.base+"/v1/vms/"+ids["lost"], nil, nil)
	mustStatus(t, code, body, 200)
	n.start(t)

	testenv.Eventually(t, time.Minute, "the forgotten pod's VM to be removed", func() bool {
		for _, vm := range vmsOf(t, s) {
			if vm.ID == ids["forgotten"] {
				return false
			}
		}
		return true
	})
	assertNothingLeft(t, s, ids["forgotten"])
	waitEvent(t, cp, "keep", "Normal Adopted")
	if p := getPod(t, cp, "keep"); p.Status.Phase != corev1.PodRunning || !podReady(p) || vmIDOf(t, p) != ids["keep"] {
		t.Fatalf("keep after the restart: %s ready=%v %+v", p.Status.Phase, podReady(p), p.Status.ContainerStatuses)
	}
	var lost *corev1.Pod
	testenv.Eventually(t, time.Minute, "the pod whose VM is gone to fail", func() bool {
		lost = getPod(t, cp, "lost")
		return lost.Status.Phase == corev1.PodFailed
	})
	if lost.Status.Reason != kubenode.ReasonVMGone || !strings.Contains(lost.Status.Message, ids["lost"]) {
		t.Fatalf("lost failed with %q %q", lost.Status.Reason, lost.Status.Message)
	}
	if vms := vmsOf(t, s); len(vms) != 1 || vms[0].ID != ids["keep"] {
		t.Fatalf("VMs after the restart: %+v", vms)
	}
}
