package kubenode

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	vkerrdefs "github.com/virtual-kubelet/virtual-kubelet/errdefs"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/mergenhq/mergen/internal/client"
)

// Config is a node agent's configuration.
type Config struct {
	Name   string
	Kube   kubernetes.Interface // with the node's credentials
	API    *client.Client       // the local daemon
	VMM    string               // the daemon's VMM, for the node's label
	Host   Host
	Images Images
	// Listen is the kubelet endpoint's address (logs, exec), host:port;
	// NodeIP the address the API server reaches it at.
	Listen, NodeIP string
	// TLSCert and TLSKey are the endpoint's serving certificate; empty:
	// a self-signed one is made at start (the API server does not check
	// kubelet certificates unless told to).
	TLSCert, TLSKey string
	// ClientCA is a PEM file of the CA whose client certificates are
	// users of the endpoint (the API server's --kubelet-client-certificate);
	// bearer tokens are checked with a TokenReview. Every request is then
	// authorized with a SubjectAccessReview, as the kubelet does.
	ClientCA string
	// Resync is how often every pod's VM is read again, beside the
	// daemon's event stream; DaemonCheck how often the daemon is asked
	// whether it answers.
	Resync, DaemonCheck time.Duration
	Log                 *slog.Logger
}

// Run registers the node and runs its pods until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Kube == nil {
		return errors.New("node: no Kubernetes credentials (give --kubeconfig, or run in a cluster with a service account)")
	}
	if err := checkCredentials(ctx, cfg.Kube, cfg.Name); err != nil {
		return err
	}
	if err := cfg.API.Health(ctx); err != nil {
		return fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	_, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("node %s: --listen %q: %w", cfg.Name, cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return fmt.Errorf("node %s: --listen %q: want host:port with a port from 1 to 65535", cfg.Name, cfg.Listen)
	}
	spec, err := NodeSpec(cfg.Name, cfg.VMM, cfg.NodeIP, int32(port), cfg.Host)
	if err != nil {
		return fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	tlsCert, err := servingCert(cfg)
	if err != nil {
		return err
	}
	auth, err := nodeutil.WebhookAuth(cfg.Kube, cfg.Name, func(c *nodeutil.WebhookAuthConfig) error {
		if cfg.ClientCA == "" {
			return nil
		}
		pem, err := os.ReadFile(cfg.ClientCA)
		if err != nil {
			return fmt.Errorf("--client-ca: %w", err)
		}
		ca, err := dynamiccertificates.NewStaticCAContent("client-ca", pem)
		if err != nil {
			return fmt.Errorf("--client-ca %s: %w", cfg.ClientCA, err)
		}
		c.AuthnConfig.ClientCertificateCAContentProvider = ca
		return nil
	})
	if err != nil {
		return fmt.Errorf("node %s: kubelet endpoint authentication: %w", cfg.Name, err)
	}

	eb := record.NewBroadcaster()
	eb.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cfg.Kube.CoreV1().Events(corev1.NamespaceAll)})
	defer eb.Shutdown()
	recorder := eb.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "mergen-node", Host: cfg.Name})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// virtual-kubelet's controllers log through the node's logger.
	ctx = vklog.WithLogger(ctx, vkslog.FromSlog(cfg.Log.With("component", "virtual-kubelet")))
	var prov *Provider
	daemon := &daemonWatch{api: cfg.API, every: cfg.DaemonCheck, log: cfg.Log}
	mux := http.NewServeMux()
	n, err := nodeutil.NewNode(cfg.Name, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, vknode.NodeProvider, error) {
		prov = NewProvider(ctx, cfg.Name, cfg.NodeIP, cfg.API, cfg.Images, pc.Secrets, recorder, cfg.Log)
		// Before the pod controller starts: it deletes the VMs whose pod
		// is gone, from what GetPods then answers.
		if err := prov.Load(ctx); err != nil {
			return nil, nil, err
		}
		daemon.node = pc.Node
		return statsless{prov}, daemon, nil
	},
		nodeutil.WithClient(cfg.Kube),
		func(c *nodeutil.NodeConfig) error {
			c.NodeSpec = spec
			c.HTTPListenAddr = cfg.Listen
			c.EventRecorder = recorder
			c.Handler = nodeutil.WithAuth(auth, mux)
			c.NumWorkers = 4
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
		nodeutil.WithTLSConfig(func(t *tls.Config) error {
			t.Certificates = []tls.Certificate{tlsCert}
			return nil
		}),
	)
	if err != nil {
		return fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	go prov.Watch(ctx, cfg.Resync)
	cfg.Log.Info("node agent starting", "node", cfg.Name, "listen", cfg.Listen, "vmm", cfg.VMM,
		"cpu", spec.Status.Capacity.Cpu().String(), "memory", spec.Status.Capacity.Memory().String(), "pods", spec.Status.Capacity.Pods().String())
	err = n.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// checkCredentials makes a missing or refused credential a start-up error
// that says what to do, instead of a node that never registers.
func checkCredentials(ctx context.Context, kube kubernetes.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil, apierrors.IsNotFound(err):
		return nil
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("node %s: the API server refuses the node's credentials: %v (give a kubeconfig with valid credentials, docs/kubernetes.md)", name, err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("node %s: the node's credentials may not read nodes: %v (bind the node's user to the role in deploy/kubernetes/node-rbac.yaml)", name, err)
	}
	return fmt.Errorf("node %s: cannot reach the API server: %w", name, err)
}

// servingCert is the kubelet endpoint's certificate: the given one, or a
// self-signed one for the node's address.
func servingCert(cfg Config) (tls.Certificate, error) {
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		c, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cfg.Name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{cfg.Name},
	}
	if ip := net.ParseIP(cfg.NodeIP); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// daemonWatch is the node's status: Ready while the daemon answers. The
// node agent itself always answers the node controller's ping (so the lease
// stays fresh); a daemon that stops answering turns the node NotReady with
// the daemon's error, and Ready again when it is back. Its VMs run on
// meanwhile: the daemon does not own them.
type daemonWatch struct {
	api   *client.Client
	every time.Duration
	log   *slog.Logger

	mu   sync.Mutex
	node *corev1.Node
}

func (d *daemonWatch) Ping(context.Context) error { return nil }

func (d *daemonWatch) NotifyNodeStatus(ctx context.Context, cb func(*corev1.Node)) {
	go func() {
		var last error
		first := true
		t := time.NewTicker(d.every)
		defer t.Stop()
		for {
			cctx, cancel := context.WithTimeout(ctx, max(d.every, time.Second))
			err := d.api.Health(cctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			if first || (err == nil) != (last == nil) {
				if err != nil {
					d.log.Warn("the mergen daemon does not answer: node NotReady", "error", err)
				} else if !first {
					d.log.Info("the mergen daemon answers again: node Ready")
				}
				d.mu.Lock()
				d.node.Status.Conditions = NodeConditions(d.node.Status.Conditions, err)
				d.node.Status.Phase = corev1.NodeRunning
				n := d.node.DeepCopy()
				d.mu.Unlock()
				cb(n)
			}
			first, last = false, err
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// statsless is the provider with the kubelet's stats and metrics calls
// refused: a VM's figures are in the daemon's /metrics and `mergen stats`.
type statsless struct{ *Provider }

func (statsless) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return nil, vkerrdefs.NotFound("stats summary is not served by mergen nodes (see the daemon's /metrics)")
}

func (statsless) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, vkerrdefs.NotFound("resource metrics are not served by mergen nodes (see the daemon's /metrics)")
}
