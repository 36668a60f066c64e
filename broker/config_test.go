package broker_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// TestDefaultUpstreamConfig pins the protection a broker runs with unless
// told otherwise.
func TestDefaultUpstreamConfig(t *testing.T) {
	want := broker.UpstreamConfig{
		Concurrency: 8, Burst: 8, SharedBurst: 5, Retries: 2,
		RetryBase: 100 * time.Millisecond, RetryMax: 2 * time.Second,
		BreakerFailures: 5, BreakerOpen: 30 * time.Second,
		CooldownDefault: 30 * time.Second, CooldownMax: 10 * time.Minute,
	}
	if got := broker.DefaultUpstreamConfig(); got != want {
		t.Fatalf("DefaultUpstreamConfig() = %+v\nwant %+v", got, want)
	}
}

// TestUpstreamConfigChecked: zero means zero, so a config that cannot work
// is refused by New, every problem named, rather than quietly defaulted.
func TestUpstreamConfigChecked(t *testing.T) {
	newBroker := func(up *broker.UpstreamConfig, limiter broker.SharedLimiter) error {
		_, err := broker.New(broker.Config{
			Tenants:  []broker.Tenant{{ID: "acme", Issuer: &qlik.Client{}, Credentials: qlik.Credentials{ClientID: "c"}}},
			Metrics:  metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{}),
			Upstream: up,
			Limiter:  limiter,
		})
		return err
	}
	if err := newBroker(nil, nil); err != nil {
		t.Fatalf("nil Upstream (the defaults): %v", err)
	}
	noRetries := broker.DefaultUpstreamConfig()
	noRetries.Retries, noRetries.RetryBase, noRetries.RetryMax = 0, 0, 0
	if err := newBroker(&noRetries, nil); err != nil {
		t.Fatalf("no retries: %v", err)
	}
	err := newBroker(&broker.UpstreamConfig{RatePerMinute: 60, SharedRatePerMinute: -1, Retries: 1}, nil)
	for _, want := range []string{"Concurrency", "Burst", "SharedRatePerMinute", "RetryBase", "BreakerFailures", "BreakerOpen", "CooldownDefault"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("a zero UpstreamConfig: error does not name %s: %v", want, err)
		}
	}
	if err := newBroker(nil, (*cache.Redis)(nil)); err == nil || !strings.Contains(err.Error(), "Limiter needs a shared upstream rate") {
		t.Errorf("a Limiter without a shared rate: %v", err)
	}
}

// TestValidTenantID: tenant ids go into Redis key names and metric labels;
// config, provision and the broker accept the same ones.
func TestValidTenantID(t *testing.T) {
	for id, ok := range map[string]bool{
		"acme": true, "acme-eu.1_b": true, "0": true, strings.Repeat("a", 63): true,
		"": false, "Acme": false, "-acme": false, ".acme": false, "acme corp": false,
		"acme:1": false, "acme{x}": false, strings.Repeat("a", 64): false,
	} {
		err := broker.ValidTenantID(id)
		if (err == nil) != ok || err != nil && !errors.Is(err, broker.ErrInvalidTenantID) {
			t.Errorf("ValidTenantID(%q) = %v, want ok %v", id, err, ok)
		}
	}
}
