package metrics_test

import (
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// recorder is a Registerer that keeps what New registers.
type recorder struct{ cs []prometheus.Collector }

func (r *recorder) Register(c prometheus.Collector) error   { r.cs = append(r.cs, c); return nil }
func (r *recorder) MustRegister(cs ...prometheus.Collector) { r.cs = append(r.cs, cs...) }
func (r *recorder) Unregister(prometheus.Collector) bool    { return false }

var (
	descName   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	descConst  = regexp.MustCompile(`constLabels: \{([^}]*)\}`)
)

// registered returns every metric New registers (without the namespace
// prefix) and its label names, read from the collectors' descriptions.
func registered(t *testing.T) map[string][]string {
	t.Helper()
	var r recorder
	metrics.New(&r, metrics.BuildInfo{Version: "v", Revision: "r"})
	out := map[string][]string{}
	for _, c := range r.cs {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			s := d.String()
			m := descName.FindStringSubmatch(s)
			if m == nil {
				t.Fatalf("cannot read the name of %s", s)
			}
			var labels []string
			for _, re := range []*regexp.Regexp{descLabels, descConst} {
				if l := re.FindStringSubmatch(s); l != nil && l[1] != "" {
					for p := range strings.SplitSeq(l[1], ",") {
						labels = append(labels, strings.TrimSpace(strings.SplitN(p, "=", 2)[0]))
					}
				}
			}
			out[strings.TrimPrefix(m[1], metrics.Namespace+"_")] = labels
		}
	}
	return out
}

// readmeMetrics parses the README's metrics table: each metric named in a
// row's first column, with the row's second column.
func readmeMetrics(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "\n## Metrics\n")
	if !ok {
		t.Fatal("README has no ## Metrics section")
	}
	rest, _, _ = strings.Cut(rest, "\n## ")
	rows := map[string]string{}
	code := regexp.MustCompile("`([a-z_]+)`")
	for line := range strings.SplitSeq(rest, "\n") {
		cols := strings.Split(line, "|")
		if len(cols) < 4 || strings.HasPrefix(strings.TrimSpace(cols[1]), "---") || strings.TrimSpace(cols[1]) == "metric" {
			continue
		}
		for _, m := range code.FindAllStringSubmatch(cols[1], -1) {
			rows[m[1]] = cols[2]
		}
	}
	return rows
}

// TestReadmeMetricsTable: the README's metrics table lists exactly the
// metrics New registers, names each one's labels, and, where it lists a
// label's values, lists exactly the values the broker gives it
// (metrics.LabelValues). A failure names the row to fix.
func TestReadmeMetricsTable(t *testing.T) {
	code := registered(t)
	doc := readmeMetrics(t)
	if len(code) < 15 {
		t.Fatalf("read only %d metrics from New: %v", len(code), code)
	}
	for name, labels := range code {
		row, ok := doc[name]
		if !ok {
			t.Errorf("README ## Metrics lacks a row for %s (labels %v)", name, labels)
			continue
		}
		for _, l := range labels {
			if !strings.Contains(row, "`"+l+"`") {
				t.Errorf("README ## Metrics, row of %s: label `%s` is not named", name, l)
			}
		}
	}
	for name := range doc {
		if _, ok := code[name]; !ok {
			t.Errorf("README ## Metrics lists %s, which metrics.New does not register", name)
		}
	}
	values := regexp.MustCompile("`([a-z_]+)` \\(([^)]*)\\)")
	tick := regexp.MustCompile("`([a-z_0-9]+)`")
	closed := metrics.LabelValues()
	// The session package's reasons are the values of session_rejections_total.
	var reasons []string
	for _, r := range session.Reasons() {
		reasons = append(reasons, string(r))
	}
	closed["session_rejections_total"] = map[string][]string{"reason": reasons}
	for name, labels := range closed {
		row := doc[name]
		for label, want := range labels {
			var got []string
			open := false
			for _, m := range values.FindAllStringSubmatch(row, -1) {
				if m[1] != label {
					continue
				}
				for _, v := range tick.FindAllStringSubmatch(m[2], -1) {
					got = append(got, v[1])
				}
				open = strings.Contains(m[2], "...")
			}
			sort.Strings(got)
			w := slices.Sorted(slices.Values(want))
			for _, v := range w {
				if !slices.Contains(got, v) {
					t.Errorf("README ## Metrics, row of %s: label `%s` lacks the value `%s` (documented: %v)", name, label, v, got)
				}
			}
			if !open {
				for _, v := range got {
					if !slices.Contains(w, v) {
						t.Errorf("README ## Metrics, row of %s: label `%s` documents `%s`, which the broker never gives it", name, label, v)
					}
				}
			}
		}
	}
}
