package broker_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// TestCooldownAfter429: a 429 stops token calls to the tenant from every
// replica for its Retry-After (read as seconds or an HTTP-date; missing,
// garbage or huge values clamped); cached users are served, cold users get
// 503 with Retry-After at once.
func TestCooldownAfter429(t *testing.T) {
	for _, tc := range []struct {
		name, header string
		want         string // Retry-After the callers see
	}{
		{"seconds", "13", "13"},
		{"http date", "", "13"}, // filled in from the clock below
		{"garbage", "soon-ish", "30"},
		{"missing", "", "30"},
		{"huge", "999999", "600"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDeployment(t, 2, nil)
			a, b := d.replicas[0], d.replicas[1]
			cached := a.addUser("Cached")
			_, cachedTok := getToken(a.srv.Client(), a.srv.URL, a.session(cached.ID))
			cold1, cold2 := a.addUser("Cold1"), a.addUser("Cold2")
			header := tc.header
			if tc.name == "http date" {
				header = d.clock.Now().Add(13 * time.Second).UTC().Format(http.TimeFormat)
			}
			d.tenant.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 429, RetryAfter: header})
			callsBefore := d.tenant.Calls(qliktest.EndpointToken)

			resp, body := a.do("GET", "/v1/token", a.session(cold1.ID), nil)
			if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != tc.want || decodeErrorBody(t, body).Error != "upstream_rate_limited" {
				t.Fatalf("the 429 itself: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
			}
			// The other replica learns of the cooldown through Redis.
			for i, r := range []*env{b, a, b} {
				start := time.Now()
				resp, _ := r.do("GET", "/v1/token", r.session(cold2.ID), nil)
				elapsed := time.Since(start)
				if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != tc.want {
					t.Fatalf("cold request %d during the cooldown: %d Retry-After %q", i, resp.StatusCode, resp.Header.Get("Retry-After"))
				}
				t.Logf("cold request %d refused in %v", i, elapsed.Round(time.Microsecond))
				if elapsed > 500*time.Millisecond {
					t.Errorf("refusing a cold request during the cooldown took %v", elapsed)
				}
			}
			for _, r := range []*env{a, b} {
				if code, tok := getToken(r.srv.Client(), r.srv.URL, r.session(cached.ID)); code != 200 || tok != cachedTok {
					t.Fatalf("a cached user was not served during the cooldown: %d", code)
				}
			}
			if n := d.tenant.Calls(qliktest.EndpointToken); n != callsBefore+1 {
				t.Fatalf("token calls during the cooldown: %d, want only the one answered 429", n-callsBefore)
			}

			// After the cooldown the tenant is asked again.
			d.clock.Advance(11 * time.Minute)
			if code, tok := getToken(b.srv.Client(), b.srv.URL, b.session(cold2.ID)); code != 200 || b.tokenUser(tok) != cold2.ID {
				t.Fatalf("after the cooldown: %d", code)
			}
		})
	}
}

// TestRetriesWithinDeadline: 503, 503, 200 and the caller gets its token.
func TestRetriesWithinDeadline(t *testing.T) {
	e := newEnv(t, envOptions{})
	ada := e.addUser("Ada")
	e.tenant.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 503}, qliktest.Fault{Status: 503})
	resp, body := e.do("GET", "/v1/token", e.session(ada.ID), nil)
	if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != ada.ID {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if n := e.tenant.Calls(qliktest.EndpointToken); n != 3 {
		t.Fatalf("token calls = %d, want 3", n)
	}
	if got := testutil.ToFloat64(e.metrics.UpstreamRetries.WithLabelValues("acme")); got != 2 {
		t.Fatalf("retries counted: %v", got)
	}
}

// TestBreakerOpensAndCloses: with the tenant down, the breaker opens after
// consecutive failures; cached users never notice; cold users get a fast 503;
// once the tenant is back a probe closes it.
func TestBreakerOpensAndCloses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault qliktest.Fault
	}{
		{"refused", qliktest.Fault{CloseConn: true}},
		{"hanging", qliktest.Fault{Hang: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{tune: func(c *broker.Config) {
				c.Upstream.BreakerOpen = 3 * time.Second // stays open through the loop
				c.Upstream.RetryBase = time.Millisecond
				c.FetchTimeout = 200 * time.Millisecond // bounds a hanging call
			}})
			cached := e.addUser("Cached")
			_, cachedBody := e.do("GET", "/v1/token", e.session(cached.ID), nil)
			cachedTok := decodeTokenBody(t, cachedBody).AccessToken
			// Five consecutive failures open the breaker; the tenant is
			// healthy again once they are used up.
			for range 5 {
				e.tenant.InjectFault(qliktest.EndpointToken, tc.fault)
			}
			var fast time.Duration
			for i := range 6 {
				user := e.addUser(fmt.Sprintf("cold%d", i))
				start := time.Now()
				resp, body := e.do("GET", "/v1/token", e.session(user.ID), nil)
				elapsed := time.Since(start)
				if resp.StatusCode != 502 && resp.StatusCode != 503 && resp.StatusCode != 504 {
					t.Fatalf("cold user %d while the tenant is down: %d %s", i, resp.StatusCode, body)
				}
				if resp.StatusCode == 503 {
					if resp.Header.Get("Retry-After") == "" || decodeErrorBody(t, body).Error != "upstream_unavailable" {
						t.Fatalf("breaker 503 without Retry-After: %v %s", resp.Header, body)
					}
					fast = elapsed
				}
				if resp, body := e.do("GET", "/v1/token", e.session(cached.ID), nil); resp.StatusCode != 200 || decodeTokenBody(t, body).AccessToken != cachedTok {
					t.Fatalf("a cached user noticed the outage: %d", resp.StatusCode)
				}
			}
			if got := testutil.ToFloat64(e.metrics.UpstreamBreakerState.WithLabelValues("acme")); got != metrics.BreakerOpen {
				t.Fatalf("breaker state %v, want open", got)
			}
			t.Logf("cold request refused by the open breaker in %v", fast.Round(time.Microsecond))
			if testutil.ToFloat64(e.metrics.Rejections.WithLabelValues(metrics.RejectBreakerOpen)) == 0 {
				t.Fatal("no request was refused by the open breaker")
			}

			// The tenant is back once its faults are used up (a slow
			// machine may leave one for the first probe): after the open
			// interval a probe closes the breaker.
			user := e.addUser("after")
			for deadline := time.Now().Add(30 * time.Second); ; {
				resp, _ := e.do("GET", "/v1/token", e.session(user.ID), nil)
				if resp.StatusCode == 200 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the breaker never closed")
				}
				time.Sleep(50 * time.Millisecond) // the open interval is real time
			}
			if got := testutil.ToFloat64(e.metrics.UpstreamBreakerState.WithLabelValues("acme")); got != metrics.BreakerClosed {
				t.Fatalf("breaker state %v after recovery", got)
			}
		})
	}
}

// TestSecretRotation: the tenant rotates the client secret and answers 401;
// the broker re-reads its secret file and carries on without a restart. A
// secret nobody fixed is an error-level log, a metric and a 502.
func TestSecretRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(path, []byte("secret-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{tune: func(c *broker.Config) {
		c.Tenants[0].ReloadSecret = func() (string, error) {
			raw, err := os.ReadFile(path)
			return strings.TrimSpace(string(raw)), err
		}
	}})
	ada, bob := e.addUser("Ada"), e.addUser("Bob")

	// Rotated at the tenant but not yet on disk: refused, flagged.
	e.tenant.SetClientSecret("client-1", "secret-2")
	resp, body := e.do("GET", "/v1/token", e.session(ada.ID), nil)
	if resp.StatusCode != 502 || decodeErrorBody(t, body).Error != "upstream_misconfigured" {
		t.Fatalf("stale secret: %d %s", resp.StatusCode, body)
	}
	if got := testutil.ToFloat64(e.metrics.UpstreamInvalidCredentials.WithLabelValues("acme")); got != 1 {
		t.Fatalf("invalid credentials counted %v times", got)
	}

	// The secret file is rewritten (Kubernetes updates the mount).
	if err := os.WriteFile(path, []byte("secret-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, body = e.do("GET", "/v1/token", e.session(bob.ID), nil)
	if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != bob.ID {
		t.Fatalf("after rewriting the secret file: %d %s", resp.StatusCode, body)
	}
	resp, _ = e.do("GET", "/v1/token", e.session(ada.ID), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("the new secret was not kept: %d", resp.StatusCode)
	}
}

// TestUnknownUser: a user the tenant does not know is a 403 with a clear
// message, and the tenant is asked once.
func TestUnknownUser(t *testing.T) {
	e := newEnv(t, envOptions{})
	resp, body := e.do("GET", "/v1/token", e.session("6422bad8022070c06d2417bc"), nil)
	eb := decodeErrorBody(t, body)
	if resp.StatusCode != 403 || eb.Error != "unknown_user" || !strings.Contains(eb.Message, "no active user") {
		t.Fatalf("unknown user: %d %s", resp.StatusCode, body)
	}
	// One impersonation and one check of the broker's own credentials
	// (the status alone does not say who was refused); no retry.
	if n := e.tenant.Calls(qliktest.EndpointToken); n != 2 {
		t.Fatalf("token calls = %d, want 2 (no retry)", n)
	}
	// The check is remembered: another unknown user costs one call.
	if resp, _ := e.do("GET", "/v1/token", e.session("6422bad8022070c06d2417bd"), nil); resp.StatusCode != 403 {
		t.Fatalf("second unknown user: %d", resp.StatusCode)
	}
	if n := e.tenant.Calls(qliktest.EndpointToken); n != 3 {
		t.Fatalf("token calls = %d, want 3", n)
	}
	// A disabled user is refused by the tenant with 403.
	ada := e.addUser("Ada")
	e.tenant.SetUserStatus(ada.ID, qliktest.StatusDisabled)
	if resp, body := e.do("GET", "/v1/token", e.session(ada.ID), nil); resp.StatusCode != 403 || decodeErrorBody(t, body).Error != "user_forbidden" {
		t.Fatalf("disabled user: %d %s", resp.StatusCode, body)
	}
}

// countingIssuer records the most token calls in flight at once.
type countingIssuer struct {
	broker.Issuer
	inFlight, peak atomic.Int64
}

func (c *countingIssuer) ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error) {
	n := c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return c.Issuer.ImpersonationToken(ctx, creds, user, scope)
}

// TestColdStartQueues: 2,000 distinct cold users at once against a tenant
// with 50ms latency and a 100 calls/minute limit. With a rate set, the
// tenant never answers 429, concurrency stays within the bound, and users
// beyond the deadline get 503 instead of hanging.
func TestColdStartQueues(t *testing.T) {
	const users, concurrency = 2000, 4
	var counter *countingIssuer
	e := newEnv(t, envOptions{
		tenantOpt: []qliktest.Option{qliktest.WithLatency(50 * time.Millisecond), qliktest.WithRateLimit(100)},
		issuer:    func(i broker.Issuer) broker.Issuer { counter = &countingIssuer{Issuer: i}; return counter },
		tune: func(c *broker.Config) {
			c.Upstream.Concurrency = concurrency
			c.Upstream.RatePerMinute = 90 // under the tenant's 100/min
			c.Upstream.Burst = 10
			c.FetchTimeout = 2 * time.Second
		},
	})
	ids := make([]string, users)
	for i := range ids {
		ids[i] = e.addUser(fmt.Sprintf("u%04d", i)).ID
	}
	var ok, busy, late atomic.Int64
	var slowest atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, id := range ids {
		wg.Go(func() {
			began := time.Now()
			_, err := e.broker.Token(context.Background(), session.Identity{UserField: "userId", UserValue: id})
			if d := int64(time.Since(began)); d > slowest.Load() {
				slowest.Store(d) // racy max, good enough for a log line
			}
			var ue *broker.UnavailableError
			switch {
			case err == nil:
				ok.Add(1)
			case errors.As(err, &ue) && ue.Cause == broker.CauseQueueTimeout && ue.RetryAfter > 0:
				busy.Add(1)
			case errors.Is(err, context.DeadlineExceeded):
				// Let through with time to spare, but the machine was too
				// slow to finish by the deadline: a 504, still no hang.
				late.Add(1)
			default:
				t.Errorf("unexpected error: %v", err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d served, %d refused with 503, %d timed out at the deadline, in %v (slowest caller %v); peak upstream concurrency %d",
		ok.Load(), busy.Load(), late.Load(), time.Since(start).Round(time.Millisecond), time.Duration(slowest.Load()).Round(time.Millisecond), counter.peak.Load())
	if got := testutil.ToFloat64(e.metrics.UpstreamRequests.WithLabelValues("acme", "token", metrics.OutcomeRateLimited)); got != 0 {
		t.Fatalf("the tenant answered 429 %v times", got)
	}
	if p := counter.peak.Load(); p > concurrency {
		t.Fatalf("peak upstream concurrency %d > %d", p, concurrency)
	}
	if ok.Load() == 0 || busy.Load() < users/2 || ok.Load()+busy.Load()+late.Load() != users {
		t.Fatalf("served %d, refused %d, timed out %d", ok.Load(), busy.Load(), late.Load())
	}
	if n := int64(e.tenant.Calls(qliktest.EndpointToken)); n < ok.Load() || n > ok.Load()+late.Load() {
		t.Fatalf("token calls %d for %d tokens served and %d timed out", n, ok.Load(), late.Load())
	}
}

// TestPerUserRateLimit: one identity hammering /v1/token gets 429s while
// another user is unaffected.
func TestPerUserRateLimit(t *testing.T) {
	e := newEnv(t, envOptions{userRate: 1}) // 1/s, burst 10
	noisy, quiet := e.addUser("Noisy"), e.addUser("Quiet")
	var limited int
	for range 50 {
		resp, body := e.do("GET", "/v1/token", e.session(noisy.ID), nil)
		switch resp.StatusCode {
		case 200:
		case 429:
			limited++
			if resp.Header.Get("Retry-After") == "" || decodeErrorBody(t, body).Error != "rate_limited" {
				t.Fatalf("429 without Retry-After or code: %v %s", resp.Header, body)
			}
		default:
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if limited != 40 {
		t.Fatalf("%d of 50 requests limited, want 40 (burst 10, clock stopped)", limited)
	}
	if resp, _ := e.do("GET", "/v1/token", e.session(quiet.ID), nil); resp.StatusCode != 200 {
		t.Fatalf("another user was limited: %d", resp.StatusCode)
	}
	if n := e.tenant.Calls(qliktest.EndpointToken); n != 2 {
		t.Fatalf("token calls %d, want 2", n)
	}
	// Time refills the bucket.
	e.clock.Advance(5 * time.Second)
	if resp, _ := e.do("GET", "/v1/token", e.session(noisy.ID), nil); resp.StatusCode != 200 {
		t.Fatalf("after waiting: %d", resp.StatusCode)
	}
}
