package kubenode

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mergenhq/mergen/internal/version"
)

// Labels and the taint of a mergen node.
const (
	LabelVMM = "mergen.io/vmm" // qemu or firecracker
	// TaintMicroVM keeps pods off mergen nodes unless they tolerate it: a
	// pod here is a microVM, with the limits docs/kubernetes.md lists.
	TaintMicroVM = "mergen.io/microvm"
)

// Host is what the node offers the scheduler: the host's CPUs and memory,
// what is kept back for the host itself, and the pools that bound the
// number of VMs.
type Host struct {
	CPUs     int   // the host's CPUs
	MemBytes int64 // the host's memory
	// ReserveMilliCPU and ReserveMemBytes are kept for the host (the
	// daemon, the VMMs' own overhead, everything else running there).
	ReserveMilliCPU int64
	ReserveMemBytes int64
	// GuestAddrs and HostPorts are the sizes of the daemon's guest address
	// pool (MGR_GUEST_CIDR) and host port pool (MGR_PORT_START..END).
	GuestAddrs, HostPorts int
}

// Capacity is the node's capacity (and allocatable: the reserve is taken
// off both, since the scheduler places by allocatable and an operator reads
// capacity as what pods may use). Pods are bounded by the guest addresses
// (one per VM) and by the host ports (a pod publishes its container ports;
// counting one each keeps a node from accepting pods it has no port for).
func (h Host) Capacity() (corev1.ResourceList, error) {
	cpu := int64(h.CPUs)*1000 - h.ReserveMilliCPU
	mem := h.MemBytes - h.ReserveMemBytes
	if cpu <= 0 {
		return nil, fmt.Errorf("reserve-cpu %dm leaves no CPU of the host's %d", h.ReserveMilliCPU, h.CPUs)
	}
	if mem <= 0 {
		return nil, fmt.Errorf("reserve-memory %s leaves no memory of the host's %s", resource.NewQuantity(h.ReserveMemBytes, resource.BinarySI), resource.NewQuantity(h.MemBytes, resource.BinarySI))
	}
	pods := h.GuestAddrs
	if h.HostPorts < pods {
		pods = h.HostPorts
	}
	if pods <= 0 {
		return nil, fmt.Errorf("the daemon's pools leave room for no VM (%d guest addresses, %d host ports)", h.GuestAddrs, h.HostPorts)
	}
	return corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewMilliQuantity(cpu, resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(mem, resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(int64(pods), resource.DecimalSI),
	}, nil
}

// NodeSpec is the node object a mergen host registers: its name, the VMM
// label, the microVM taint, capacity, its address and the port of its
// kubelet endpoint (logs, exec).
func NodeSpec(name, vmm, nodeIP string, kubeletPort int32, h Host) (corev1.Node, error) {
	capacity, err := h.Capacity()
	if err != nil {
		return corev1.Node{}, err
	}
	n := corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			// Only labels the NodeRestriction admission plugin lets a node
			// set on itself (no kubernetes.io/role).
			Labels: map[string]string{
				"type":                   "virtual-kubelet",
				"kubernetes.io/hostname": name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     runtime.GOARCH,
				LabelVMM:                 vmm,
			},
		},
		Spec: corev1.NodeSpec{
			Taints: []corev1.Taint{{Key: TaintMicroVM, Value: "true", Effect: corev1.TaintEffectNoSchedule}},
		},
		Status: corev1.NodeStatus{
			Phase:       corev1.NodePending,
			Capacity:    capacity,
			Allocatable: capacity.DeepCopy(),
			Addresses:   []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP}},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{
				KubeletEndpoint: corev1.DaemonEndpoint{Port: kubeletPort},
			},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem:         "linux",
				Architecture:            runtime.GOARCH,
				KubeletVersion:          "mergen-" + version.Version,
				ContainerRuntimeVersion: "mergen://" + version.Version,
			},
		},
	}
	n.Status.Conditions = NodeConditions(nil, nil)
	return n, nil
}

// NodeConditions are the node's conditions: Ready while the daemon answers,
// NotReady with the daemon's error while it does not (its VMs keep running
// meanwhile: the daemon does not own them); no pressure conditions.
func NodeConditions(old []corev1.NodeCondition, daemonErr error) []corev1.NodeCondition {
	now := metav1.Now()
	ready := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "the mergen daemon answers"}
	if daemonErr != nil {
		ready.Status, ready.Reason, ready.Message = corev1.ConditionFalse, "DaemonUnreachable", daemonErr.Error()
	}
	conds := []corev1.NodeCondition{ready}
	for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure, corev1.NodeNetworkUnavailable} {
		conds = append(conds, corev1.NodeCondition{Type: t, Status: corev1.ConditionFalse, Reason: "KubeletHasNo" + string(t)})
	}
	for i := range conds {
		conds[i].LastHeartbeatTime = now
		conds[i].LastTransitionTime = now
		for _, o := range old {
			if o.Type == conds[i].Type && o.Status == conds[i].Status {
				conds[i].LastTransitionTime = o.LastTransitionTime
			}
		}
	}
	return conds
}

// MemTotal reads the host's memory from /proc/meminfo's MemTotal line.
func MemTotal(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("meminfo: MemTotal line %q", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo: MemTotal: %w", err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("meminfo: no MemTotal line")
}

// HostMemory is the host's memory.
func HostMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return MemTotal(f)
}
