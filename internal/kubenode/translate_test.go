package kubenode

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mergenhq/mergen/internal/wire"
)

// pod is a one-container pod with the demo image; mut changes it.
func pod(mut func(p *corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "u-1"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.test/web:1"}}},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

func c0(p *corev1.Pod) *corev1.Container { return &p.Spec.Containers[0] }

func TestTranslateMapsAPodOntoOneVM(t *testing.T) {
	grace := int64(7)
	p := pod(func(p *corev1.Pod) {
		p.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
		p.Spec.TerminationGracePeriodSeconds = &grace
		p.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
		c := c0(p)
		c.Command = []string{"/bin/busybox"}
		c.Args = []string{"httpd", "-f"}
		c.Env = []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "B", Value: "two words"}, {Name: "A", Value: "later wins"}}
		c.Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("300M")}
		c.Ports = []corev1.ContainerPort{{ContainerPort: 9090, Protocol: corev1.ProtocolUDP}, {ContainerPort: 8443}, {Name: "http", ContainerPort: 8080, HostPort: 30080}}
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
			PeriodSeconds: 5, TimeoutSeconds: 2, FailureThreshold: 4, InitialDelaySeconds: 3}
	})
	plan, err := Translate(p, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	want := wire.CreateRequest{
		AutoStart: true,
		Tags:      map[string]string{TagNode: "node-a", TagNamespace: "shop", TagPod: "web", TagUID: "u-1", wire.NameTag: "web"},
		VCPU:      2, MemMiB: 287, // 1500m rounds up to 2 vCPUs; 300M = 286.1 MiB rounds up
		ExtraEnv: map[string]string{"A": "later wins", "B": "two words"},
		Ports:    []wire.Port{{Guest: 9090, Protocol: "udp"}, {Guest: 8443, Protocol: "tcp"}, {Guest: 8080, Host: 30080, Protocol: "tcp"}},
		HTTPPort: 8080, // the port named http wins over the first TCP port
		Restart:  "on-failure",
		HealthCheck: &wire.HealthCheck{HTTP: &wire.HTTPHealthCheck{Port: 8080, Path: "/healthz"},
			IntervalSeconds: 5, TimeoutSeconds: 2, Retries: 4, StartPeriodSeconds: 3},
		BootArgs: "mergen.stop_timeout=7",
	}
	if !reflect.DeepEqual(plan.Request, want) {
		t.Fatalf("request\n got %+v\nwant %+v", plan.Request, want)
	}
	if plan.Image != "registry.test/web:1" || !reflect.DeepEqual(plan.PullSecrets, []string{"regcred"}) || plan.ImageHTTPPort {
		t.Fatalf("plan %+v", plan)
	}
	if got := Argv([]string{"/entry"}, []string{"cmd"}, plan.Command, plan.Args); !reflect.DeepEqual(got, []string{"/bin/busybox", "httpd", "-f"}) {
		t.Fatalf("argv %q", got)
	}
}

func TestTranslateDefaults(t *testing.T) {
	plan, err := Translate(pod(nil), "n")
	if err != nil {
		t.Fatal(err)
	}
	r := plan.Request
	if r.VCPU != DefaultVCPU || r.MemMiB != DefaultMemMiB || r.Restart != "always" || r.HealthCheck != nil ||
		r.ExtraEnv != nil || r.Ports != nil || r.BootArgs != "mergen.stop_timeout=30" || !plan.ImageHTTPPort {
		t.Fatalf("defaults: %+v", plan)
	}
	// Requests size the VM when there are no limits; a pod name that is not
	// a DNS label leaves the VM unnamed.
	plan, err = Translate(pod(func(p *corev1.Pod) {
		p.Name = "web.v2"
		c0(p).Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("1Gi")}
	}), "n")
	if err != nil {
		t.Fatal(err)
	}
	if plan.Request.VCPU != 1 || plan.Request.MemMiB != 1024 || plan.Request.Tags[wire.NameTag] != "" || plan.Request.Tags[TagPod] != "web.v2" {
		t.Fatalf("requests: %+v", plan.Request)
	}
}

func TestArgvCombinesCommandAndArgsAsKubernetesDoes(t *testing.T) {
	ep, cmd := []string{"/docker-entrypoint.sh"}, []string{"nginx", "-g", "daemon off;"}
	cases := []struct {
		name          string
		command, args []string
		want          []string
	}{
		{"neither: the image's own", nil, nil, nil},
		{"command drops the image's cmd", []string{"/bin/sh"}, nil, []string{"/bin/sh"}},
		{"args replace the cmd", nil, []string{"-v"}, []string{"/docker-entrypoint.sh", "-v"}},
		{"both", []string{"/bin/sh", "-c"}, []string{"echo hi"}, []string{"/bin/sh", "-c", "echo hi"}},
	}
	for _, c := range cases {
		if got := Argv(ep, cmd, c.command, c.args); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// A payload command line the guest's kernel command line cannot carry is
// refused once the image is known, naming the pod's command and args.
func TestAPayloadArgvTooLongForTheGuestIsRefused(t *testing.T) {
	ep := []string{"/docker-entrypoint.sh"}
	plan := Plan{Args: []string{"-v"}}
	if argv, err := plan.PayloadArgv(ep, nil); err != nil || !reflect.DeepEqual(argv, []string{"/docker-entrypoint.sh", "-v"}) {
		t.Fatalf("PayloadArgv = %q, %v; want the image's entrypoint and the pod's args", argv, err)
	}
	plan.Args = []string{strings.Repeat("x", 400)}
	if argv, err := plan.PayloadArgv(ep, nil); err == nil || !strings.Contains(err.Error(), "spec.containers[0].command/args") || !strings.Contains(err.Error(), "at most 512") {
		t.Fatalf("PayloadArgv = %q, %v; want an error naming command/args and the bound", argv, err)
	}
}

// serviceLinks is what the pod controller adds to a container's env for
// one service of the pod's namespace with one TCP port, as Kubernetes
// does.
func serviceLinks(name, ip string, port int) []corev1.EnvVar {
	n := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	p := fmt.Sprint(port)
	url := "tcp://" + ip + ":" + p
	return []corev1.EnvVar{
		{Name: n + "_SERVICE_HOST", Value: ip}, {Name: n + "_SERVICE_PORT", Value: p},
		{Name: n + "_PORT", Value: url}, {Name: n + "_PORT_" + p + "_TCP", Value: url},
		{Name: n + "_PORT_" + p + "_TCP_PROTO", Value: "tcp"}, {Name: n + "_PORT_" + p + "_TCP_PORT", Value: p},
		{Name: n + "_PORT_" + p + "_TCP_ADDR", Value: ip},
	}
}

// An environment too large to give the guest is refused before the image
// is converted, naming the field and, while the pod lets Kubernetes add
// its namespace's services, how to leave those out. One that only passes
// the kernel command line's bound is not: it goes over the agent channel.
func TestAnEnvironmentTooLargeForTheGuestIsRefusedBeforeConversion(t *testing.T) {
	env := []corev1.EnvVar{{Name: "MODE", Value: "prod"}}
	env = append(env, serviceLinks("kubernetes", "10.96.0.1", 443)...)
	for _, svc := range []string{"orders-api", "payments-api"} {
		env = append(env, serviceLinks(svc, "10.96.12.34", 8080)...)
	}
	if plan, err := Translate(pod(func(p *corev1.Pod) { c0(p).Env = env }), "n"); err != nil || len(plan.Request.ExtraEnv) != 22 {
		t.Fatalf("three services' variables (past what the command line takes): %d variables, %v; want all 22 taken", len(plan.Request.ExtraEnv), err)
	}
	env = append(env, corev1.EnvVar{Name: "CONFIG", Value: strings.Repeat("x", 32<<10)})
	_, err := Translate(pod(func(p *corev1.Pod) { c0(p).Env = env }), "n")
	if err == nil || !strings.Contains(err.Error(), "spec.containers[0].env: 23 variables") || !strings.Contains(err.Error(), "at most 32768") ||
		!strings.Contains(err.Error(), "unless the pod sets enableServiceLinks to false") {
		t.Fatalf("error %v; want one naming spec.containers[0].env, its size, the bound and enableServiceLinks", err)
	}
	off := false
	_, err = Translate(pod(func(p *corev1.Pod) { c0(p).Env = env; p.Spec.EnableServiceLinks = &off }), "n")
	if err == nil || !strings.Contains(err.Error(), "spec.containers[0].env") || strings.Contains(err.Error(), "enableServiceLinks") {
		t.Fatalf("with enableServiceLinks false: %v; want the size refused without the hint", err)
	}
}

func TestTranslateProbes(t *testing.T) {
	tcp := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(5432)}}}
	exec := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"pg_isready"}}}}
	// Liveness alone is the check.
	plan, err := Translate(pod(func(p *corev1.Pod) { c0(p).LivenessProbe = tcp }), "n")
	if err != nil || plan.Request.HealthCheck == nil || !reflect.DeepEqual(plan.Request.HealthCheck.TCP, &wire.TCPHealthCheck{Port: 5432}) || len(plan.Notes) != 0 {
		t.Fatalf("liveness: %+v %v", plan, err)
	}
	// Both, different: readiness is the check, and a note says so.
	plan, err = Translate(pod(func(p *corev1.Pod) { c0(p).LivenessProbe, c0(p).ReadinessProbe = tcp, exec }), "n")
	if err != nil || plan.Request.HealthCheck.Exec == nil || len(plan.Notes) != 1 || !strings.Contains(plan.Notes[0], "readinessProbe") {
		t.Fatalf("both: %+v %v", plan, err)
	}
	// Both the same: no note.
	plan, err = Translate(pod(func(p *corev1.Pod) { c0(p).LivenessProbe, c0(p).ReadinessProbe = tcp, tcp.DeepCopy() }), "n")
	if err != nil || len(plan.Notes) != 0 {
		t.Fatalf("same: %+v %v", plan, err)
	}
}

// Every pod mergen cannot run is refused with the field that says why.
func TestTranslateRefusesWhatAMicroVMCannotHonour(t *testing.T) {
	cases := []struct {
		name string
		mut  func(p *corev1.Pod)
		want string
	}{
		{"two containers", func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "sidecar", Image: "x"})
		}, "spec.containers: 2 containers"},
		{"no container", func(p *corev1.Pod) { p.Spec.Containers = nil }, "spec.containers: 0 containers"},
		{"init containers", func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{{Name: "i", Image: "x"}} }, "spec.initContainers"},
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "spec.hostNetwork"},
		{"hostPath volume", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc"}}}}
		}, `spec.volumes[0] "data": hostPath volumes are not supported`},
		{"pvc volume", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "tok", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}},
				{Name: "db", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "db"}}}}
		}, `spec.volumes[1] "db": persistentVolumeClaim volumes`},
		{"memory below the minimum", func(p *corev1.Pod) {
			c0(p).Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}
		}, "spec.containers[0].resources.limits.memory: 64Mi is below mergen's minimum of 128Mi"},
		{"requested memory below the minimum", func(p *corev1.Pod) {
			c0(p).Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("100Mi")}
		}, "spec.containers[0].resources.requests.memory: 100Mi is below mergen's minimum of 128Mi"},
		{"too many CPUs", func(p *corev1.Pod) {
			c0(p).Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("33")}
		}, "spec.containers[0].resources.limits.cpu: 33 vCPUs"},
		{"sctp port", func(p *corev1.Pod) {
			c0(p).Ports = []corev1.ContainerPort{{ContainerPort: 9, Protocol: corev1.ProtocolSCTP}}
		}, "spec.containers[0].ports[0].protocol: SCTP"},
		{"env name the guest cannot carry", func(p *corev1.Pod) {
			c0(p).Env = []corev1.EnvVar{{Name: "my.var", Value: "1"}}
		}, `spec.containers[0].env[0]: "my.var" is not a shell variable name`},
		{"grpc probe", func(p *corev1.Pod) {
			c0(p).ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9}}}
		}, "spec.containers[0].readinessProbe.grpc"},
		{"probe on an unknown named port", func(p *corev1.Pod) {
			c0(p).Ports = []corev1.ContainerPort{{Name: "web", ContainerPort: 80}}
			c0(p).LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromString("admin")}}}
		}, `spec.containers[0].livenessProbe.httpGet.port: no container port is named "admin" (named: web)`},
		{"stdin", func(p *corev1.Pod) { c0(p).Stdin = true }, "spec.containers[0].stdin/tty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Translate(pod(c.mut), "n")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// The volumes Kubernetes adds on its own, and emptyDir, are accepted.
func TestTranslateAcceptsTheServiceAccountVolumeAndEmptyDir(t *testing.T) {
	_, err := Translate(pod(func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{
			{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}}},
				{DownwardAPI: &corev1.DownwardAPIProjection{}},
			}}}},
			{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		}
	}), "n")
	if err != nil {
		t.Fatal(err)
	}
}

func TestFirstMissingIsWhatMakingTheImageDirectoryCreates(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "registry.test"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ dir, want string }{
		{filepath.Join(root, "registry.test", "app:1"), filepath.Join(root, "registry.test", "app:1")},
		{filepath.Join(root, "other.test", "team", "app:1"), filepath.Join(root, "other.test")},
		{filepath.Join(root, "registry.test"), ""},
		{root, ""},
		{filepath.Join(root, "..", "elsewhere"), ""},
	}
	for _, c := range cases {
		if got := firstMissing(root, c.dir); got != c.want {
			t.Errorf("firstMissing(%s) = %q, want %q", c.dir, got, c.want)
		}
	}
}
