package kubenode

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestCapacityIsTheHostLessTheReserveAndPodsBoundedByThePools(t *testing.T) {
	h := Host{CPUs: 8, MemBytes: 32 << 30, ReserveMilliCPU: 500, ReserveMemBytes: 2 << 30, GuestAddrs: 253, HostPorts: 1001}
	c, err := h.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	want := map[corev1.ResourceName]string{corev1.ResourceCPU: "7500m", corev1.ResourceMemory: "30Gi", corev1.ResourcePods: "253"}
	for name, q := range want {
		if got := c[name]; got.Cmp(resource.MustParse(q)) != 0 {
			t.Errorf("%s = %s, want %s", name, got.String(), q)
		}
	}
	// Fewer host ports than addresses: the ports bound the pods.
	h.HostPorts = 40
	if c, _ = h.Capacity(); c.Pods().Value() != 40 {
		t.Fatalf("pods = %s, want 40", c.Pods())
	}
	for _, bad := range []Host{
		{CPUs: 2, MemBytes: 1 << 30, ReserveMilliCPU: 2000, GuestAddrs: 1, HostPorts: 1},
		{CPUs: 2, MemBytes: 1 << 30, ReserveMemBytes: 1 << 30, GuestAddrs: 1, HostPorts: 1},
		{CPUs: 2, MemBytes: 1 << 30, GuestAddrs: 0, HostPorts: 10},
	} {
		if _, err := bad.Capacity(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

func TestNodeSpecLabelsTaintsAndAddressesTheNode(t *testing.T) {
	n, err := NodeSpec("edge-1", "qemu", "127.0.0.1", 10251, Host{CPUs: 2, MemBytes: 4 << 30, GuestAddrs: 10, HostPorts: 10})
	if err != nil {
		t.Fatal(err)
	}
	if n.Name != "edge-1" || n.Labels[LabelVMM] != "qemu" || n.Labels["kubernetes.io/hostname"] != "edge-1" {
		t.Fatalf("meta %+v", n.ObjectMeta)
	}
	if len(n.Spec.Taints) != 1 || n.Spec.Taints[0] != (corev1.Taint{Key: "mergen.io/microvm", Value: "true", Effect: corev1.TaintEffectNoSchedule}) {
		t.Fatalf("taints %+v", n.Spec.Taints)
	}
	if n.Status.DaemonEndpoints.KubeletEndpoint.Port != 10251 || len(n.Status.Addresses) != 1 || n.Status.Addresses[0].Address != "127.0.0.1" || n.Status.Addresses[0].Type != corev1.NodeInternalIP {
		t.Fatalf("endpoint %+v addresses %+v", n.Status.DaemonEndpoints, n.Status.Addresses)
	}
	if n.Status.Allocatable.Memory().Cmp(*n.Status.Capacity.Memory()) != 0 {
		t.Fatalf("allocatable %v capacity %v", n.Status.Allocatable, n.Status.Capacity)
	}
}

func TestNodeIsNotReadyWhileTheDaemonDoesNotAnswer(t *testing.T) {
	ready := func(cs []corev1.NodeCondition) corev1.NodeCondition {
		for _, c := range cs {
			if c.Type == corev1.NodeReady {
				return c
			}
		}
		t.Fatal("no Ready condition")
		return corev1.NodeCondition{}
	}
	up := NodeConditions(nil, nil)
	down := NodeConditions(up, errors.New("cannot reach the mergen daemon at /run/mergen/mergen.sock"))
	if c := ready(down); c.Status != corev1.ConditionFalse || c.Reason != "DaemonUnreachable" || !strings.Contains(c.Message, "cannot reach the mergen daemon") {
		t.Fatalf("daemon down: %+v", c)
	}
	if c := ready(NodeConditions(down, nil)); c.Status != corev1.ConditionTrue {
		t.Fatalf("daemon back: %+v", c)
	}
}

func TestMemTotalReadsMeminfo(t *testing.T) {
	got, err := MemTotal(strings.NewReader("MemFree:  100 kB\nMemTotal:       24567892 kB\n"))
	if err != nil || got != 24567892<<10 {
		t.Fatalf("%d %v", got, err)
	}
	if _, err := MemTotal(strings.NewReader("MemFree: 1 kB\n")); err == nil {
		t.Fatal("no MemTotal line: no error")
	}
}
