package metrics_test

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/metrics"
)

func TestLint(t *testing.T) {
	reg := metrics.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{Version: "test", Revision: "abc"})
	// Touch every vector so the linter sees a sample of each.
	m.HTTPRequests.WithLabelValues("/v1/token", "GET", "200").Inc()
	m.HTTPDuration.WithLabelValues("/v1/token").Observe(0.001)
	m.CacheLookups.WithLabelValues(metrics.TierL1, metrics.ResultHit).Inc()
	m.UpstreamRequests.WithLabelValues("default", "token", metrics.OutcomeSuccess).Inc()
	m.UpstreamDuration.WithLabelValues("default", "token").Observe(0.05)
	m.SessionRejections.WithLabelValues("expired").Inc()
	m.Refreshes.WithLabelValues(metrics.RefreshRefreshed).Inc()
	m.Leases.WithLabelValues(metrics.LeaseAcquired).Inc()
	m.UnsealFailures.WithLabelValues("tampered").Inc()
	m.RedisErrors.WithLabelValues("get").Inc()
	m.Rejections.WithLabelValues(metrics.RejectCooldown).Inc()
	m.UpstreamRetries.WithLabelValues("default").Inc()
	m.UpstreamCooldownUntil.WithLabelValues("default").Set(1)
	m.UpstreamBreakerState.WithLabelValues("default").Set(metrics.BreakerOpen)
	m.UpstreamQueueWait.WithLabelValues("default").Observe(0.01)
	m.UpstreamInvalidCredentials.WithLabelValues("default").Inc()
	m.ProxyRequests.WithLabelValues("default", "read", "2xx").Inc()
	m.ProxyDuration.WithLabelValues("default").Observe(0.01)

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestHandlerServesBuildInfoAndRuntime(t *testing.T) {
	reg := metrics.NewRegistry()
	metrics.New(reg, metrics.BuildInfo{Version: "1.2.3", Revision: "deadbeef"})
	rec := httptest.NewRecorder()
	metrics.Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`qlik_token_broker_build_info{revision="deadbeef",version="1.2.3"} 1`,
		"go_goroutines",
		"process_cpu_seconds_total",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics output lacks %q", want)
		}
	}
}

func TestNewTwiceOnOneRegistryPanics(t *testing.T) {
	reg := metrics.NewRegistry()
	metrics.New(reg, metrics.BuildInfo{})
	defer func() {
		if recover() == nil {
			t.Fatal("second registration did not panic")
		}
	}()
	metrics.New(reg, metrics.BuildInfo{})
}
