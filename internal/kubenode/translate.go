package kubenode

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mergenhq/mergen/internal/bootparam"
	"github.com/mergenhq/mergen/internal/envfile"
	"github.com/mergenhq/mergen/internal/wire"
)

// Tags every VM the node creates carries: they tie the VM to its node and
// pod, so that a restarted node agent finds its VMs again and removes those
// whose pod is gone.
const (
	TagNode      = "mergen.io/node"
	TagNamespace = "mergen.io/pod-namespace"
	TagPod       = "mergen.io/pod-name"
	TagUID       = "mergen.io/pod-uid"
)

// Sizing of a pod's VM: the defaults when the pod gives no resources, and
// the bounds the daemon accepts (manager's DefaultVCPU, MinMemMiB, …,
// restated here because the node agent does not link the manager; the
// daemon checks them again).
const (
	DefaultVCPU   = 1
	MaxVCPU       = 32
	DefaultMemMiB = 512
	MinMemMiB     = 128
	MaxMemMiB     = 256 * 1024
)

// Plan is what a pod becomes: the image to convert, the registry
// credentials to use for it, and the VM to create from the converted
// payload disk (its PayloadDisk is filled in once the image is converted).
type Plan struct {
	Image       string
	PullSecrets []string // names of the pod's imagePullSecrets, in its namespace
	Request     wire.CreateRequest
	// Command and Args are the container's: they replace the image's
	// entrypoint and cmd (see Argv) once the image's are known.
	Command, Args []string
	// ImageHTTPPort says the HTTP port is the image's hint (no container
	// port was given): the converter's runtime metadata fills it in.
	ImageHTTPPort bool
	// Notes are what the translation decided that the pod's owner should
	// hear about (a probe that cannot be honoured as written), recorded as
	// events.
	Notes []string
}

// container0 names the pod's one container in errors.
const container0 = "spec.containers[0]"

// labelRe is a DNS label: what the forwarder routes and the daemon accepts
// as a VM name.
var labelRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Translate maps a pod onto a VM request. It needs no I/O: the image is
// converted, and ConfigMap and Secret references are resolved, before it
// is called (the pod controller resolves env references into values).
// Anything mergen cannot honour is an error naming the pod's field.
func Translate(pod *corev1.Pod, node string) (Plan, error) {
	s := &pod.Spec
	if n := len(s.Containers); n != 1 {
		return Plan{}, fmt.Errorf("spec.containers: %d containers; a mergen pod is one microVM running exactly one container", n)
	}
	if len(s.InitContainers) > 0 {
		return Plan{}, fmt.Errorf("spec.initContainers: not supported by mergen (a pod is one microVM running one container)")
	}
	if len(s.EphemeralContainers) > 0 {
		return Plan{}, fmt.Errorf("spec.ephemeralContainers: not supported by mergen")
	}
	if s.HostNetwork || s.HostPID || s.HostIPC {
		return Plan{}, fmt.Errorf("spec.hostNetwork/hostPID/hostIPC: a mergen pod is a microVM with a network of its own; host namespaces cannot be shared")
	}
	for i, v := range s.Volumes {
		if err := checkVolume(v); err != nil {
			return Plan{}, fmt.Errorf("spec.volumes[%d] %q: %w", i, v.Name, err)
		}
	}
	c := &s.Containers[0]
	field := container0
	if c.Image == "" {
		return Plan{}, fmt.Errorf("%s.image: empty", field)
	}
	if c.Stdin || c.TTY {
		return Plan{}, fmt.Errorf("%s.stdin/tty: attaching to the payload is not supported (use kubectl exec)", field)
	}
	for i, d := range c.VolumeDevices {
		return Plan{}, fmt.Errorf("%s.volumeDevices[%d] %q: block devices are not supported by mergen", field, i, d.Name)
	}
	if len(c.EnvFrom) > 0 {
		// The pod controller resolves envFrom into env before the provider
		// sees the pod; one left here is one it could not resolve.
		return Plan{}, fmt.Errorf("%s.envFrom: unresolved", field)
	}

	p := Plan{Image: c.Image}
	for _, ref := range s.ImagePullSecrets {
		if ref.Name != "" {
			p.PullSecrets = append(p.PullSecrets, ref.Name)
		}
	}
	r := &p.Request
	r.AutoStart = true
	r.Tags = map[string]string{
		TagNode:      node,
		TagNamespace: pod.Namespace,
		TagPod:       pod.Name,
		TagUID:       string(pod.UID),
	}
	// The pod's name is the VM's name: its forwarder label and guest
	// hostname. A name that is not a DNS label (pods may have dots) leaves
	// the VM unnamed; it is then reached by id.
	if labelRe.MatchString(pod.Name) {
		r.Tags[wire.NameTag] = pod.Name
	}

	var err error
	if r.VCPU, r.MemMiB, err = sizing(c, field); err != nil {
		return Plan{}, err
	}
	if r.ExtraEnv, err = environment(c, field); err != nil {
		return Plan{}, err
	}
	if err := envFits(r.ExtraEnv, s, field); err != nil {
		return Plan{}, err
	}
	p.Command, p.Args = c.Command, c.Args
	if r.Ports, r.HTTPPort, err = ports(c, field); err != nil {
		return Plan{}, err
	}
	p.ImageHTTPPort = r.HTTPPort == 0
	if r.Restart, err = restart(s.RestartPolicy); err != nil {
		return Plan{}, err
	}
	if r.HealthCheck, p.Notes, err = probes(c, field); err != nil {
		return Plan{}, err
	}
	// The payload gets the pod's grace period between its stop signal and
	// SIGKILL (mergen-init's stop timeout, 1..3600 s).
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if s.TerminationGracePeriodSeconds != nil {
		grace = *s.TerminationGracePeriodSeconds
	}
	r.BootArgs = fmt.Sprintf("mergen.stop_timeout=%d", min(max(grace, 1), 3600))
	return p, nil
}

// Argv is what the VM runs, as Kubernetes combines a container's command and
// args with its image's entrypoint and cmd: command replaces the entrypoint
// and drops the cmd; args replace the cmd. Nil when the pod overrides
// neither (the image's own argv runs).
func Argv(entrypoint, cmd, command, args []string) []string {
	switch {
	case len(command) == 0 && len(args) == 0:
		return nil
	case len(command) > 0:
		return append(append([]string{}, command...), args...)
	}
	return append(append([]string{}, entrypoint...), args...)
}

// checkVolume accepts the volumes a microVM can honour: emptyDir (the
// guest's writable layer already is one) and the service account token
// volume Kubernetes adds to every pod (not mounted: the guest has no route
// to the API server, see docs/kubernetes.md).
func checkVolume(v corev1.Volume) error {
	switch {
	case v.EmptyDir != nil:
		if v.EmptyDir.Medium != "" && v.EmptyDir.Medium != corev1.StorageMediumMemory {
			return fmt.Errorf("emptyDir medium %q is not supported (supported: default or Memory)", v.EmptyDir.Medium)
		}
		return nil
	case v.Projected != nil:
		for _, src := range v.Projected.Sources {
			if src.ServiceAccountToken == nil && src.ConfigMap == nil && src.DownwardAPI == nil {
				return fmt.Errorf("projected volume sources other than the service account token are not supported by mergen")
			}
		}
		return nil
	}
	return fmt.Errorf("%s volumes are not supported by mergen (supported: emptyDir and the service account token volume)", volumeKind(v))
}

// volumeKind names the volume's source type as it is written in a pod.
func volumeKind(v corev1.Volume) string {
	vs := v.VolumeSource
	switch {
	case vs.HostPath != nil:
		return "hostPath"
	case vs.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim"
	case vs.ConfigMap != nil:
		return "configMap"
	case vs.Secret != nil:
		return "secret"
	case vs.NFS != nil:
		return "nfs"
	case vs.CSI != nil:
		return "csi"
	case vs.Ephemeral != nil:
		return "ephemeral"
	case vs.DownwardAPI != nil:
		return "downwardAPI"
	case vs.Image != nil:
		return "image"
	case vs.ISCSI != nil:
		return "iscsi"
	}
	return "this kind of"
}

// sizing turns the container's resources into vCPUs and memory: the limit,
// else the request; CPUs rounded up to whole vCPUs, memory up to whole MiB.
func sizing(c *corev1.Container, field string) (vcpu, memMiB int, err error) {
	pick := func(name corev1.ResourceName) (string, resource.Quantity, bool) {
		if q, ok := c.Resources.Limits[name]; ok {
			return "limits", q, true
		}
		if q, ok := c.Resources.Requests[name]; ok {
			return "requests", q, true
		}
		return "", resource.Quantity{}, false
	}
	vcpu, memMiB = DefaultVCPU, DefaultMemMiB
	if kind, q, ok := pick(corev1.ResourceCPU); ok {
		vcpu = int((q.MilliValue() + 999) / 1000)
		if vcpu < 1 {
			vcpu = 1
		}
		if vcpu > MaxVCPU {
			return 0, 0, fmt.Errorf("%s.resources.%s.cpu: %d vCPUs, at most %d", field, kind, vcpu, MaxVCPU)
		}
	}
	if kind, q, ok := pick(corev1.ResourceMemory); ok {
		bytes := q.Value() // rounded up to a whole byte
		mib := (bytes + 1<<20 - 1) >> 20
		if mib < MinMemMiB {
			return 0, 0, fmt.Errorf("%s.resources.%s.memory: %s is below mergen's minimum of %dMi for a microVM", field, kind, q.String(), MinMemMiB)
		}
		if mib > MaxMemMiB {
			return 0, 0, fmt.Errorf("%s.resources.%s.memory: %dMi is above mergen's maximum of %dMi", field, kind, mib, MaxMemMiB)
		}
		memMiB = int(mib)
	}
	return vcpu, memMiB, nil
}

// environment is the container's env, its references already resolved into
// values by the pod controller. Later entries win, as in Kubernetes.
func environment(c *corev1.Container, field string) (map[string]string, error) {
	if len(c.Env) == 0 {
		return nil, nil
	}
	env := map[string]string{}
	for i, e := range c.Env {
		if e.ValueFrom != nil {
			return nil, fmt.Errorf("%s.env[%d] %s: its valueFrom was not resolved", field, i, e.Name)
		}
		if !envfile.ValidKey(e.Name) {
			return nil, fmt.Errorf("%s.env[%d]: %q is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*), which the guest needs", field, i, e.Name)
		}
		if strings.ContainsAny(e.Value, "\x00\n") {
			return nil, fmt.Errorf("%s.env[%d] %s: value holds a NUL or newline, which the guest's environment cannot carry", field, i, e.Name)
		}
		env[e.Name] = e.Value
	}
	return env, nil
}

// envFits refuses an environment the guest cannot be given
// (bootparam.MaxAgentEnv), before the image is converted for nothing. The
// pod controller has added the variables Kubernetes gives every container:
// the kubernetes service's and, unless the pod opts out, seven or more for
// each service of its namespace.
func envFits(env map[string]string, s *corev1.PodSpec, field string) error {
	n := bootparam.EnvSize(env)
	if n <= bootparam.MaxAgentEnv {
		return nil
	}
	msg := fmt.Sprintf("%s.env: %d variables, %d bytes of JSON, at most %d for a microVM", field, len(env), n, bootparam.MaxAgentEnv)
	if s.EnableServiceLinks == nil || *s.EnableServiceLinks {
		msg += "; Kubernetes adds seven or more for each service of the pod's namespace unless the pod sets enableServiceLinks to false"
	}
	return errors.New(msg)
}

// PayloadArgv is Argv for the image whose entrypoint and cmd are given,
// refused when the guest's kernel command line cannot carry it
// (bootparam.MaxArgv): it is known only once the image is.
func (p Plan) PayloadArgv(entrypoint, cmd []string) ([]string, error) {
	argv := Argv(entrypoint, cmd, p.Command, p.Args)
	if n := len(bootparam.EncodeArgv(argv)); n > bootparam.MaxArgv {
		return nil, fmt.Errorf("%s.command/args: the payload's command line (the image's entrypoint and cmd as the pod's command and args change them) is %d bytes once encoded for the microVM's kernel command line, at most %d", container0, n, bootparam.MaxArgv)
	}
	return argv, nil
}

// ports publishes every container port on the host (its hostPort, or a
// free port of the daemon's pool) and picks the HTTP port: the first TCP
// port named http (or starting with http), else the first TCP port.
func ports(c *corev1.Container, field string) ([]wire.Port, int, error) {
	var out []wire.Port
	httpPort, named := 0, false
	for i, cp := range c.Ports {
		proto := strings.ToLower(string(cp.Protocol))
		if proto == "" {
			proto = "tcp"
		}
		if proto != "tcp" && proto != "udp" {
			return nil, 0, fmt.Errorf("%s.ports[%d].protocol: %s is not supported (tcp or udp)", field, i, cp.Protocol)
		}
		if cp.HostIP != "" {
			return nil, 0, fmt.Errorf("%s.ports[%d].hostIP: not supported (published ports listen as the daemon publishes them)", field, i)
		}
		out = append(out, wire.Port{Guest: int(cp.ContainerPort), Host: int(cp.HostPort), Protocol: proto})
		if proto == "tcp" && !named {
			if strings.HasPrefix(cp.Name, "http") {
				httpPort, named = int(cp.ContainerPort), true
			} else if httpPort == 0 {
				httpPort = int(cp.ContainerPort)
			}
		}
	}
	return out, httpPort, nil
}

// restart maps the pod's restartPolicy onto the VM's.
func restart(p corev1.RestartPolicy) (string, error) {
	switch p {
	case "", corev1.RestartPolicyAlways:
		return "always", nil
	case corev1.RestartPolicyOnFailure:
		return "on-failure", nil
	case corev1.RestartPolicyNever:
		return "no", nil
	}
	return "", fmt.Errorf("spec.restartPolicy: %q is not Always, OnFailure or Never", p)
}

// probes turns the container's probes into the VM's one health check. The
// readiness probe decides when the pod is Ready; a VM has one check, so with
// both probes the readiness probe is the check and the liveness probe is
// honoured through it (an unhealthy VM is restarted under the restart
// policy), which a note says.
func probes(c *corev1.Container, field string) (*wire.HealthCheck, []string, error) {
	var notes []string
	probe, which := c.ReadinessProbe, "readinessProbe"
	if probe == nil {
		probe, which = c.LivenessProbe, "livenessProbe"
	} else if c.LivenessProbe != nil && !sameHandler(c.ReadinessProbe, c.LivenessProbe) {
		notes = append(notes, "the VM carries one health check: the readinessProbe's; the livenessProbe is not checked apart from it")
	}
	if c.StartupProbe != nil {
		notes = append(notes, "startupProbe is not checked; its initialDelay is not applied either")
	}
	if probe == nil {
		return nil, notes, nil
	}
	f := field + "." + which
	h := &wire.HealthCheck{
		IntervalSeconds:    int(probe.PeriodSeconds),
		TimeoutSeconds:     int(probe.TimeoutSeconds),
		Retries:            int(probe.FailureThreshold),
		StartPeriodSeconds: int(probe.InitialDelaySeconds),
	}
	switch {
	case probe.HTTPGet != nil:
		g := probe.HTTPGet
		if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
			return nil, nil, fmt.Errorf("%s.httpGet.scheme: %s is not supported (HTTP only)", f, g.Scheme)
		}
		if g.Host != "" || len(g.HTTPHeaders) > 0 {
			return nil, nil, fmt.Errorf("%s.httpGet: host and httpHeaders are not supported", f)
		}
		port, err := probePort(c, g.Port, f+".httpGet.port")
		if err != nil {
			return nil, nil, err
		}
		path := g.Path
		if path == "" {
			path = "/"
		}
		h.HTTP = &wire.HTTPHealthCheck{Port: port, Path: path}
	case probe.TCPSocket != nil:
		if probe.TCPSocket.Host != "" {
			return nil, nil, fmt.Errorf("%s.tcpSocket.host: not supported", f)
		}
		port, err := probePort(c, probe.TCPSocket.Port, f+".tcpSocket.port")
		if err != nil {
			return nil, nil, err
		}
		h.TCP = &wire.TCPHealthCheck{Port: port}
	case probe.Exec != nil:
		if len(probe.Exec.Command) == 0 {
			return nil, nil, fmt.Errorf("%s.exec.command: empty", f)
		}
		h.Exec = &wire.ExecHealthCheck{Argv: probe.Exec.Command}
	case probe.GRPC != nil:
		return nil, nil, fmt.Errorf("%s.grpc: gRPC probes are not supported (httpGet, tcpSocket or exec)", f)
	default:
		return nil, nil, fmt.Errorf("%s: no handler", f)
	}
	return h, notes, nil
}

func sameHandler(a, b *corev1.Probe) bool {
	return fmt.Sprint(a.ProbeHandler) == fmt.Sprint(b.ProbeHandler)
}

// probePort resolves a probe's port: a number, or the name of one of the
// container's ports.
func probePort(c *corev1.Container, p intstr.IntOrString, field string) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return 0, fmt.Errorf("%s: %d is out of range 1..65535", field, p.IntVal)
		}
		return int(p.IntVal), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	names := make([]string, 0, len(c.Ports))
	for _, cp := range c.Ports {
		if cp.Name != "" {
			names = append(names, cp.Name)
		}
	}
	sort.Strings(names)
	return 0, fmt.Errorf("%s: no container port is named %q (named: %s)", field, p.StrVal, strings.Join(names, ", "))
}
