// Command mergen-node joins a mergen host to a Kubernetes cluster as a node
// whose pods run as microVMs of the host's daemon (docs/kubernetes.md). It
// is a program of its own, not a mergen subcommand: the Kubernetes client
// libraries it links would triple the size and start-up memory of every
// mergen command, the daemon's included.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mergenhq/mergen/internal/alloc"
	"github.com/mergenhq/mergen/internal/auth"
	"github.com/mergenhq/mergen/internal/client"
	"github.com/mergenhq/mergen/internal/config"
	"github.com/mergenhq/mergen/internal/kubenode"
	"github.com/mergenhq/mergen/internal/logging"
	"github.com/mergenhq/mergen/internal/vmm"
)

func main() {
	if err := newNodeCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "mergen-node:", err)
		os.Exit(1)
	}
}

type nodeFlags struct {
	api                    string
	name, kubeconfig       string
	reserveCPU, reserveMem string
	listen, nodeIP         string
	tlsCert, tlsKey        string
	clientCA               string
	insecure               bool
	resync, daemonCheck    time.Duration
	logLevel, logFormat    string
}

func newNodeCmd() *cobra.Command {
	var f nodeFlags
	host, _ := os.Hostname()
	cli, _ := config.LoadCLI()
	cmd := &cobra.Command{
		Use:           "mergen-node",
		Short:         "Join this host to a Kubernetes cluster as a node whose pods run as microVMs",
		SilenceUsage:  true,
		SilenceErrors: true,
		Long: `mergen-node registers this host as a Kubernetes node and runs the pods the
scheduler places on it as VMs of the local daemon, which it reaches through
its API socket (or --api with a token), like the other commands.

The node offers the host's CPUs and memory less --reserve-cpu and
--reserve-memory, and as many pods as the daemon's guest address pool
(MGR_GUEST_CIDR) and host port pool (MGR_PORT_START..MGR_PORT_END) allow. It
is labelled mergen.io/vmm=<qemu|firecracker> and tainted
mergen.io/microvm=true:NoSchedule: only pods that tolerate the taint land.

kubectl logs and exec reach the node's kubelet endpoint (--listen), which
authenticates the API server's client certificate (--client-ca) or a bearer
token, and authorizes each request with the API server. See
docs/kubernetes.md for credentials, RBAC and how a pod maps onto a VM.`,
		Example: `  mergen-node --kubeconfig /etc/mergen/node.kubeconfig --client-ca /etc/kubernetes/pki/ca.crt
  mergen-node --name edge-1 --reserve-cpu 500m --reserve-memory 2Gi --listen 10.0.0.5:10250`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			return kubenode.Run(ctx, cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.api, "api", cli.API, "daemon address: unix:///path, host:port or URL (env MERGEN_API; default: the socket MGR_API_SOCKET when the daemon answers there, else "+config.DefaultAPI+")")
	fl.StringVar(&f.name, "name", host, "the node's name (default: the hostname)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", cli.Kubeconfig, "kubeconfig with the node's credentials ($KUBECONFIG; empty: the in-cluster service account)")
	fl.StringVar(&f.reserveCPU, "reserve-cpu", "0", "CPU kept for the host, not offered to pods (a quantity: 1, 500m)")
	fl.StringVar(&f.reserveMem, "reserve-memory", "1Gi", "memory kept for the host, not offered to pods (a quantity: 512Mi, 2Gi)")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:10250", "address of the node's kubelet endpoint (kubectl logs and exec come through the API server to it)")
	fl.StringVar(&f.nodeIP, "node-ip", "", "address the API server reaches the kubelet endpoint at (default: the --listen host)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "kubelet endpoint's serving certificate (PEM; default: a self-signed one made at start)")
	fl.StringVar(&f.tlsKey, "tls-key", "", "its private key (PEM)")
	fl.StringVar(&f.clientCA, "client-ca", "", "CA (PEM) whose client certificates may call the kubelet endpoint: the one that signed the API server's --kubelet-client-certificate")
	fl.BoolVar(&f.insecure, "insecure-registry", false, "allow plain HTTP to registries when converting pods' images")
	fl.DurationVar(&f.resync, "resync", 10*time.Second, "how often every pod's VM is read again, beside the daemon's event stream")
	fl.DurationVar(&f.daemonCheck, "daemon-check", 3*time.Second, "how often the node asks the daemon whether it answers (the node is NotReady while it does not)")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "console", "log format: console, json or text")
	return cmd
}

// config gathers the node's configuration: the flags, the CLI's view of
// the daemon (address, images root) and the daemon's own settings on this
// host (its pools and VMM), read from the same environment the daemon has.
func (f *nodeFlags) config(cmd *cobra.Command) (kubenode.Config, error) {
	var cfg kubenode.Config
	if f.name == "" {
		return cfg, fmt.Errorf("--name: empty (and the hostname is unknown)")
	}
	log, err := logging.New(cmd.ErrOrStderr(), f.logLevel, f.logFormat, false)
	if err != nil {
		return cfg, err
	}
	cli, err := config.LoadCLI()
	if err != nil {
		return cfg, err
	}
	daemon, err := config.Load()
	if err != nil {
		return cfg, fmt.Errorf("the daemon's settings on this host (its pools and VMM): %w", err)
	}
	api, err := daemonClient(f.api, cli)
	if err != nil {
		return cfg, err
	}
	kube, err := kubeClient(f.kubeconfig)
	if err != nil {
		return cfg, err
	}
	reserveCPU, err := resource.ParseQuantity(f.reserveCPU)
	if err != nil || reserveCPU.Sign() < 0 {
		return cfg, fmt.Errorf("--reserve-cpu %q: want a quantity such as 1 or 500m", f.reserveCPU)
	}
	reserveMem, err := resource.ParseQuantity(f.reserveMem)
	if err != nil || reserveMem.Sign() < 0 {
		return cfg, fmt.Errorf("--reserve-memory %q: want a quantity such as 512Mi or 2Gi", f.reserveMem)
	}
	mem, err := kubenode.HostMemory()
	if err != nil {
		return cfg, fmt.Errorf("the host's memory: %w", err)
	}
	nodeIP := f.nodeIP
	if nodeIP == "" {
		h, _, err := net.SplitHostPort(f.listen)
		if err != nil {
			return cfg, fmt.Errorf("--listen %q: %w", f.listen, err)
		}
		if h == "" || net.ParseIP(h).IsUnspecified() {
			return cfg, fmt.Errorf("--node-ip: needed when --listen %q names no one address", f.listen)
		}
		nodeIP = h
	}
	if net.ParseIP(nodeIP) == nil {
		return cfg, fmt.Errorf("--node-ip %q: not an IP address", nodeIP)
	}
	vmmName := daemon.VMM
	if vmmName == "" {
		vmmName = vmm.DefaultName(daemon.Driver)
	}
	return kubenode.Config{
		Name: f.name, Kube: kube, API: api, VMM: vmmName,
		Host: kubenode.Host{
			CPUs: runtime.NumCPU(), MemBytes: mem,
			ReserveMilliCPU: reserveCPU.MilliValue(), ReserveMemBytes: reserveMem.Value(),
			GuestAddrs: alloc.PoolSize(daemon.GuestCIDR), HostPorts: daemon.PortEnd - daemon.PortStart + 1,
		},
		Images: kubenode.Images{Root: cli.ImagesRoot, BaseAssetsDir: cli.BaseAssetsDir, Insecure: f.insecure},
		Listen: f.listen, NodeIP: nodeIP, TLSCert: f.tlsCert, TLSKey: f.tlsKey, ClientCA: f.clientCA,
		Resync: f.resync, DaemonCheck: f.daemonCheck, Log: log,
	}, nil
}

// daemonClient connects as mergen's commands do: an explicit address (with
// the token from MERGEN_API_TOKEN or the token file), else the daemon's unix
// socket when it answers (its file permissions are the boundary), else the
// default TCP address with the token.
func daemonClient(addr string, cli config.CLI) (*client.Client, error) {
	if addr == "" {
		if client.Socket(cli.APISocket) {
			return client.New("unix://" + cli.APISocket)
		}
		addr = config.DefaultAPI
	}
	if strings.HasPrefix(addr, "unix://") {
		return client.New(addr)
	}
	token := cli.APIToken
	if token == "" {
		// Unreadable: none; the daemon's 401 then says how to give one.
		token, _ = auth.First(cli.APITokenFile)
	}
	return client.New(addr, client.WithToken(token))
}

// kubeClient is the node's Kubernetes client: from the kubeconfig (paths
// separated as $KUBECONFIG separates them), else the in-cluster service
// account; neither is a start-up error that says so.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rules := &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(kubeconfig)}
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
	} else if rc, err = rest.InClusterConfig(); err != nil {
		return nil, fmt.Errorf("no Kubernetes credentials: give --kubeconfig (or KUBECONFIG) with the node's credentials, see docs/kubernetes.md (%v)", err)
	}
	if rc.BearerToken == "" && rc.BearerTokenFile == "" && rc.CertData == nil && rc.CertFile == "" && rc.Username == "" && rc.ExecProvider == nil && rc.AuthProvider == nil {
		return nil, fmt.Errorf("--kubeconfig %s: it holds no credentials (no client certificate, token or exec plugin); the node must authenticate as itself, see docs/kubernetes.md", kubeconfig)
	}
	return kubernetes.NewForConfig(rc)
}
