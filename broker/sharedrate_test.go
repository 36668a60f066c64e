package broker_test

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// sharedRateDeployment is replicas on one Redis, each with the shared
// upstream rate limit and tune's other settings.
func sharedRateDeployment(t *testing.T, replicas int, perMinute float64, burst int, tune func(*broker.Config), tenantOpts ...qliktest.Option) *deployment {
	t.Helper()
	d := newDeployment(t, 0, newKeyring(t, "k1"), tenantOpts...)
	d.tune = func(c *broker.Config) {
		c.Upstream.SharedRatePerMinute = perMinute
		c.Upstream.SharedBurst = burst
		c.Limiter = c.Shared.(*cache.Redis)
		if tune != nil {
			tune(c)
		}
	}
	for range replicas {
		d.add(d.keyring)
	}
	return d
}

// coldRequests sends one /v1/token request for each of n new users at once,
// spread over the replicas, and returns the answers by status.
func coldRequests(d *deployment, n int) (ok int, busy []string) {
	d.t.Helper()
	sessions := make([]string, n)
	for i := range n {
		sessions[i] = d.replicas[0].session(d.replicas[0].addUser(fmt.Sprintf("cold%03d", i)).ID)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, sess := range sessions {
		wg.Go(func() {
			r := d.replicas[i%len(d.replicas)]
			resp, body := r.do("GET", "/v1/token", sess, nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case resp.StatusCode == 200:
				ok++
			case resp.StatusCode == 503 && decodeErrorBody(d.t, body).Error == "upstream_busy":
				secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
				if err != nil || secs <= 0 {
					d.t.Errorf("503 without a usable Retry-After: %q", resp.Header.Get("Retry-After"))
				}
				busy = append(busy, resp.Header.Get("Retry-After"))
			default:
				d.t.Errorf("status %d: %s", resp.StatusCode, body)
			}
		})
	}
	wg.Wait()
	return ok, busy
}

// TestSharedUpstreamRate: three replicas on one Redis with a shared rate of
// 20 calls a minute and a burst of 5, 60 cold users at once spread over
// them. The tenant (which would answer 429 past 10 calls: its clock stands
// still, so its window never empties) sees at most the burst plus the rate
// over the time taken; the callers the limit refuses get 503 upstream_busy
// with Retry-After; and callers that waited for room got through.
func TestSharedUpstreamRate(t *testing.T) {
	const perMinute, burst, users = 20, 5, 60
	d := sharedRateDeployment(t, 3, perMinute, burst, func(c *broker.Config) {
		// Enough for a caller refused at the start to wait one interval
		// (3s) for room and be let through; not for two.
		c.FetchTimeout = 5 * time.Second
	}, qliktest.WithRateLimit(10))
	start := time.Now()
	ok, busy := coldRequests(d, users)
	elapsed := time.Since(start)

	calls := d.tenant.Calls(qliktest.EndpointToken)
	allowance := burst + int(math.Floor(perMinute*elapsed.Minutes()))
	t.Logf("%d served, %d refused with 503 (Retry-After %v...), %d token calls in %v (allowance %d)",
		ok, len(busy), busy[:min(3, len(busy))], calls, elapsed.Round(time.Millisecond), allowance)
	var limited float64
	for _, r := range d.replicas {
		limited += testutil.ToFloat64(r.metrics.UpstreamRequests.WithLabelValues("acme", "token", metrics.OutcomeRateLimited))
	}
	if limited != 0 {
		t.Fatalf("the tenant answered 429 %v times", limited)
	}
	if calls > allowance {
		t.Fatalf("%d token calls in %v, want at most %d (burst %d + %d a minute)", calls, elapsed, allowance, burst, perMinute)
	}
	if ok != calls || ok+len(busy) != users {
		t.Fatalf("served %d, refused %d of %d users, with %d token calls", ok, len(busy), users, calls)
	}
	if ok <= burst {
		t.Fatalf("served %d, want more than the burst of %d: a refused caller that waits for room gets through", ok, burst)
	}
	var refused float64
	for _, r := range d.replicas {
		refused += testutil.ToFloat64(r.metrics.Rejections.WithLabelValues(metrics.RejectSharedRate))
	}
	if int(refused) != len(busy) {
		t.Fatalf("%v refusals counted as %s, want %d", refused, metrics.RejectSharedRate, len(busy))
	}
}

// TestSharedUpstreamRateFailsOpen: with Redis down the shared limit is not
// asked (each failure counted as a Redis error) and tokens are still
// issued, under each replica's own limits: a burst of 3, then nothing for
// a minute.
func TestSharedUpstreamRateFailsOpen(t *testing.T) {
	const replicas, localBurst, users = 2, 3, 20
	d := sharedRateDeployment(t, replicas, 1, 1, func(c *broker.Config) {
		c.Upstream.RatePerMinute = 1
		c.Upstream.Burst = localBurst
		c.FetchTimeout = time.Second
	})
	d.redis.Stop()
	ok, busy := coldRequests(d, users)
	t.Logf("%d served, %d refused with 503", ok, len(busy))
	if want := replicas * localBurst; ok != want || d.tenant.Calls(qliktest.EndpointToken) != want {
		t.Fatalf("served %d with %d token calls, want %d (each replica's local burst; the shared limit would allow 1)",
			ok, d.tenant.Calls(qliktest.EndpointToken), want)
	}
	for i, r := range d.replicas {
		if n := testutil.ToFloat64(r.metrics.RedisErrors.WithLabelValues("rate")); n == 0 {
			t.Errorf("replica %d counted no failed shared-rate Redis calls", i)
		}
	}
}

// TestSharedUpstreamRateCoversRefreshes: a background refresh is a token
// call like any other: with the shared limit used up it does not reach the
// tenant, and the cached token is still served.
func TestSharedUpstreamRateCoversRefreshes(t *testing.T) {
	d := sharedRateDeployment(t, 2, 1, 1, func(c *broker.Config) { c.FetchTimeout = time.Second })
	ada := d.replicas[0].addUser("Ada")
	sess := d.replicas[0].session(ada.ID)
	code, old := getToken(d.replicas[0].srv.Client(), d.replicas[0].srv.URL, sess)
	if code != 200 {
		t.Fatalf("first token: %d %s", code, old)
	}
	// Past every refresh point (see TestRefreshAheadOneRefreshPerKey).
	d.clock.Advance(5*time.Hour + 30*time.Minute)
	sess = d.replicas[0].session(ada.ID)
	for _, r := range d.replicas {
		if code, tok := getToken(r.srv.Client(), r.srv.URL, sess); code != 200 || tok != old {
			t.Fatalf("in the refresh window: %d, same token %v", code, tok == old)
		}
	}
	d.waitBackground()
	if n := d.tenant.Calls(qliktest.EndpointToken); n != 1 {
		t.Fatalf("token calls = %d, want 1: the refresh must wait for the shared limit", n)
	}
	var failed float64
	for _, r := range d.replicas {
		failed += testutil.ToFloat64(r.metrics.Refreshes.WithLabelValues(metrics.RefreshError))
	}
	if failed == 0 {
		t.Fatal("no refresh was refused by the shared limit")
	}
}

// TestSharedUpstreamRateNeedsRedis: a shared rate with nowhere to count it
// is a configuration error, not a limit silently off.
func TestSharedUpstreamRateNeedsRedis(t *testing.T) {
	upstream := broker.DefaultUpstreamConfig()
	upstream.SharedRatePerMinute = 90
	_, err := broker.New(broker.Config{
		Metrics:  metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{Version: "test"}),
		Upstream: &upstream,
	})
	if err == nil || !strings.Contains(err.Error(), "shared upstream rate needs a Limiter") {
		t.Fatalf("New with a shared rate and no Redis = %v", err)
	}
}
