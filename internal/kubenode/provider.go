package kubenode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	vkerrdefs "github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	utilexec "k8s.io/utils/exec"

	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/converter"
	"github.com/mergenhq/mergen/internal/events"
	"github.com/mergenhq/mergen/internal/execproto"
	"github.com/mergenhq/mergen/internal/imagemeta"
	"github.com/mergenhq/mergen/internal/wire"
)

// Images says where the node converts pods' images: the daemon's images
// root (the payload disks must be where the daemon accepts disks from) and
// its base assets.
type Images struct {
	Root, BaseAssetsDir string
	Insecure            bool // plain HTTP registries
}

// Provider runs a node's pods as VMs of the local daemon. It implements
// virtual-kubelet's PodLifecycleHandler and PodNotifier, and the logs and
// exec calls of its kubelet endpoint. It keeps no state of its own beyond
// memory: the VMs' tags say which pod each VM is, so a restarted node
// agent finds them again (Load).
type Provider struct {
	node     string
	hostIP   string
	api      *client.Client
	images   Images
	secrets  corev1listers.SecretLister
	recorder record.EventRecorder
	log      *slog.Logger

	mu     sync.Mutex
	pods   map[string]*entry // by namespace/name
	notify func(*corev1.Pod)

	convertMu sync.Map // image output dir → *sync.Mutex: one conversion of an image at a time
	ctx       context.Context
}

// entry is one pod and its VM.
type entry struct {
	pod   *corev1.Pod // as last given; a stub (metadata only) when adopted is false after Load
	state PodState
	vmID  string
	// adopted says the entry holds the pod from Kubernetes, not the stub
	// Load made from a VM's tags.
	adopted bool
	// cancel stops the pod's creation; done is closed when it has ended.
	cancel context.CancelFunc
	done   chan struct{}
	// last is the status last computed.
	last *corev1.PodStatus
	// deleting says DeletePod is removing the VM: its disappearance is
	// no failure.
	deleting bool
}

// NewProvider makes a provider for node, talking to the daemon through c.
// ctx bounds the work it starts on its own (conversions, creates, watches).
func NewProvider(ctx context.Context, node, hostIP string, c *client.Client, images Images, secrets corev1listers.SecretLister, recorder record.EventRecorder, log *slog.Logger) *Provider {
	return &Provider{
		ctx: ctx, node: node, hostIP: hostIP, api: c, images: images, secrets: secrets,
		recorder: recorder, log: log, pods: map[string]*entry{},
		notify: func(*corev1.Pod) {},
	}
}

func key(namespace, name string) string { return namespace + "/" + name }

// Load finds the VMs this node made (by their node tag) and remembers them
// as pods, before the pod controller starts: it then deletes those whose
// pod Kubernetes no longer has, and adopts the others.
func (p *Provider) Load(ctx context.Context) error {
	vms, err := p.api.List(ctx)
	if err != nil {
		return fmt.Errorf("list the daemon's VMs: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	sort.Slice(vms, func(i, j int) bool { return vms[i].CreatedAt.Before(vms[j].CreatedAt) })
	for _, vm := range vms {
		if vm.Tags[TagNode] != p.node {
			continue
		}
		ns, name, uid := vm.Tags[TagNamespace], vm.Tags[TagPod], vm.Tags[TagUID]
		if ns == "" || name == "" {
			continue
		}
		k := key(ns, name)
		if old, ok := p.pods[k]; ok {
			// Two VMs for one pod (a create retried after a lost answer):
			// the later one goes.
			p.log.Warn("a second VM for one pod: deleting it", "pod", k, "vm", vm.ID, "kept", old.vmID)
			if err := p.api.Delete(ctx, vm.ID); err != nil && !client.IsStatus(err, http.StatusNotFound) {
				return fmt.Errorf("delete vm %s (a second VM of pod %s): %w", vm.ID, k, err)
			}
			continue
		}
		v := vm
		p.pods[k] = &entry{
			pod:   &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)}},
			state: PodState{Stage: StageVM, VM: &v},
			vmID:  vm.ID,
		}
	}
	return nil
}

// NotifyPods implements node.PodNotifier.
func (p *Provider) NotifyPods(_ context.Context, cb func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

// CreatePod implements node.PodLifecycleHandler. It returns at once: the
// image is converted and the VM created in the background, and the pod's
// status and events follow each step. A pod mergen cannot run fails with an
// event saying why, and nothing is made for it.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	pod = pod.DeepCopy()
	k := key(pod.Namespace, pod.Name)
	if pod.Status.StartTime == nil {
		now := metav1.Now()
		pod.Status.StartTime = &now
	}
	p.mu.Lock()
	if e, ok := p.pods[k]; ok && e.pod.UID == pod.UID {
		p.mu.Unlock()
		return nil
	}
	e := &entry{pod: pod, adopted: true, done: make(chan struct{})}
	p.pods[k] = e
	p.mu.Unlock()

	// A pod that had a VM (its status names one) whose VM is gone: the
	// node lost it while it was away. It is not made again behind
	// Kubernetes' back: it fails, and its controller replaces it.
	if cs := pod.Status.ContainerStatuses; len(cs) > 0 && strings.HasPrefix(cs[0].ContainerID, ContainerID("")) {
		close(e.done)
		p.fail(e, ReasonVMGone, fmt.Sprintf("the pod's VM %s no longer exists on this host", strings.TrimPrefix(cs[0].ContainerID, ContainerID(""))))
		return nil
	}
	plan, err := Translate(pod, p.node)
	if err != nil {
		close(e.done)
		p.fail(e, ReasonUnsupported, err.Error())
		return nil
	}
	for _, n := range plan.Notes {
		p.recorder.Event(pod, corev1.EventTypeWarning, "ProbeMapped", n)
	}
	cctx, cancel := context.WithCancel(p.ctx)
	p.mu.Lock()
	e.cancel = cancel
	e.state = PodState{Stage: StageConverting, Message: "converting " + plan.Image}
	p.mu.Unlock()
	p.changed(e)
	go func() {
		defer close(e.done)
		defer cancel()
		p.create(cctx, e, plan)
	}()
	return nil
}

// create converts the pod's image and creates its VM.
func (p *Provider) create(ctx context.Context, e *entry, plan Plan) {
	pod := e.pod
	p.recorder.Eventf(pod, corev1.EventTypeNormal, "Converting", "converting image %s into a payload disk", plan.Image)
	start := time.Now()
	conv, cached, err := p.convert(ctx, pod, plan)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		p.fail(e, ReasonImageFailed, fmt.Sprintf("image %s: %v", plan.Image, err))
		return
	}
	if cached {
		p.recorder.Eventf(pod, corev1.EventTypeNormal, "Converted", "image %s already converted on this host", plan.Image)
	} else {
		p.recorder.Eventf(pod, corev1.EventTypeNormal, "Converted", "image %s converted in %s (%d layers pulled)", plan.Image, time.Since(start).Round(time.Millisecond), conv.Pulled)
	}

	req := plan.Request
	req.PayloadDisk = conv.Ext4
	if req.Argv, err = plan.PayloadArgv(conv.Meta.Entrypoint, conv.Meta.Cmd); err != nil {
		p.fail(e, ReasonUnsupported, err.Error())
		return
	}
	if plan.ImageHTTPPort {
		req.HTTPPort = conv.Runtime.HTTPPort
	}
	if req.HealthCheck != nil && req.HealthCheck.HTTP != nil && req.HealthCheck.HTTP.Port == 0 && req.HTTPPort == 0 {
		req.HealthCheck.HTTP.Port = conv.Runtime.HTTPPort
	}
	p.setState(e, PodState{Stage: StageCreating, Message: "creating the VM"})
	vm, err := p.api.Create(ctx, req)
	if err != nil && client.IsStatus(err, http.StatusConflict) && req.Tags[wire.NameTag] != "" && strings.Contains(err.Error(), "name") {
		// Another VM on this host has the pod's name (a pod of the same
		// name in another namespace): this one goes without a name.
		p.recorder.Eventf(pod, corev1.EventTypeWarning, "NameTaken", "the VM name %s is taken on this host; the VM is reached by its id instead", req.Tags[wire.NameTag])
		delete(req.Tags, wire.NameTag)
		vm, err = p.api.Create(ctx, req)
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		p.fail(e, ReasonCreateFailed, fmt.Sprintf("create the VM: %v", err))
		return
	}
	p.mu.Lock()
	e.vmID = vm.ID
	e.state = PodState{Stage: StageVM, VM: &vm}
	p.mu.Unlock()
	ports := make([]string, 0, len(vm.Network.Ports))
	for _, pt := range vm.Network.Ports {
		ports = append(ports, fmt.Sprintf("%d/%s on host port %d", pt.Guest, pt.Protocol, pt.Host))
	}
	msg := fmt.Sprintf("VM %s created and started: guest address %s", vm.ID, vm.Network.GuestIP)
	if len(ports) > 0 {
		msg += ", published " + strings.Join(ports, ", ")
	}
	if vm.Name != "" {
		msg += ", forwarder label " + vm.Name
	}
	p.recorder.Event(pod, corev1.EventTypeNormal, "Created", msg)
	p.refresh(ctx, e)
}

// converted is a finished conversion of an image.
type converted struct {
	Ext4    string
	Meta    imagemeta.ImageMeta
	Runtime imagemeta.Runtime
	Pulled  int
}

// convert converts the pod's image into the images root, reusing a finished
// earlier conversion (see docs/kubernetes.md on pull policies). One
// conversion of an image runs at a time in this process; the converter's
// own lock keeps other processes out.
func (p *Provider) convert(ctx context.Context, pod *corev1.Pod, plan Plan) (converted, bool, error) {
	out, err := converter.OutputDir(p.images.Root, plan.Image)
	if err != nil {
		return converted{}, false, err
	}
	mu, _ := p.convertMu.LoadOrStore(out, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if c, ok := finished(out); ok {
		return c, true, nil
	}
	kc, err := p.keychain(pod.Namespace, plan.PullSecrets)
	if err != nil {
		return converted{}, false, err
	}
	// A failed conversion leaves nothing behind: the directories it made
	// for an image that was never there go again.
	made := firstMissing(p.images.Root, out)
	res, err := converter.Convert(ctx, converter.Options{
		Source: plan.Image, ImagesRoot: p.images.Root, BaseAssetsDir: p.images.BaseAssetsDir,
		Insecure: p.images.Insecure, NoTar: true, Keychain: kc,
	})
	if err != nil {
		if made != "" {
			os.RemoveAll(made)
		}
		return converted{}, false, err
	}
	return converted{Ext4: res.Ext4, Meta: res.Meta, Runtime: res.Runtime, Pulled: res.Pulled}, false, nil
}

// firstMissing is the outermost directory between root (exclusive) and dir
// (inclusive) that does not exist yet: what making dir creates. Empty when
// dir exists or is not below root.
func firstMissing(root, dir string) string {
	root, dir = filepath.Clean(root), filepath.Clean(dir)
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return ""
	}
	cur := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		cur = filepath.Join(cur, part)
		if _, err := os.Lstat(cur); errors.Is(err, os.ErrNotExist) {
			return cur
		}
	}
	return ""
}

// finished is the earlier conversion in dir, when there is a complete one.
func finished(dir string) (converted, bool) {
	meta, ok := imagemeta.Complete(dir)
	if !ok {
		return converted{}, false
	}
	var rt imagemeta.Runtime
	b, err := os.ReadFile(filepath.Join(dir, imagemeta.RuntimeFile))
	if err != nil || json.Unmarshal(b, &rt) != nil {
		return converted{}, false
	}
	return converted{Ext4: filepath.Join(dir, imagemeta.PayloadExt4), Meta: meta, Runtime: rt}, true
}

// keychain is the credentials of the pod's pull secrets; without any, the
// registry is pulled anonymously.
func (p *Provider) keychain(namespace string, names []string) (authn.Keychain, error) {
	if len(names) == 0 {
		return authn.NewMultiKeychain(), nil
	}
	secrets := make([]*corev1.Secret, 0, len(names))
	for _, n := range names {
		s, err := p.secrets.Secrets(namespace).Get(n)
		if err != nil {
			return nil, fmt.Errorf("imagePullSecrets %s: %w", n, err)
		}
		secrets = append(secrets, s)
	}
	return Keychain(secrets)
}

// fail ends a pod that got no VM, with a warning event saying why.
func (p *Provider) fail(e *entry, reason, msg string) {
	p.recorder.Event(e.pod, corev1.EventTypeWarning, reason, msg)
	p.log.Warn("pod failed", "pod", key(e.pod.Namespace, e.pod.Name), "reason", reason, "error", msg)
	p.setState(e, PodState{Stage: StageFailed, Reason: reason, Message: msg, Ended: time.Now()})
}

func (p *Provider) setState(e *entry, st PodState) {
	p.mu.Lock()
	e.state = st
	p.mu.Unlock()
	p.changed(e)
}

// changed tells the pod controller of the pod's status. Stubs (VMs found at
// start whose pod is not adopted yet) are not told: their status would lack
// the pod's spec.
func (p *Provider) changed(e *entry) {
	p.mu.Lock()
	if !e.adopted {
		p.mu.Unlock()
		return
	}
	pod := p.podLocked(e)
	notify := p.notify
	p.mu.Unlock()
	notify(pod)
}

// podLocked is the entry's pod with its current status.
func (p *Provider) podLocked(e *entry) *corev1.Pod {
	pod := e.pod.DeepCopy()
	if e.state.Stage == StageVM && e.state.Started.IsZero() && e.state.VM != nil && e.state.VM.State == wire.StateRunning {
		e.state.Started = time.Now()
	}
	// The last status given keeps the conditions' times where they did
	// not change: a status that moved on every look would be written to
	// the API server on every look.
	if e.last != nil {
		pod.Status.Conditions = e.last.Conditions
	}
	status := PodStatus(pod, e.state, p.hostIP)
	e.last = &status
	pod.Status = *status.DeepCopy()
	return pod
}

// refresh reads the entry's VM and tells the pod controller when the pod's
// status changed. A daemon that does not answer changes nothing (the VM runs
// on without it); a VM the daemon no longer has fails the pod.
func (p *Provider) refresh(ctx context.Context, e *entry) {
	p.mu.Lock()
	id, stage, deleting := e.vmID, e.state.Stage, e.deleting
	p.mu.Unlock()
	if id == "" || stage != StageVM || deleting {
		return
	}
	vm, err := p.api.Get(ctx, id)
	if err != nil {
		if client.IsStatus(err, http.StatusNotFound) {
			p.fail(e, ReasonVMGone, fmt.Sprintf("the pod's VM %s no longer exists on this host", id))
		}
		return
	}
	p.mu.Lock()
	if e.state.Stage != StageVM || e.vmID != id || e.deleting {
		p.mu.Unlock()
		return
	}
	e.state.VM = &vm
	p.mu.Unlock()
	p.changed(e)
}

// Watch follows the daemon's events and refreshes the pods whose VMs they
// are about, recording a pod event for each step of the VM's life; every
// resync it refreshes every pod (what a lost event or a daemon restart may
// have hidden). It returns when ctx ends.
func (p *Provider) Watch(ctx context.Context, resync time.Duration) {
	go func() {
		err := p.api.Watch(ctx, client.EventsOptions{Reconnect: true}, func(ev events.Event) error {
			if e := p.byVM(ev.VM); e != nil {
				p.vmEvent(e, ev)
				p.refresh(ctx, e)
			}
			return nil
		})
		if err != nil && ctx.Err() == nil {
			p.log.Error("the daemon's event stream ended; pods are refreshed every resync only", "error", err)
		}
	}()
	t := time.NewTicker(resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		all := make([]*entry, 0, len(p.pods))
		for _, e := range p.pods {
			all = append(all, e)
		}
		p.mu.Unlock()
		for _, e := range all {
			p.refresh(ctx, e)
		}
	}
}

func (p *Provider) byVM(id string) *entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.pods {
		if e.vmID == id && id != "" {
			return e
		}
	}
	return nil
}

// vmEvent records a pod event for a VM event.
func (p *Provider) vmEvent(e *entry, ev events.Event) {
	p.mu.Lock()
	pod, adopted := e.pod, e.adopted
	p.mu.Unlock()
	if !adopted {
		return
	}
	msg := ev.Message
	if msg == "" {
		msg = fmt.Sprintf("VM %s: %s", wire.ShortID(ev.VM), ev.Type)
	}
	if ev.Reason != "" {
		msg += " (" + ev.Reason + ")"
	}
	switch ev.Type {
	case events.Ready:
		p.recorder.Event(pod, corev1.EventTypeNormal, "Ready", msg)
	case events.Restarted:
		p.recorder.Event(pod, corev1.EventTypeNormal, "Restarted", msg)
	case events.Stopped:
		p.recorder.Event(pod, corev1.EventTypeNormal, "Stopped", msg)
	case events.Unhealthy:
		p.recorder.Event(pod, corev1.EventTypeWarning, "Unhealthy", msg)
	case events.Failed:
		p.recorder.Event(pod, corev1.EventTypeWarning, "VMFailed", msg)
	}
}

// UpdatePod implements node.PodLifecycleHandler: it takes the pod's new
// metadata; a VM found at start is adopted by its pod here. A pod of the
// same name with another uid replaces the old one's VM.
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	e, ok := p.pods[k]
	if !ok {
		p.mu.Unlock()
		return p.CreatePod(ctx, pod)
	}
	if e.pod.UID != pod.UID {
		old := e.pod
		p.mu.Unlock()
		if err := p.DeletePod(ctx, old); err != nil && !vkerrdefs.IsNotFound(err) {
			return err
		}
		return p.CreatePod(ctx, pod)
	}
	prev := e.pod
	np := pod.DeepCopy()
	if prev.Status.StartTime != nil {
		np.Status.StartTime = prev.Status.StartTime
	}
	e.pod = np
	wasAdopted := e.adopted
	e.adopted = true
	p.mu.Unlock()
	if wasAdopted && len(prev.Spec.Containers) == 1 && len(pod.Spec.Containers) == 1 && prev.Spec.Containers[0].Image != pod.Spec.Containers[0].Image {
		p.recorder.Eventf(pod, corev1.EventTypeWarning, ReasonUnsupported, "the image of a running pod cannot change: its VM keeps running %s (delete the pod to run %s)", prev.Spec.Containers[0].Image, pod.Spec.Containers[0].Image)
	}
	if !wasAdopted {
		p.recorder.Eventf(pod, corev1.EventTypeNormal, "Adopted", "the node agent found the pod's VM %s again", e.vmID)
	}
	p.refresh(ctx, e)
	p.changed(e)
	return nil
}

// DeletePod implements node.PodLifecycleHandler: it stops a creation under
// way and deletes every VM of the pod (its uid's, found by tag, so that a VM
// whose create answer was lost goes too) with everything the daemon made
// for it. The payload gets the pod's grace period to stop (mergen-init's
// stop timeout, set at create).
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	e, ok := p.pods[k]
	p.mu.Unlock()
	if ok && e.pod.UID != pod.UID && pod.UID != "" {
		return vkerrdefs.NotFoundf("pod %s (uid %s) is not on this node", k, pod.UID)
	}
	if ok {
		p.mu.Lock()
		e.deleting = true
		cancel, done := e.cancel, e.done
		p.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		if done != nil {
			select {
			case <-done:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	vms, err := p.api.List(ctx)
	if err != nil {
		return fmt.Errorf("delete pod %s: %w", k, err)
	}
	var deleted []string
	for _, vm := range vms {
		if vm.Tags[TagNode] != p.node || vm.Tags[TagNamespace] != pod.Namespace || vm.Tags[TagPod] != pod.Name {
			continue
		}
		if pod.UID != "" && vm.Tags[TagUID] != string(pod.UID) {
			continue
		}
		if ok {
			p.recorder.Eventf(pod, corev1.EventTypeNormal, "Stopping", "stopping and deleting VM %s", vm.ID)
		}
		if err := p.api.Delete(ctx, vm.ID); err != nil && !client.IsStatus(err, http.StatusNotFound) {
			return fmt.Errorf("delete pod %s: vm %s: %w", k, vm.ID, err)
		}
		deleted = append(deleted, vm.ID)
	}
	if !ok {
		if len(deleted) == 0 {
			return vkerrdefs.NotFoundf("pod %s is not on this node", k)
		}
		return nil
	}
	p.mu.Lock()
	vm := e.state.VM
	e.state = PodState{Stage: StageDeleted, VM: vm, Ended: time.Now()}
	if cur, still := p.pods[k]; still && cur == e {
		delete(p.pods, k)
	}
	p.mu.Unlock()
	if len(deleted) > 0 {
		p.recorder.Eventf(pod, corev1.EventTypeNormal, "Deleted", "VM %s deleted", strings.Join(deleted, ", "))
	}
	p.changed(e)
	return nil
}

// GetPod implements node.PodLifecycleHandler.
func (p *Provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[key(namespace, name)]
	if !ok {
		return nil, vkerrdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	return p.podLocked(e), nil
}

// GetPodStatus implements node.PodLifecycleHandler.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods implements node.PodLifecycleHandler.
func (p *Provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.pods))
	for _, e := range p.pods {
		out = append(out, p.podLocked(e))
	}
	return out, nil
}

// vmOf is the VM of a running pod, for logs and exec.
func (p *Provider) vmOf(namespace, name, container string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[key(namespace, name)]
	if !ok {
		return "", vkerrdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	if e.adopted && len(e.pod.Spec.Containers) == 1 && container != "" && e.pod.Spec.Containers[0].Name != container {
		return "", vkerrdefs.NotFoundf("pod %s/%s has no container %s", namespace, name, container)
	}
	if e.vmID == "" {
		return "", vkerrdefs.NotFoundf("pod %s/%s has no VM yet (%s)", namespace, name, e.state.Message)
	}
	return e.vmID, nil
}

// GetContainerLogs is `kubectl logs`: the VM's console (kernel, mergen-init
// and the payload's output), followed with -f.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, name, container string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	id, err := p.vmOf(namespace, name, container)
	if err != nil {
		return nil, err
	}
	if opts.Previous {
		return nil, vkerrdefs.InvalidInputf("--previous: a VM's console holds every run; read it without --previous")
	}
	lo := client.LogsOptions{Follow: opts.Follow}
	if opts.Tail > 0 {
		lo.Tail = strconv.Itoa(opts.Tail)
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		var w io.Writer = pw
		if opts.LimitBytes > 0 {
			w = &limitWriter{w: pw, n: int64(opts.LimitBytes), cancel: cancel}
		}
		err := p.api.Logs(ctx, id, lo, w)
		if errors.Is(err, errLimit) {
			err = nil
		}
		pw.CloseWithError(err)
	}()
	return readCloser{pr, cancel}, nil
}

var errLimit = errors.New("log byte limit reached")

// limitWriter passes n bytes on, then ends the stream.
type limitWriter struct {
	w      io.Writer
	n      int64
	cancel context.CancelFunc
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if l.n <= 0 {
		l.cancel()
		return 0, errLimit
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.w.Write(b)
	l.n -= int64(n)
	return n, err
}

type readCloser struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r readCloser) Close() error { r.cancel(); return r.PipeReader.Close() }

// RunInContainer is `kubectl exec`: the command runs in the guest through its
// agent, as `mergen exec` runs it; its exit status becomes exec's.
func (p *Provider) RunInContainer(ctx context.Context, namespace, name, container string, cmd []string, attach api.AttachIO) error {
	id, err := p.vmOf(namespace, name, container)
	if err != nil {
		return err
	}
	req := execproto.ExecRequest{Argv: cmd, TTY: attach.TTY(), Stdin: attach.Stdin() != nil}
	streams := client.ExecIO{Stdin: attach.Stdin()}
	if out := attach.Stdout(); out != nil {
		streams.Stdout = out
	}
	if errw := attach.Stderr(); errw != nil {
		streams.Stderr = errw
	}
	if attach.TTY() {
		resize := make(chan execproto.WindowSize, 1)
		streams.Resize = resize
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case s, ok := <-attach.Resize():
					if !ok {
						return
					}
					select {
					case resize <- execproto.WindowSize{Cols: int(s.Width), Rows: int(s.Height)}:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	exit, err := p.api.Exec(ctx, id, req, streams)
	if err != nil {
		return err
	}
	if exit.Code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", exit.Code), Code: exit.Code}
	}
	return nil
}

// AttachToContainer is refused: a VM's payload has no attachable stdin.
func (p *Provider) AttachToContainer(ctx context.Context, namespace, name, container string, attach api.AttachIO) error {
	return vkerrdefs.InvalidInputf("attach is not supported by mergen pods; use kubectl exec or kubectl logs -f")
}

// PortForward is refused: see docs/kubernetes.md for how a pod's ports are
// reached (published host ports, the forwarder).
func (p *Provider) PortForward(ctx context.Context, namespace, name string, port int32, stream io.ReadWriteCloser) error {
	return vkerrdefs.InvalidInputf("port-forward is not supported by mergen pods; their ports are published on the host and through mergen-forwarder")
}
