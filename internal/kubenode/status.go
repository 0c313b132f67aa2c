package kubenode

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mergenhq/mergen/internal/wire"
)

// Stage is where a pod is on its way to, and in, its VM.
type Stage int

const (
	StageConverting Stage = iota // converting the container's image
	StageCreating                // asking the daemon for the VM
	StageVM                      // the VM exists: its document decides
	StageFailed                  // the pod never got a VM (bad input, conversion or create failed)
	StageDeleted                 // the pod's VM is deleted
)

// Reasons the pod's status and events give, beside the VM's own failure
// reasons (wire.Reason*).
const (
	ReasonConverting   = "ConvertingImage"
	ReasonCreating     = "CreatingVM"
	ReasonBooting      = "Booting"
	ReasonRestarting   = "Restarting"
	ReasonUnsupported  = "Unsupported"
	ReasonImageFailed  = "ImageConversionFailed"
	ReasonCreateFailed = "VMCreateFailed"
	ReasonVMGone       = "VMGone"
	ReasonDeleted      = "Deleted"
)

// PodState is what the node knows of one pod's VM.
type PodState struct {
	Stage Stage
	// Reason and Message say why, for StageFailed (and what is going on,
	// for the others).
	Reason, Message string
	VM              *wire.VM // the VM's last document, for StageVM
	// Started is when the pod's VM was first seen running (zero before);
	// Ended when the pod failed or was deleted.
	Started, Ended time.Time
}

// ContainerID is how a pod's container status names its VM.
func ContainerID(vmID string) string { return "mergen://" + vmID }

// PodStatus is the pod's status for its state: Pending while the image is
// converted and the VM boots, Running once the VM runs (Ready when its health
// check passes, or at once without one), Succeeded or Failed when it ended
// for good, with the VM's failure reason.
func PodStatus(pod *corev1.Pod, st PodState, hostIP string) corev1.PodStatus {
	status := corev1.PodStatus{HostIP: hostIP, Phase: corev1.PodPending}
	if hostIP != "" {
		status.HostIPs = []corev1.HostIP{{IP: hostIP}}
	}
	if pod.Status.StartTime != nil {
		status.StartTime = pod.Status.StartTime
	} else {
		now := metav1.Now()
		status.StartTime = &now
	}
	cs := corev1.ContainerStatus{}
	if len(pod.Spec.Containers) > 0 {
		cs.Name, cs.Image = pod.Spec.Containers[0].Name, pod.Spec.Containers[0].Image
	}
	ready := false
	waiting := func(reason, msg string) {
		cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	}
	terminated := func(code int32, reason, msg string, at time.Time) *corev1.ContainerStateTerminated {
		return &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason, Message: msg, FinishedAt: metav1.NewTime(at), ContainerID: cs.ContainerID}
	}
	switch st.Stage {
	case StageConverting:
		waiting(ReasonConverting, st.Message)
	case StageCreating:
		waiting(ReasonCreating, st.Message)
	case StageFailed:
		status.Phase, status.Reason, status.Message = corev1.PodFailed, st.Reason, st.Message
		cs.State = corev1.ContainerState{Terminated: terminated(1, st.Reason, st.Message, st.Ended)}
	case StageDeleted:
		status.Phase, status.Reason, status.Message = corev1.PodSucceeded, ReasonDeleted, "the pod's VM is deleted"
		if st.VM != nil {
			cs.ContainerID = ContainerID(st.VM.ID)
		}
		cs.State = corev1.ContainerState{Terminated: terminated(0, ReasonDeleted, "", st.Ended)}
	case StageVM:
		vm := st.VM
		cs.ContainerID = ContainerID(vm.ID)
		cs.RestartCount = int32(vm.Restarts)
		status.PodIP = vm.Network.GuestIP
		if status.PodIP != "" {
			status.PodIPs = []corev1.PodIP{{IP: status.PodIP}}
		}
		switch vm.State {
		case wire.StateRunning, wire.StatePaused:
			status.Phase = corev1.PodRunning
			started := st.Started
			if vm.Health != nil && started.IsZero() {
				started = vm.Health.Since
			}
			cs.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(started)}}
			cs.Started = ptrTo(true)
			ready = vm.State == wire.StateRunning && (vm.HealthCheck == nil || vm.Health != nil && vm.Health.Status == wire.HealthReady)
		case wire.StateStopped, "failed":
			lr := vm.LastRun
			if lr == nil {
				waiting(ReasonBooting, "the VM is not started yet")
				break
			}
			code := exitCode(lr)
			term := terminated(code, lr.Reason, lr.Message, lr.EndedAt)
			if endedForGood(pod.Spec.RestartPolicy, lr, code) {
				status.Phase, status.Reason, status.Message = corev1.PodFailed, lr.Reason, lr.Message
				if lr.Reason == wire.ReasonPayloadExit && code == 0 {
					status.Phase = corev1.PodSucceeded
				}
				cs.State = corev1.ContainerState{Terminated: term}
				break
			}
			// The supervisor restarts it: the pod stays Running, its
			// container waits, as a kubelet shows a container it restarts.
			status.Phase = corev1.PodRunning
			waiting(ReasonRestarting, lr.Message)
			cs.LastTerminationState = corev1.ContainerState{Terminated: term}
		default: // activating, deactivating, unknown: on the way up or down
			if !st.Started.IsZero() || vm.Restarts > 0 {
				status.Phase = corev1.PodRunning
				waiting(ReasonRestarting, "the VM is "+vm.State)
			} else {
				waiting(ReasonBooting, "the VM is "+vm.State)
			}
		}
	}
	cs.Ready = ready
	status.ContainerStatuses = []corev1.ContainerStatus{cs}
	status.Conditions = conditions(pod.Status.Conditions, ready)
	return status
}

// endedForGood says a stopped VM will not be started again by its
// supervisor: its policy is no, it gave up, it was stopped on request, or
// it ended well under on-failure.
func endedForGood(policy corev1.RestartPolicy, lr *wire.LastRun, code int32) bool {
	switch {
	case policy == corev1.RestartPolicyNever, lr.GaveUp, lr.Reason == wire.ReasonStopped:
		return true
	case policy == corev1.RestartPolicyOnFailure:
		return lr.Reason == wire.ReasonPayloadExit && code == 0
	}
	return false
}

// exitCode is the run's status as a container's: the payload's (or
// mergen-init's own), else the VMM's, else 1 for a run that failed
// without one.
func exitCode(lr *wire.LastRun) int32 {
	switch {
	case lr.InitExitCode != nil:
		return int32(*lr.InitExitCode)
	case lr.Reason == wire.ReasonStopped:
		return 0
	case lr.ExitCode != nil && *lr.ExitCode != 0:
		return int32(*lr.ExitCode)
	}
	return 1
}

// conditions are the pod's conditions; one whose status is unchanged keeps
// its transition time (a status that changes on every look would be written
// to the API server on every look).
func conditions(old []corev1.PodCondition, ready bool) []corev1.PodCondition {
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionFalse, LastTransitionTime: now}
		if ok {
			c.Status = corev1.ConditionTrue
		}
		for _, o := range old {
			if o.Type == t && o.Status == c.Status {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		return c
	}
	return []corev1.PodCondition{
		cond(corev1.PodScheduled, true),
		cond(corev1.PodInitialized, true),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
	}
}

func ptrTo[T any](v T) *T { return &v }
