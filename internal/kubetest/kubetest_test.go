package kubetest

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mergenhq/mergen/internal/testenv"
)

// One control plane serves every case: starting one costs seconds.
func TestControlPlane(t *testing.T) {
	cp := Start(t)
	ctx := context.Background()

	t.Run("the apiserver and kubectl are the built release", func(t *testing.T) {
		v, err := cp.Client.Discovery().ServerVersion()
		if err != nil {
			t.Fatal(err)
		}
		if v.GitVersion != Version {
			t.Errorf("apiserver reports %s, want %s", v.GitVersion, Version)
		}
		out, err := cp.Kubectl(t, "version", "--client", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, `"gitVersion": "`+Version+`"`) {
			t.Errorf("kubectl version:\n%s\nwant gitVersion %s", out, Version)
		}
	})

	t.Run("a pod with no node to go to stays Pending and the scheduler says why", func(t *testing.T) {
		ns := createNamespace(t, cp, "unschedulable")
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "lonely"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "main", Image: "registry.invalid/nothing:1",
			}}},
		}
		if _, err := cp.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod: %v", err)
		}

		var event corev1.Event
		testenv.Eventually(t, time.Minute, "the scheduler's FailedScheduling event", func() bool {
			list, err := cp.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
				FieldSelector: fields.Set{"involvedObject.name": "lonely", "reason": "FailedScheduling"}.String(),
			})
			if err != nil || len(list.Items) == 0 {
				return false
			}
			event = list.Items[0]
			return true
		})
		if event.Source.Component != "default-scheduler" && event.ReportingController != "default-scheduler" {
			t.Errorf("FailedScheduling reported by %q/%q, want default-scheduler", event.Source.Component, event.ReportingController)
		}
		if !strings.Contains(event.Message, "no nodes available") {
			t.Errorf("FailedScheduling message %q does not say there is no node", event.Message)
		}

		got, err := cp.Client.CoreV1().Pods(ns).Get(ctx, "lonely", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase != corev1.PodPending || got.Spec.NodeName != "" {
			t.Errorf("pod phase %s on node %q, want Pending on none", got.Status.Phase, got.Spec.NodeName)
		}
		phase, err := cp.Kubectl(t, "get", "pod", "-n", ns, "lonely", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}")
		if err != nil {
			t.Fatal(err)
		}
		if phase != "Unschedulable" {
			t.Errorf("kubectl shows PodScheduled reason %q, want Unschedulable", phase)
		}
	})

	t.Run("a minted user is refused until RBAC binds it", func(t *testing.T) {
		ns := createNamespace(t, cp, "rbac")
		alice := clientFor(t, cp.KubeconfigFor(t, "alice"))

		_, err := alice.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("unbound user listing pods: got %v, want Forbidden", err)
		}
		if !strings.Contains(err.Error(), `"alice"`) {
			t.Errorf("refusal %q does not name the user: the certificate's name was not taken", err)
		}

		_, err = cp.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "alice-views"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "alice"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("bind alice: %v", err)
		}
		// The authorizer learns of the binding through a watch.
		testenv.Eventually(t, 30*time.Second, "alice to be allowed to list pods", func() bool {
			_, err := alice.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err == nil
		})
		if _, err := alice.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("alice listing pods outside the bound namespace: got %v, want Forbidden", err)
		}
	})

	t.Run("groups in a minted certificate count", func(t *testing.T) {
		root := clientFor(t, cp.KubeconfigFor(t, "bob", "system:masters"))
		if _, err := root.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("system:masters member listing nodes: %v", err)
		}
	})
}

// Stopping leaves no component running, and each one ends on SIGTERM
// (etcd last, so the apiserver can end cleanly) rather than being killed
// when its grace runs out.
func TestStopEndsEveryComponent(t *testing.T) {
	var procs []*process
	var skipped bool
	if !t.Run("run", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		cp := Start(t)
		procs = append(procs, cp.procs...)
	}) {
		return
	}
	if skipped {
		t.Skip("SKIPPED: no control plane to stop (see the subtest)")
	}
	if len(procs) != 4 {
		t.Fatalf("started %d components, want 4", len(procs))
	}
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			t.Errorf("%s still running after the test ended", p.name)
			continue
		}
		if p.killed {
			t.Errorf("%s was killed: it did not end within %v of SIGTERM", p.name, stopGrace)
		}
	}
}

func createNamespace(t *testing.T, cp *ControlPlane, name string) string {
	t.Helper()
	ns, err := cp.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return ns.Name
}

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
