package metrics_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/metrics"
)

// capture is a Registerer that keeps what is registered, so the test sees
// every metric family the broker can export, including vectors that have
// no series until their first event.
type capture struct{ collectors []prometheus.Collector }

func (c *capture) Register(col prometheus.Collector) error {
	c.collectors = append(c.collectors, col)
	return nil
}

func (c *capture) MustRegister(cs ...prometheus.Collector) {
	c.collectors = append(c.collectors, cs...)
}

func (c *capture) Unregister(prometheus.Collector) bool { return false }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// exported lists every series name the broker's collectors can produce,
// with the _bucket/_sum/_count series of histograms.
func exported(t *testing.T) map[string]bool {
	c := &capture{}
	metrics.New(c, metrics.BuildInfo{})
	names := map[string]bool{}
	for _, col := range c.collectors {
		ch := make(chan *prometheus.Desc, 16)
		go func() { col.Describe(ch); close(ch) }()
		for d := range ch {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
				names[m[1]+suffix] = true
			}
		}
	}
	return names
}

// TestDashboardAndAlertsQueryRealMetrics parses the chart's Grafana
// dashboard and alert rules and checks every broker metric they query is
// one the broker exports, so a rename breaks the build, not the dashboard.
func TestDashboardAndAlertsQueryRealMetrics(t *testing.T) {
	names := exported(t)
	chart := filepath.Join("..", "helm", "qlik-token-broker")
	dashboards, _ := filepath.Glob(filepath.Join(chart, "dashboards", "*.json"))
	if len(dashboards) == 0 {
		t.Fatal("no dashboards found")
	}
	files := append(dashboards, filepath.Join(chart, "templates", "prometheusrule.yaml"))
	used := regexp.MustCompile(`qlik_token_broker_[a-z0-9_]+`)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".json") {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatalf("%s does not parse: %v", f, err)
			}
		}
		seen := used.FindAllString(string(raw), -1)
		if len(seen) == 0 {
			t.Errorf("%s queries no broker metric", f)
		}
		for _, n := range seen {
			if !names[n] {
				t.Errorf("%s queries %s, which the broker does not export", filepath.Base(f), n)
			}
		}
	}
}
