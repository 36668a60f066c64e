package broker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/internal/clocktest"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// The guard's behaviours, one by one, against a fake Issuer: no HTTP, no
// Redis, the guard's clock injected. The HTTP tests (upstream_test.go,
// sharedrate_test.go) keep one end-to-end case of each.

// fakeIssuer answers token calls with answer (nil: a token), counting them.
type fakeIssuer struct {
	answer                 func(ctx context.Context, call int64) (*qlik.Token, error)
	calls, clientCalls     atomic.Int64
	revokes                atomic.Int64
	inFlight, peakInFlight atomic.Int64
}

var _ Issuer = (*fakeIssuer)(nil)

func (f *fakeIssuer) token(ctx context.Context, n int64) (*qlik.Token, error) {
	in := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for p := f.peakInFlight.Load(); in > p && !f.peakInFlight.CompareAndSwap(p, in); p = f.peakInFlight.Load() {
	}
	if f.answer == nil {
		return &qlik.Token{AccessToken: "t", ExpiresAt: time.Now().Add(6 * time.Hour)}, nil
	}
	return f.answer(ctx, n)
}

func (f *fakeIssuer) ImpersonationToken(ctx context.Context, _ qlik.Credentials, _ qlik.UserLookup, _ string) (*qlik.Token, error) {
	return f.token(ctx, f.calls.Add(1))
}

func (f *fakeIssuer) ClientCredentialsToken(ctx context.Context, _ qlik.Credentials, _ string) (*qlik.Token, error) {
	f.clientCalls.Add(1)
	return f.token(ctx, f.calls.Add(1))
}

func (f *fakeIssuer) Revoke(context.Context, qlik.Credentials, string) error {
	f.revokes.Add(1)
	return nil
}

// fails answers calls first..last (counting from 1) with err.
func fails(err error, first, last int64) func(context.Context, int64) (*qlik.Token, error) {
	return func(_ context.Context, n int64) (*qlik.Token, error) {
		if n >= first && n <= last {
			return nil, err
		}
		return &qlik.Token{AccessToken: "t"}, nil
	}
}

var discardLogger = slog.New(slog.DiscardHandler)

// mapStore is a Store in a map, optionally failing every call.
type mapStore struct {
	mu   sync.Mutex
	m    map[string][]byte
	fail error
}

func (s *mapStore) Get(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return nil, s.fail
	}
	v, ok := s.m[key]
	if !ok {
		return nil, cache.ErrMiss
	}
	return v, nil
}

func (s *mapStore) Set(_ context.Context, key string, value []byte, _ time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	if s.m == nil {
		s.m = map[string][]byte{}
	}
	s.m[key] = value
	return nil
}

func (s *mapStore) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, key)
	return s.fail
}

// fakeLimiter answers Allow from answer, counting the calls.
type fakeLimiter struct {
	answer func(call int) (bool, time.Duration, error)
	mu     sync.Mutex
	calls  int
	keys   []string
}

func (l *fakeLimiter) Allow(_ context.Context, key string, perMinute float64, burst int) (bool, time.Duration, error) {
	l.mu.Lock()
	l.calls++
	n := l.calls
	l.keys = append(l.keys, key)
	l.mu.Unlock()
	return l.answer(n)
}

type guardEnv struct {
	g     *guard
	next  *fakeIssuer
	m     *metrics.Metrics
	clock *clocktest.Clock
}

// newTestGuard is a guard for tenant "acme" around next, with the default
// upstream configuration changed by tune.
func newTestGuard(t *testing.T, next *fakeIssuer, tune func(*guardConfig)) *guardEnv {
	t.Helper()
	clk := clocktest.New(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC))
	m := metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{})
	cfg := guardConfig{
		tenant:   "acme",
		upstream: DefaultUpstreamConfig(),
		deps:     deps{m: m, log: discardLogger, now: clk.Now},
		jitter:   func(time.Duration) time.Duration { return 0 },
	}
	if tune != nil {
		tune(&cfg)
	}
	if err := cfg.upstream.validate(); err != nil {
		t.Fatal(err)
	}
	return &guardEnv{g: newGuard(next, cfg), next: next, m: m, clock: clk}
}

func (e *guardEnv) token(ctx context.Context) (*qlik.Token, error) {
	return e.g.ImpersonationToken(ctx, qlik.Credentials{ClientID: "c"}, qlik.UserLookup{Field: qlik.FieldUserID, Value: "u"}, "user_default")
}

func (e *guardEnv) rejections(c Cause) float64 {
	return testutil.ToFloat64(e.m.Rejections.WithLabelValues(c.String()))
}

// unavailable returns err's UnavailableError, failing the test when it has
// none or another cause.
func unavailable(t *testing.T, err error, want Cause) *UnavailableError {
	t.Helper()
	var ue *UnavailableError
	if !errors.As(err, &ue) || ue.Cause != want {
		t.Fatalf("err = %v, want a refusal for %s", err, want)
	}
	return ue
}

// TestGuardCooldownAfter429: a 429 starts a cooldown of its Retry-After
// (clamped), during which calls are refused without reaching the tenant;
// the replicas share it through the store; it ends on the clock.
func TestGuardCooldownAfter429(t *testing.T) {
	for _, tc := range []struct {
		name             string
		retryAfter, want time.Duration
	}{
		{"as told", 13 * time.Second, 13 * time.Second},
		{"missing", 0, 30 * time.Second},
		{"under a second", 200 * time.Millisecond, time.Second},
		{"over the cap", time.Hour, 10 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &mapStore{}
			e := newTestGuard(t, &fakeIssuer{answer: fails(&qlik.Error{StatusCode: 429, RetryAfter: tc.retryAfter}, 1, 1)},
				func(c *guardConfig) { c.cooldowns = store })
			other := newTestGuard(t, &fakeIssuer{}, func(c *guardConfig) { c.cooldowns = store })
			other.clock = e.clock
			other.g.now = e.clock.Now

			_, err := e.token(t.Context())
			var qe *qlik.Error
			if ue := unavailable(t, err, CauseCooldown); ue.RetryAfter != tc.want || !errors.As(err, &qe) {
				t.Fatalf("the 429 itself: Retry-After %v (want %v), err %v", ue.RetryAfter, tc.want, err)
			}
			e.clock.Advance(tc.want - time.Second)
			for name, g := range map[string]*guardEnv{"this replica": e, "another replica": other} {
				_, err := g.token(t.Context())
				if ue := unavailable(t, err, CauseCooldown); ue.RetryAfter != time.Second {
					t.Fatalf("%s during the cooldown: Retry-After %v, want 1s", name, ue.RetryAfter)
				}
			}
			_, err = e.g.ClientCredentialsToken(t.Context(), qlik.Credentials{}, "")
			unavailable(t, err, CauseCooldown)
			if n, m := e.next.calls.Load(), other.next.calls.Load(); n != 1 || m != 0 {
				t.Fatalf("tenant calls during the cooldown: %d and %d, want only the one answered 429", n, m)
			}
			if got := e.rejections(CauseCooldown); got != 3 {
				t.Fatalf("cooldown refusals counted: %v, want 3", got)
			}
			wantUntil := float64(e.clock.Now().Add(time.Second).UnixMilli()) / 1000
			if got := testutil.ToFloat64(e.m.UpstreamCooldownUntil.WithLabelValues("acme")); got != wantUntil {
				t.Fatalf("cooldown gauge %v, want %v", got, wantUntil)
			}

			e.clock.Advance(time.Second)
			if _, err := e.token(t.Context()); err != nil {
				t.Fatalf("after the cooldown: %v", err)
			}
			if _, err := other.token(t.Context()); err != nil {
				t.Fatalf("another replica after the cooldown: %v", err)
			}
		})
	}
}

// TestGuardCooldownStoreFails: when the shared store fails, the cooldown
// holds in this process and calls go on; each failure is counted.
func TestGuardCooldownStoreFails(t *testing.T) {
	store := &mapStore{fail: errors.New("redis down")}
	e := newTestGuard(t, &fakeIssuer{answer: fails(&qlik.Error{StatusCode: 429, RetryAfter: 5 * time.Second}, 2, 2)},
		func(c *guardConfig) { c.cooldowns = store })
	if _, err := e.token(t.Context()); err != nil {
		t.Fatalf("with the store down: %v", err)
	}
	_, err := e.token(t.Context())
	unavailable(t, err, CauseCooldown)
	_, err = e.token(t.Context())
	unavailable(t, err, CauseCooldown)
	if get, set := testutil.ToFloat64(e.m.RedisErrors.WithLabelValues("get")), testutil.ToFloat64(e.m.RedisErrors.WithLabelValues("set")); get != 2 || set != 1 {
		t.Fatalf("store failures counted: get %v, set %v; want 2 and 1", get, set)
	}
}

// TestGuardBreaker: consecutive failures open the breaker, which then
// refuses at once; 4xx answers and cancelled calls do not count; after the
// open interval one probe goes through (half-open) while others are
// refused, and its success closes the breaker.
func TestGuardBreaker(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	probe := make(chan struct{})
	var probing atomic.Bool
	next := &fakeIssuer{answer: func(ctx context.Context, n int64) (*qlik.Token, error) {
		switch {
		case ctx.Value(cancelKey{}) != nil:
			return nil, context.Canceled
		case ctx.Value(clientErrKey{}) != nil:
			return nil, &qlik.Error{StatusCode: 400}
		case failing.Load():
			return nil, &qlik.Error{StatusCode: 500}
		case probing.Load():
			<-probe
		}
		return &qlik.Token{AccessToken: "t"}, nil
	}}
	e := newTestGuard(t, next, func(c *guardConfig) {
		c.upstream.BreakerFailures = 3
		c.upstream.BreakerOpen = 50 * time.Millisecond // gobreaker's own wall clock
		c.upstream.Retries = 0
	})
	state := func() float64 { return testutil.ToFloat64(e.m.UpstreamBreakerState.WithLabelValues("acme")) }

	ctx := t.Context()
	fail := func(what string, ctx context.Context) {
		t.Helper()
		if _, err := e.token(ctx); !errors.Is(err, ErrUpstream) {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// Failure, failure, 4xx, failure, failure, cancelled: had the 4xx or the
	// cancellation counted as a failure, the breaker would be open by now.
	fail("failure", ctx)
	fail("failure", ctx)
	fail("4xx", context.WithValue(ctx, clientErrKey{}, true))
	fail("failure", ctx)
	fail("failure", ctx)
	fail("cancelled", context.WithValue(ctx, cancelKey{}, true))
	if state() != metrics.BreakerClosed {
		t.Fatalf("breaker state %v: a 4xx or a cancellation counted as a failure", state())
	}
	fail("third consecutive failure", ctx)
	if state() != metrics.BreakerOpen {
		t.Fatalf("breaker state %v after 3 consecutive failures, want open", state())
	}
	calls := next.calls.Load()
	_, err := e.token(ctx)
	if ue := unavailable(t, err, CauseBreakerOpen); ue.RetryAfter < time.Second {
		t.Fatalf("open breaker's Retry-After %v", ue.RetryAfter)
	}
	_, err = e.g.ClientCredentialsToken(ctx, qlik.Credentials{}, "")
	unavailable(t, err, CauseBreakerOpen)
	if next.calls.Load() != calls || e.rejections(CauseBreakerOpen) != 2 {
		t.Fatalf("the open breaker let a call through (%d calls) or did not count (%v)", next.calls.Load()-calls, e.rejections(CauseBreakerOpen))
	}

	// Half-open: one probe at a time.
	failing.Store(false)
	probing.Store(true)
	time.Sleep(60 * time.Millisecond) // the open interval is real time
	done := make(chan error, 1)
	go func() { _, err := e.token(ctx); done <- err }()
	for next.inFlight.Load() == 0 {
		time.Sleep(time.Millisecond) // until the probe is at the tenant
	}
	if state() != metrics.BreakerHalfOpen {
		t.Fatalf("breaker state %v during the probe, want half-open", state())
	}
	_, err = e.token(ctx)
	unavailable(t, err, CauseBreakerOpen)
	probing.Store(false)
	close(probe)
	if err := <-done; err != nil {
		t.Fatalf("the probe: %v", err)
	}
	if state() != metrics.BreakerClosed {
		t.Fatalf("breaker state %v after a good probe, want closed", state())
	}
	if _, err := e.token(ctx); err != nil {
		t.Fatalf("after closing: %v", err)
	}
}

// Context keys that make the breaker test's fake answer otherwise.
type (
	cancelKey    struct{}
	clientErrKey struct{}
)

// TestGuardRetries: a 5xx, timeout or connection failure is retried up to
// Retries times with exponential back-off, each retry counted; a 4xx, a
// bad body or a cancellation is not; Retries 0 means none; a back-off that
// would pass the deadline is not slept.
func TestGuardRetries(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retries   int
		answer    func(context.Context, int64) (*qlik.Token, error)
		deadline  time.Duration // 0: none
		wantCalls int64
		wantOK    bool
	}{
		{"two 503s then a token", 2, fails(&qlik.Error{StatusCode: 503}, 1, 2), 0, 3, true},
		{"connection failures then a token", 2, fails(errors.New("connection refused"), 1, 2), 0, 3, true},
		{"retries used up", 2, fails(&qlik.Error{StatusCode: 500}, 1, 9), 0, 3, false},
		{"zero means none", 0, fails(&qlik.Error{StatusCode: 503}, 1, 1), 0, 1, false},
		{"4xx", 2, fails(&qlik.Error{StatusCode: 400}, 1, 1), 0, 1, false},
		{"bad body", 2, fails(qlik.ErrMalformedResponse, 1, 1), 0, 1, false},
		{"cancelled", 2, fails(context.Canceled, 1, 1), 0, 1, false},
		{"back-off past the deadline", 5, fails(&qlik.Error{StatusCode: 503}, 1, 9), time.Second, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ceilings []time.Duration
			e := newTestGuard(t, &fakeIssuer{answer: tc.answer}, func(c *guardConfig) {
				c.upstream.Retries = tc.retries
				c.upstream.RetryBase, c.upstream.RetryMax = time.Millisecond, 3*time.Millisecond/2
				if tc.deadline > 0 {
					c.upstream.RetryBase, c.upstream.RetryMax = time.Hour, time.Hour
				}
				c.jitter = func(ceiling time.Duration) time.Duration {
					ceilings = append(ceilings, ceiling)
					return ceiling
				}
			})
			ctx := t.Context()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			start := time.Now()
			_, err := e.token(ctx)
			if (err == nil) != tc.wantOK || err != nil && !errors.Is(err, ErrUpstream) {
				t.Fatalf("err = %v, want ok %v (or ErrUpstream)", err, tc.wantOK)
			}
			if n := e.next.calls.Load(); n != tc.wantCalls {
				t.Fatalf("tenant calls %d, want %d", n, tc.wantCalls)
			}
			retried := testutil.ToFloat64(e.m.UpstreamRetries.WithLabelValues("acme"))
			if int64(retried) != tc.wantCalls-1 {
				t.Fatalf("retries counted %v, want %d", retried, tc.wantCalls-1)
			}
			if tc.deadline > 0 && time.Since(start) > tc.deadline/2 {
				t.Fatalf("slept a back-off that could not end before the deadline (%v)", time.Since(start))
			}
			if tc.name == "two 503s then a token" && (len(ceilings) != 2 || ceilings[0] != time.Millisecond || ceilings[1] != 3*time.Millisecond/2) {
				t.Fatalf("back-off ceilings %v, want 1ms then 1.5ms (doubled, capped by RetryMax)", ceilings)
			}
		})
	}
}

// TestGuardLocalRate: this process's token bucket lets Burst calls out at
// once and then one per interval; a call that could not get a token before
// its deadline (less callMargin) is refused at once with a Retry-After of
// at least Concurrency intervals.
func TestGuardLocalRate(t *testing.T) {
	e := newTestGuard(t, &fakeIssuer{}, func(c *guardConfig) {
		c.upstream.RatePerMinute = 120 // one every 500ms
		c.upstream.Burst = 2
		c.upstream.Concurrency = 20
	})
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), callMargin+20*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	for i := range 2 {
		if _, err := e.token(short()); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	start := time.Now()
	_, err := e.token(short())
	if ue := unavailable(t, err, CauseQueueTimeout); ue.RetryAfter != 10*time.Second {
		t.Fatalf("Retry-After %v, want 10s (20 slots at 2 a second)", ue.RetryAfter)
	}
	if time.Since(start) > callMargin {
		t.Fatalf("refusing took %v: the limiter waited instead of refusing at once", time.Since(start))
	}
	// With time to wait, the call waits for the next token.
	ctx, cancel := context.WithTimeout(t.Context(), time.Second+callMargin)
	defer cancel()
	if _, err := e.token(ctx); err != nil {
		t.Fatalf("a call that can wait for a token: %v", err)
	}
	if n, r := e.next.calls.Load(), e.rejections(CauseQueueTimeout); n != 3 || r != 1 {
		t.Fatalf("tenant calls %d, refusals %v; want 3 and 1", n, r)
	}
}

// TestGuardSharedRate: the replicas' shared limit is asked under the
// tenant's key before each call; a call waits as long as it says, is
// refused when that wait would pass its deadline, and goes on when the
// limiter fails (the local limits still hold).
func TestGuardSharedRate(t *testing.T) {
	for _, tc := range []struct {
		name       string
		answer     func(call int) (bool, time.Duration, error)
		wantCause  Cause // 0: served
		wantAsks   int
		wantErrors float64
	}{
		{"room", func(int) (bool, time.Duration, error) { return true, 0, nil }, 0, 1, 0},
		{"waits for room", func(n int) (bool, time.Duration, error) { return n > 2, 20 * time.Millisecond, nil }, 0, 3, 0},
		{"no room before the deadline", func(int) (bool, time.Duration, error) { return false, 10 * time.Second, nil }, CauseSharedRate, 1, 0},
		{"limiter fails open", func(int) (bool, time.Duration, error) { return false, 0, errors.New("redis down") }, 0, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := &fakeLimiter{answer: tc.answer}
			e := newTestGuard(t, &fakeIssuer{}, func(c *guardConfig) {
				c.upstream.SharedRatePerMinute = 90
				c.limiter = lim
			})
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			_, err := e.token(ctx)
			switch {
			case tc.wantCause == 0 && err != nil:
				t.Fatalf("not served: %v", err)
			case tc.wantCause != 0:
				ue := unavailable(t, err, tc.wantCause)
				if ue.RetryAfter < 10*time.Second || !errors.Is(err, errSharedRate) || e.next.calls.Load() != 0 {
					t.Fatalf("refusal: Retry-After %v (want the limiter's 10s), err %v, %d tenant calls", ue.RetryAfter, err, e.next.calls.Load())
				}
				if e.rejections(CauseSharedRate) != 1 {
					t.Fatal("the refusal was not counted as shared_rate")
				}
			}
			if lim.calls != tc.wantAsks || lim.keys[0] != "qtb:rate:acme" {
				t.Fatalf("limiter asked %d times under %q, want %d under qtb:rate:acme", lim.calls, lim.keys[0], tc.wantAsks)
			}
			if got := testutil.ToFloat64(e.m.RedisErrors.WithLabelValues("rate")); got != tc.wantErrors {
				t.Fatalf("limiter failures counted %v, want %v", got, tc.wantErrors)
			}
		})
	}
}

// TestGuardConcurrency: at most Concurrency calls are at the tenant at
// once; a call that finds no slot before its deadline is refused.
func TestGuardConcurrency(t *testing.T) {
	release := make(chan struct{})
	next := &fakeIssuer{answer: func(context.Context, int64) (*qlik.Token, error) {
		<-release
		return &qlik.Token{AccessToken: "t"}, nil
	}}
	e := newTestGuard(t, next, func(c *guardConfig) { c.upstream.Concurrency = 2 })
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if _, err := e.token(t.Context()); err != nil {
				t.Errorf("a call holding a slot: %v", err)
			}
		})
	}
	for next.inFlight.Load() < 2 {
		time.Sleep(time.Millisecond) // until both hold their slot
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := e.token(ctx)
	if ue := unavailable(t, err, CauseQueueTimeout); ue.RetryAfter != 5*time.Second || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued past the deadline: Retry-After %v, err %v", ue.RetryAfter, err)
	}
	close(release)
	wg.Wait()
	if _, err := e.token(t.Context()); err != nil {
		t.Fatalf("after the slots were freed: %v", err)
	}
	if p := next.peakInFlight.Load(); p != 2 {
		t.Fatalf("peak calls in flight %d, want 2", p)
	}
}

// TestGuardRevokePassesThrough: a logout's revocation reaches the tenant
// even while token calls are refused, and is counted.
func TestGuardRevokePassesThrough(t *testing.T) {
	e := newTestGuard(t, &fakeIssuer{answer: fails(&qlik.Error{StatusCode: 429}, 1, 1)}, nil)
	_, err := e.token(t.Context())
	unavailable(t, err, CauseCooldown)
	if err := e.g.Revoke(t.Context(), qlik.Credentials{}, "t"); err != nil || e.next.revokes.Load() != 1 {
		t.Fatalf("revoke during the cooldown: %v, %d revocations", err, e.next.revokes.Load())
	}
	if got := testutil.ToFloat64(e.m.UpstreamRequests.WithLabelValues("acme", "revoke", metrics.OutcomeSuccess)); got != 1 {
		t.Fatalf("revocations counted %v", got)
	}
}

// TestUnauthorizedStaysOnTheRoad: after a 401, the retry with a re-read
// secret and the check of the client's credentials are token calls like
// any other: with the local rate used up they are refused, not made.
func TestUnauthorizedStaysOnTheRoad(t *testing.T) {
	for _, tc := range []struct {
		name   string
		reload func() (string, error)
	}{
		{"credentials check", nil},
		{"retry with a rotated secret", func() (string, error) { return "secret-2", nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestGuard(t, &fakeIssuer{answer: fails(&qlik.Error{StatusCode: 401}, 1, 9)}, func(c *guardConfig) {
				c.upstream.RatePerMinute = 1 // one call, then none for a minute
				c.upstream.Burst = 1
			})
			up := newUpstream(Tenant{ID: "acme", Credentials: qlik.Credentials{ClientID: "c", ClientSecret: "secret-1"}, ReloadSecret: tc.reload},
				e.g, noop.NewTracerProvider().Tracer(""), e.g.deps)
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			_, err := up.impersonate(ctx, qlik.UserLookup{Field: qlik.FieldUserID, Value: "u"})
			unavailable(t, err, CauseQueueTimeout)
			if n := e.next.calls.Load(); n != 1 {
				t.Fatalf("tenant calls %d, want 1: the second went around the rate limit", n)
			}
		})
	}
}
