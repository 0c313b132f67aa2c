package manager_test

import (
	"context"
	"net/http/httptest"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mergenhq/mergen/internal/wire"
)

// The metrics agree with the operations made: counts by kind and result,
// a latency observation for each, and the VMs and guest addresses as the
// store has them, parsed with Prometheus' own text parser.
func TestMetricsCountTheOperationsMade(t *testing.T) {
	h := newHost(t, nil)
	ctx := context.Background()
	var ids []string
	for range 3 {
		vm, err := h.mgr.Create(ctx, wire.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, vm.ID)
	}
	if _, err := h.mgr.Create(ctx, wire.CreateRequest{VCPU: 99}); err == nil {
		t.Fatal("a create with 99 vCPUs succeeded")
	}
	if err := h.mgr.Start(ctx, ids[0]); err == nil {
		t.Fatal("start without a service manager succeeded")
	}
	for _, id := range ids[1:] {
		if err := h.mgr.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	families := h.scrape(t)
	value := func(name string, labels map[string]string) float64 { return metricValue(t, families, name, labels) }
	for _, c := range []struct {
		op, result string
		want       float64
	}{
		{"create", "ok", 3}, {"create", "error", 1}, {"start", "error", 1}, {"delete", "ok", 2}, {"stop", "ok", 0},
	} {
		if got := value("mergen_operations_total", map[string]string{"op": c.op, "result": c.result}); got != c.want {
			t.Errorf("mergen_operations_total{op=%q,result=%q} = %v, want %v", c.op, c.result, got, c.want)
		}
	}
	if got := value("mergen_operation_duration_seconds", map[string]string{"op": "create"}); got != 4 {
		t.Errorf("create latency observations = %v, want 4", got)
	}
	if got := value("mergen_vms", map[string]string{"state": "stopped"}); got != 1 {
		t.Errorf("mergen_vms{state=stopped} = %v, want 1 (the VM left)", got)
	}
	if got := value("mergen_guest_addresses", map[string]string{"use": "used"}); got != 1 {
		t.Errorf("guest addresses used = %v, want 1", got)
	}
	if got := value("mergen_snapshots", nil); got != 0 {
		t.Errorf("snapshots = %v, want 0", got)
	}
}

// scrape reads the manager's metrics with Prometheus' own text parser.
func (h *host) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.mgr.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse the metrics: %v", err)
	}
	return families
}

// metricValue is the value of the sample of name whose labels include
// labels: a counter's or gauge's value, a histogram's count; 0 when there
// is none.
func metricValue(t *testing.T, families map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := families[name]
	if !ok {
		return 0
	}
next:
	for _, m := range f.Metric {
		for k, v := range labels {
			if !hasLabel(m, k, v) {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.Label {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}
