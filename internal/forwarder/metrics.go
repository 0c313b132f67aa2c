package forwarder

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are registered on the forwarder's own registry, served on the
// metrics listener only (never on the public HTTPS port).
type metrics struct {
	reg         *prometheus.Registry
	conns       *prometheus.CounterVec // by result
	active      prometheus.Gauge
	bytes       *prometheus.CounterVec // by direction
	errors      *prometheus.CounterVec // by kind
	dial        prometheus.Histogram
	handshake   prometheus.Histogram
	certReloads *prometheus.CounterVec
	refused     *prometheus.CounterVec // by reason
	paused      prometheus.Counter
}

// Error kinds, also used as the "kind" log attribute.
const (
	kindHandshake = "handshake"
	kindNoSNI     = "no_sni"
	kindDomain    = "other_domain"
	kindLabel     = "bad_label"
	kindNotFound  = "not_found"
	kindAmbiguous = "ambiguous"
	kindNoPort    = "no_http_port"
	kindDial      = "dial"
	kindResolver  = "resolver"
	kindStarting  = "starting" // the VM's health check has not passed since its start
	kindIdle      = "idle_timeout"
	kindTotal     = "total_timeout"
)

// Why a connection was refused at accept, the "reason" label.
const (
	refusedMaxConns      = "max_conns"
	refusedMaxConnsPerIP = "max_conns_per_ip"
)

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mergen_forwarder_connections_total",
			Help: "Accepted TLS connections by result (proxied, rejected, failed).",
		}, []string{"result"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mergen_forwarder_connections_active",
			Help: "Connections currently open.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mergen_forwarder_bytes_total",
			Help: "Bytes proxied: to_backend (client to VM) and to_client (VM to client).",
		}, []string{"direction"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mergen_forwarder_errors_total",
			Help: "Connection errors by kind.",
		}, []string{"kind"}),
		dial: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mergen_forwarder_dial_seconds",
			Help:    "Time to connect to the VM inside its namespace.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		handshake: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mergen_forwarder_tls_handshake_seconds",
			Help:    "Time to complete the TLS handshake with the client.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		certReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mergen_forwarder_cert_reloads_total",
			Help: "Certificate reloads after the files changed, by result.",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mergen_forwarder_refused_total",
			Help: "Connections closed at accept, before any TLS work, by the cap they were over (max_conns, max_conns_per_ip).",
		}, []string{"reason"}),
		paused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mergen_forwarder_client_reads_paused_total",
			Help: "Times a client stopped being read because the TLS records queued for it reached the cap (it does not read what it asks for).",
		}),
	}
	// Both reasons show from the start, at zero.
	m.refused.WithLabelValues(refusedMaxConns)
	m.refused.WithLabelValues(refusedMaxConnsPerIP)
	m.reg.MustRegister(m.conns, m.active, m.bytes, m.errors, m.dial, m.handshake, m.certReloads, m.refused, m.paused)
	return m
}
