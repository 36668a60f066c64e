package helm_test

// Monitoring: the Grafana dashboard, the PrometheusRule and the
// ServiceMonitor query only series the broker exports.

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	corev1 "k8s.io/api/core/v1"
)

var metricName = regexp.MustCompile(`qlik_token_broker_[a-z_]+`)

// brokerFamily is one metric family the broker registers.
type brokerFamily struct {
	name string
	// series are the names it is queried by: its own for a counter or
	// gauge; for a histogram _bucket (first: what a quantile panel uses),
	// _sum and _count.
	series []string
}

// brokerFamilies builds the broker's collectors with metrics.New on a fresh
// registry and describes each, so that the chart follows metrics/metrics.go
// rather than a copy of its names. Describe, not Gather: a vector has no
// series before its first event.
func brokerFamilies(t *testing.T) []brokerFamily {
	t.Helper()
	rec := &recordingRegisterer{Registerer: prometheus.NewRegistry()}
	metrics.New(rec, metrics.BuildInfo{Version: "test"})
	var out []brokerFamily
	for _, c := range rec.collectors {
		ch := make(chan *prometheus.Desc)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			f := brokerFamily{name: m[1], series: []string{m[1]}}
			switch c.(type) {
			case *prometheus.HistogramVec, prometheus.Histogram:
				f.series = []string{m[1] + "_bucket", m[1] + "_sum", m[1] + "_count"}
			case *prometheus.CounterVec, prometheus.Counter, *prometheus.GaugeVec, prometheus.Gauge:
			default:
				t.Fatalf("%s: collector %T: teach brokerFamilies its series", m[1], c)
			}
			out = append(out, f)
		}
	}
	if len(out) < 20 {
		t.Fatalf("metrics.New registered only %d families", len(out))
	}
	return out
}

// exportedSeries lists every series name the broker exports. Dashboards and
// alerts may query nothing else.
func exportedSeries(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, f := range brokerFamilies(t) {
		names = append(names, f.series...)
	}
	return names
}

// fqName reads a metric's name from its prometheus.Desc, which has no
// accessor for it.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// recordingRegisterer registers on the registry it wraps and keeps every
// collector.
type recordingRegisterer struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	if err := r.Registerer.Register(c); err != nil {
		return err
	}
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// notOnDashboard are the families no panel needs to show, and why.
var notOnDashboard = map[string]string{
	"qlik_token_broker_build_info": "a constant 1 whose labels name the version",
}

// DashboardMetricNames returns, sorted and once each, every metric the Grafana
// dashboard queries (panel targets and template variables).
func DashboardMetricNames() ([]string, error) {
	raw, err := os.ReadFile(dashboard)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", dashboard, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		q, _ := json.Marshal(v.Query)
		exprs = append(exprs, string(q))
	}
	return metricNames(exprs...), nil
}

func metricNames(exprs ...string) []string {
	var names []string
	for _, e := range exprs {
		names = append(names, metricName.FindAllString(e, -1)...)
	}
	sort.Strings(names)
	return slices.Compact(names)
}

func TestDashboard(t *testing.T) {
	t.Parallel()
	names, err := DashboardMetricNames()
	if err != nil {
		t.Fatal(err)
	}
	exported := exportedSeries(t)
	for _, n := range names {
		if !slices.Contains(exported, n) {
			t.Errorf("the dashboard queries %s, which the broker does not export", n)
		}
	}
	// Every family the broker exports has a panel.
	for _, f := range brokerFamilies(t) {
		if _, ok := notOnDashboard[f.name]; ok {
			continue
		}
		if want := f.series[0]; !slices.Contains(names, want) {
			t.Errorf("no panel shows %s", want)
		}
	}

	raw, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID          int    `json:"id"`
			Title       string `json:"title"`
			Description string `json:"description"`
			Datasource  struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" {
		t.Error("the dashboard has no uid: Grafana would duplicate it on every reload")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %q, want the ${datasource} variable", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") || strings.Count(tg.Expr, "{") != strings.Count(tg.Expr, "}") {
				t.Errorf("panel %q: unbalanced query %s", p.Title, tg.Expr)
			}
			if strings.Contains(tg.Expr, "memory") {
				t.Errorf("panel %q queries %s: the memory cache tier is now l1", p.Title, tg.Expr)
			}
		}
		if strings.Contains(p.Description, "memory") {
			t.Errorf("panel %q: description %q names the memory tier, now l1", p.Title, p.Description)
		}
	}
}

func TestMonitoringNeedsOperatorAPI(t *testing.T) {
	t.Parallel()
	m := render(t, "-f", allOptions)
	if n := m.count("ServiceMonitor") + m.count("PrometheusRule"); n != 0 {
		t.Errorf("%d Prometheus Operator objects rendered without the monitoring.coreos.com/v1 API", n)
	}
	if _, ok := m.configMaps["acme-token-broker-dashboard"]; !ok {
		t.Error("the dashboard needs no operator, yet is missing")
	}
}

func checkDashboardConfigMap(t *testing.T, cm *corev1.ConfigMap, ns string) {
	t.Helper()
	if cm == nil {
		t.Fatal("no dashboard ConfigMap")
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v: Grafana's sidecar looks for grafana_dashboard: \"1\"", cm.Labels)
	}
	if cm.Namespace != ns {
		t.Errorf("dashboard ConfigMap in %s, want %s", cm.Namespace, ns)
	}
	want, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	got := cm.Data["qlik-token-broker.json"]
	if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
		t.Errorf("the ConfigMap does not hold %s (got %d bytes)", dashboard, len(got))
	}
}

func checkRules(t *testing.T, rule map[string]any, alerts ...string) {
	t.Helper()
	exported := exportedSeries(t)
	var got []string
	for _, g := range dig(rule, "spec", "groups").([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			r := r.(map[string]any)
			got = append(got, fmt.Sprint(r["alert"]))
			expr := fmt.Sprint(r["expr"])
			for _, n := range metricNames(expr) {
				if !slices.Contains(exported, n) {
					t.Errorf("alert %s queries %s, which the broker does not export", r["alert"], n)
				}
			}
			if strings.Contains(expr, "qlik_token_broker_") && !strings.Contains(expr, `namespace="`+namespace+`"`) {
				t.Errorf("alert %s is not scoped to the release namespace: %s", r["alert"], expr)
			}
		}
	}
	if !slices.Equal(got, alerts) {
		t.Errorf("alerts %v, want %v", got, alerts)
	}
}
