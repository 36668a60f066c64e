package helm_test

// The alerting rules are checked with Prometheus's own promtool: every
// expression must parse and type-check (`promtool check rules`), and each
// alert's expression must select something on the series of a failure and
// nothing on healthy ones (`promtool test rules`). promtool comes from
// $QTB_PROMTOOL or the PATH; without it the test skips. CI uses Debian's
// (`apt-get install prometheus`, promtool 2.42 on bookworm).

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func promtoolBin(t *testing.T) string {
	t.Helper()
	return toolBin(t, "QTB_PROMTOOL", "promtool", "apt-get install prometheus")
}

// alertCase is one alert's expression evaluated on input series, which
// use NS for the release namespace. fires says whether the expression
// must select anything at evalTime.
type alertCase struct {
	name     string
	alert    string
	series   map[string]string // series -> promtool values notation, one sample a minute
	evalTime string
	fires    bool
}

var alertCases = []alertCase{
	{"redis degraded", "QlikTokenBrokerRedisDegraded",
		map[string]string{`qlik_token_broker_redis_degraded{namespace="NS",instance="a"}`: "0 1x10"}, "5m", true},
	{"redis healthy", "QlikTokenBrokerRedisDegraded",
		map[string]string{`qlik_token_broker_redis_degraded{namespace="NS",instance="a"}`: "0x10"}, "5m", false},
	{"redis degraded in another namespace", "QlikTokenBrokerRedisDegraded",
		map[string]string{`qlik_token_broker_redis_degraded{namespace="other",instance="a"}`: "1x10"}, "5m", false},

	{"half the token calls fail", "QlikTokenBrokerUpstreamFailureRatioHigh", map[string]string{
		`qlik_token_broker_upstream_requests_total{namespace="NS",tenant="acme",endpoint="token",outcome="success"}`:      "0+10x30",
		`qlik_token_broker_upstream_requests_total{namespace="NS",tenant="acme",endpoint="token",outcome="server_error"}`: "0+10x30",
	}, "20m", true},
	{"1 in 100 token calls fails", "QlikTokenBrokerUpstreamFailureRatioHigh", map[string]string{
		`qlik_token_broker_upstream_requests_total{namespace="NS",tenant="acme",endpoint="token",outcome="success"}`:      "0+99x30",
		`qlik_token_broker_upstream_requests_total{namespace="NS",tenant="acme",endpoint="token",outcome="server_error"}`: "0+1x30",
	}, "20m", false},

	{"credentials refused, counter grows", "QlikTokenBrokerInvalidClientCredentials", map[string]string{
		`qlik_token_broker_upstream_invalid_credentials_total{namespace="NS",tenant="acme"}`: "0x10 1 2 3",
	}, "13m", true},
	// A counter first scraped at 1 (the refusal came before the first
	// scrape) has no increase to show; the second branch catches it.
	{"credentials refused before the first scrape", "QlikTokenBrokerInvalidClientCredentials", map[string]string{
		`qlik_token_broker_upstream_invalid_credentials_total{namespace="NS",tenant="acme"}`: "_x10 1 1 1",
	}, "12m", true},
	{"credentials refused long ago", "QlikTokenBrokerInvalidClientCredentials", map[string]string{
		`qlik_token_broker_upstream_invalid_credentials_total{namespace="NS",tenant="acme"}`: "1x30",
	}, "25m", false},

	{"breaker open and refusing", "QlikTokenBrokerUpstreamBreakerOpen", map[string]string{
		`qlik_token_broker_upstream_breaker_state{namespace="NS",tenant="acme",instance="a"}`:        "2x10",
		`qlik_token_broker_token_rejections_total{namespace="NS",cause="breaker_open",instance="a"}`: "0+5x10",
	}, "8m", true},
	{"breaker closed", "QlikTokenBrokerUpstreamBreakerOpen", map[string]string{
		`qlik_token_broker_upstream_breaker_state{namespace="NS",tenant="acme",instance="a"}`:        "0x10",
		`qlik_token_broker_token_rejections_total{namespace="NS",cause="breaker_open",instance="a"}`: "0x10",
	}, "8m", false},

	// The cooldown gauge holds the Unix time the cooldown ends; promtool's
	// clock starts at 0, so a value 300 s ahead of the sample's time is a
	// cooldown in force.
	{"in cooldown for 30 minutes", "QlikTokenBrokerUpstreamCooldownRepeated", map[string]string{
		`qlik_token_broker_upstream_cooldown_until_timestamp_seconds{namespace="NS",tenant="acme",instance="a"}`: "300+60x40",
	}, "35m", true},
	{"no cooldown", "QlikTokenBrokerUpstreamCooldownRepeated", map[string]string{
		`qlik_token_broker_upstream_cooldown_until_timestamp_seconds{namespace="NS",tenant="acme",instance="a"}`: "0x40",
	}, "35m", false},

	{"most sessions rejected", "QlikTokenBrokerSessionRejectionsHigh", map[string]string{
		`qlik_token_broker_session_rejections_total{namespace="NS",reason="bad_signature"}`:               "0+50x30",
		`qlik_token_broker_http_requests_total{namespace="NS",route="/v1/token",method="GET",code="200"}`: "0+10x30",
		`qlik_token_broker_http_requests_total{namespace="NS",route="/v1/token",method="GET",code="401"}`: "0+50x30",
	}, "20m", true},
	{"only expired sessions rejected", "QlikTokenBrokerSessionRejectionsHigh", map[string]string{
		`qlik_token_broker_session_rejections_total{namespace="NS",reason="expired"}`:                     "0+50x30",
		`qlik_token_broker_http_requests_total{namespace="NS",route="/v1/token",method="GET",code="200"}`: "0+10x30",
		`qlik_token_broker_http_requests_total{namespace="NS",route="/v1/token",method="GET",code="401"}`: "0+50x30",
	}, "20m", false},

	{"tampered values", "QlikTokenBrokerCacheUnsealFailures", map[string]string{
		`qlik_token_broker_cache_unseal_failures_total{namespace="NS",reason="tampered",instance="a"}`: "0x5 1 1 1",
	}, "7m", true},
	{"no unseal failures", "QlikTokenBrokerCacheUnsealFailures", map[string]string{
		`qlik_token_broker_cache_unseal_failures_total{namespace="NS",reason="tampered",instance="a"}`: "0x20",
	}, "15m", false},
}

func TestAlertRules(t *testing.T) {
	promtool := promtoolBin(t)
	m := render(t, append(append([]string{}, minimal...),
		"--set", "metrics.prometheusRule.enabled=true", "--api-versions", monitoring)...)
	if len(m.prometheusRules) != 1 {
		t.Fatalf("%d PrometheusRules rendered, want 1", len(m.prometheusRules))
	}
	groups := dig(m.prometheusRules[0], "spec", "groups").([]any)
	exprs := map[string]string{}
	for _, g := range groups {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			r := r.(map[string]any)
			if a, ok := r["alert"].(string); ok {
				exprs[a] = r["expr"].(string)
			}
		}
	}

	dir := t.TempDir()
	rules, err := json.Marshal(map[string]any{"groups": groups}) // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), rules, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", filepath.Join(dir, "rules.yaml")).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}

	// Each case evaluates count(<alert expr>): one sample when the alert's
	// expression selects anything, none when it does not.
	covered := map[string]bool{}
	var tests []any
	for _, c := range alertCases {
		expr, ok := exprs[c.alert]
		if !ok {
			t.Fatalf("case %q: the chart renders no alert %s", c.name, c.alert)
		}
		covered[c.alert] = true
		var series []any
		for s, v := range c.series {
			series = append(series, map[string]any{"series": strings.ReplaceAll(s, `"NS"`, fmt.Sprintf("%q", namespace)), "values": v})
		}
		samples := []any{}
		if c.fires {
			samples = append(samples, map[string]any{"labels": "{}", "value": 1})
		}
		tests = append(tests, map[string]any{
			"name":         c.name,
			"interval":     "1m",
			"input_series": series,
			"promql_expr_test": []any{map[string]any{
				"expr": "count(" + expr + ")", "eval_time": c.evalTime, "exp_samples": samples,
			}},
		})
	}
	for alert := range exprs {
		if !covered[alert] {
			t.Errorf("alert %s has no case in alertCases", alert)
		}
	}
	spec, err := json.Marshal(map[string]any{"rule_files": []string{"rules.yaml"}, "tests": tests})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "alerts_test.yaml")
	if err := os.WriteFile(path, spec, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "test", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}
