package kubenode

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mergenhq/mergen/internal/wire"
)

func intp(n int) *int { return &n }

func vm(state string, mut func(v *wire.VM)) *wire.VM {
	v := &wire.VM{ID: "0a1b2c3d-0000-4000-8000-000000000001", State: state, Network: wire.Network{GuestIP: "172.31.0.2"}}
	if mut != nil {
		mut(v)
	}
	return v
}

// The pod's phase, readiness and container state follow its VM.
func TestPodStatusFollowsTheVM(t *testing.T) {
	withCheck := func(status string) func(v *wire.VM) {
		return func(v *wire.VM) {
			v.HealthCheck = &wire.HealthCheck{TCP: &wire.TCPHealthCheck{Port: 80}}
			v.Health = &wire.Health{Status: status, Since: time.Unix(100, 0)}
		}
	}
	exited := func(code int, restart string, gaveUp bool) func(v *wire.VM) {
		return func(v *wire.VM) {
			v.Restart = restart
			v.LastRun = &wire.LastRun{Reason: wire.ReasonPayloadExit, InitExitCode: intp(code), Message: "the payload exited", GaveUp: gaveUp}
		}
	}
	cases := []struct {
		name    string
		policy  corev1.RestartPolicy
		st      PodState
		phase   corev1.PodPhase
		ready   bool
		state   string // running, waiting or terminated, with its reason
		reason  string // the pod's status reason
		restart int32
	}{
		{"converting", "", PodState{Stage: StageConverting}, corev1.PodPending, false, "waiting " + ReasonConverting, "", 0},
		{"creating", "", PodState{Stage: StageCreating}, corev1.PodPending, false, "waiting " + ReasonCreating, "", 0},
		{"booting", "", PodState{Stage: StageVM, VM: vm("activating", nil)}, corev1.PodPending, false, "waiting " + ReasonBooting, "", 0},
		{"running without a check: ready", "", PodState{Stage: StageVM, VM: vm("running", nil)}, corev1.PodRunning, true, "running", "", 0},
		{"running, check starting: not ready", "", PodState{Stage: StageVM, VM: vm("running", withCheck(wire.HealthStarting))}, corev1.PodRunning, false, "running", "", 0},
		{"running, check passed: ready", "", PodState{Stage: StageVM, VM: vm("running", withCheck(wire.HealthReady))}, corev1.PodRunning, true, "running", "", 0},
		{"running, unhealthy", "", PodState{Stage: StageVM, VM: vm("running", withCheck(wire.HealthUnhealthy))}, corev1.PodRunning, false, "running", "", 0},
		{"paused: not ready", "", PodState{Stage: StageVM, VM: vm("paused", nil)}, corev1.PodRunning, false, "running", "", 0},
		{"failed under Never", corev1.RestartPolicyNever, PodState{Stage: StageVM, VM: vm("failed", exited(3, "no", false))},
			corev1.PodFailed, false, "terminated payload-exit 3", wire.ReasonPayloadExit, 0},
		{"exited 0 under Never", corev1.RestartPolicyNever, PodState{Stage: StageVM, VM: vm("stopped", exited(0, "no", false))},
			corev1.PodSucceeded, false, "terminated payload-exit 0", wire.ReasonPayloadExit, 0},
		{"exited 0 under OnFailure: done", corev1.RestartPolicyOnFailure, PodState{Stage: StageVM, VM: vm("stopped", exited(0, "on-failure", false))},
			corev1.PodSucceeded, false, "terminated payload-exit 0", wire.ReasonPayloadExit, 0},
		{"failed under Always: restarting", corev1.RestartPolicyAlways, PodState{Stage: StageVM, VM: vm("failed", func(v *wire.VM) { exited(1, "always", false)(v); v.Restarts = 2 })},
			corev1.PodRunning, false, "waiting " + ReasonRestarting, "", 2},
		{"the restart policy gave up", corev1.RestartPolicyOnFailure, PodState{Stage: StageVM, VM: vm("failed", exited(1, "on-failure", true))},
			corev1.PodFailed, false, "terminated payload-exit 1", wire.ReasonPayloadExit, 0},
		{"kernel panic under Never", corev1.RestartPolicyNever, PodState{Stage: StageVM, VM: vm("failed", func(v *wire.VM) {
			v.LastRun = &wire.LastRun{Reason: wire.ReasonKernelPanic, ExitCode: intp(1), Message: "Kernel panic"}
		})}, corev1.PodFailed, false, "terminated kernel-panic 1", wire.ReasonKernelPanic, 0},
		{"never got a VM", "", PodState{Stage: StageFailed, Reason: ReasonUnsupported, Message: "spec.containers: 2 containers"},
			corev1.PodFailed, false, "terminated " + ReasonUnsupported + " 1", ReasonUnsupported, 0},
		{"deleted", "", PodState{Stage: StageDeleted}, corev1.PodSucceeded, false, "terminated " + ReasonDeleted + " 0", ReasonDeleted, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := pod(func(p *corev1.Pod) { p.Spec.RestartPolicy = c.policy })
			s := PodStatus(p, c.st, "10.0.0.1")
			if s.Phase != c.phase || s.Reason != c.reason {
				t.Fatalf("phase %s reason %q, want %s %q (message %q)", s.Phase, s.Reason, c.phase, c.reason, s.Message)
			}
			if len(s.ContainerStatuses) != 1 {
				t.Fatalf("container statuses %+v", s.ContainerStatuses)
			}
			cs := s.ContainerStatuses[0]
			if cs.Name != "app" || cs.Image != "registry.test/web:1" || cs.Ready != c.ready || cs.RestartCount != c.restart {
				t.Fatalf("container status %+v", cs)
			}
			if got := describe(cs.State); got != c.state {
				t.Fatalf("container state %q, want %q", got, c.state)
			}
			for _, cond := range s.Conditions {
				if cond.Type == corev1.PodReady && (cond.Status == corev1.ConditionTrue) != c.ready {
					t.Fatalf("Ready condition %s, want ready=%v", cond.Status, c.ready)
				}
			}
			if c.st.Stage == StageVM && (s.PodIP != "172.31.0.2" || cs.ContainerID != "mergen://"+c.st.VM.ID) {
				t.Fatalf("pod IP %q container id %q", s.PodIP, cs.ContainerID)
			}
			if s.HostIP != "10.0.0.1" {
				t.Fatalf("host IP %q", s.HostIP)
			}
		})
	}
}

func describe(s corev1.ContainerState) string {
	switch {
	case s.Running != nil:
		return "running"
	case s.Waiting != nil:
		return "waiting " + s.Waiting.Reason
	case s.Terminated != nil:
		return "terminated " + s.Terminated.Reason + " " + itoa(int(s.Terminated.ExitCode))
	}
	return "none"
}

func itoa(n int) string { return resource.NewQuantity(int64(n), resource.DecimalSI).String() }

// A status computed again for the same state is the same status: the pod
// controller writes a changed status to the API server, so the conditions'
// times must not move on their own.
func TestPodStatusIsStableForAnUnchangedState(t *testing.T) {
	p := pod(nil)
	start := metav1.NewTime(time.Unix(10, 0))
	p.Status.StartTime = &start
	st := PodState{Stage: StageVM, VM: vm("running", nil), Started: time.Unix(200, 0)}
	p.Status = PodStatus(p, st, "")
	long := metav1.NewTime(time.Unix(50, 0))
	for i := range p.Status.Conditions {
		p.Status.Conditions[i].LastTransitionTime = long
	}
	again := PodStatus(p, st, "")
	if again.String() != p.Status.String() {
		t.Fatalf("status changed on its own:\n%s\n%s", p.Status.String(), again.String())
	}
	// A change of readiness moves the Ready condition's time, and only
	// that of the conditions that changed.
	st.VM = vm("paused", nil)
	for _, c := range PodStatus(p, st, "").Conditions {
		moved := !c.LastTransitionTime.Equal(&long)
		if changed := c.Type == corev1.PodReady || c.Type == corev1.ContainersReady; moved != changed {
			t.Fatalf("condition %s: moved %v, changed %v", c.Type, moved, changed)
		}
	}
}
