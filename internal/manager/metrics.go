package manager

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mergenhq/mergen/internal/alloc"
)

// metrics are the daemon's Prometheus metrics, on a registry of the
// manager's own: operation counts and latencies are recorded as they
// happen; the VMs by state, restarts, snapshots and the guest address pool
// are read from the store when scraped, so they can never disagree with it.
type metrics struct {
	reg      *prometheus.Registry
	ops      *prometheus.CounterVec   // op, result
	duration *prometheus.HistogramVec // op
	// hookFailures counts failed manager hooks, best-effort ones included.
	hookFailures *prometheus.CounterVec // event
	// bootToReady is the time from a start (or a restart for being
	// unhealthy) to the health check's first pass.
	bootToReady prometheus.Histogram
}

// Operation names, the "op" label.
const (
	opCreate   = "create"
	opRestore  = "restore" // a create from a snapshot or an image's ready snapshot
	opStart    = "start"
	opStop     = "stop"
	opRestart  = "restart"
	opDelete   = "delete"
	opPause    = "pause"
	opResume   = "resume"
	opSnapshot = "snapshot"
)

func newMetrics(m *Manager) *metrics {
	mt := &metrics{
		reg: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mergen_operations_total",
			Help: "VM operations by kind (create, restore, start, stop, restart, delete, pause, resume, snapshot) and result (ok, error).",
		}, []string{"op", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mergen_operation_duration_seconds",
			Help:    "How long VM operations took, by kind, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14), // 5 ms to ~41 s
		}, []string{"op"}),
		hookFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mergen_hook_failures_total",
			Help: "Manager hooks that failed (HTTP status, exit status, timeout), by event; best-effort ones included.",
		}, []string{"event"}),
		bootToReady: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mergen_boot_to_ready_seconds",
			Help:    "Time from a VM's start request (or its restart for being unhealthy) to its health check's first pass; VMs with a health check only.",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 11), // 250 ms to ~4 min
		}),
	}
	mt.reg.MustRegister(mt.ops, mt.duration, mt.hookFailures, mt.bootToReady, &stateCollector{m: m},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return mt
}

// observe records one operation that began at start; err is its outcome.
func (mt *metrics) observe(op string, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	mt.ops.WithLabelValues(op, result).Inc()
	mt.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// MetricsHandler serves the daemon's metrics in Prometheus' text format.
func (m *Manager) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(m.metrics.reg, promhttp.HandlerOpts{})
}

var (
	vmsDesc = prometheus.NewDesc("mergen_vms", "VMs by state (running, paused, stopped, or the service manager's word).",
		[]string{"state"}, nil)
	restartsDesc = prometheus.NewDesc("mergen_vm_restarts", "Automatic restarts the supervisors made, summed over the VMs.",
		nil, nil)
	snapshotsDesc = prometheus.NewDesc("mergen_snapshots", "Snapshots on this host.", nil, nil)
	snapBytesDesc = prometheus.NewDesc("mergen_snapshot_bytes", "Bytes the snapshots take.", nil, nil)
	addrsDesc     = prometheus.NewDesc("mergen_guest_addresses", "Guest addresses of the namespace network (MGR_GUEST_CIDR) by use (used, free).",
		[]string{"use"}, nil)
)

// stateCollector reads what the store and the service manager say at
// scrape time.
type stateCollector struct{ m *Manager }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{vmsDesc, restartsDesc, snapshotsDesc, snapBytesDesc, addrsDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The documents of a list, as kept for lists: a scrape costs what a
	// list does, without the encoding.
	if docs, err := c.m.listDocs(ctx); err == nil {
		byState := map[string]int{}
		restarts, used := 0, 0
		for _, d := range docs {
			byState[d.live.state]++
			restarts += d.live.restarts
			if d.usesPool {
				used++
			}
		}
		for state, n := range byState {
			ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(n), state)
		}
		ch <- prometheus.MustNewConstMetric(restartsDesc, prometheus.GaugeValue, float64(restarts))
		if size := alloc.PoolSize(c.m.cfg.GuestCIDR); size > 0 {
			ch <- prometheus.MustNewConstMetric(addrsDesc, prometheus.GaugeValue, float64(used), "used")
			ch <- prometheus.MustNewConstMetric(addrsDesc, prometheus.GaugeValue, float64(size-used), "free")
		}
	}
	if snaps, err := c.m.snaps.List(); err == nil {
		var bytes int64
		for _, s := range snaps {
			bytes += s.SizeBytes
		}
		ch <- prometheus.MustNewConstMetric(snapshotsDesc, prometheus.GaugeValue, float64(len(snaps)))
		ch <- prometheus.MustNewConstMetric(snapBytesDesc, prometheus.GaugeValue, float64(bytes))
	}
}
