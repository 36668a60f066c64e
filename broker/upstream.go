package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// UpstreamConfig tunes how the broker protects one tenant's token endpoint
// (Qlik's Tier 2: about 100 calls a minute) and survives its bad minutes.
// Zero fields take the defaults noted.
type UpstreamConfig struct {
	// Concurrency bounds the token calls in flight to the tenant from this
	// process; more wait in a queue up to their deadline. Default 8.
	Concurrency int
	// Rate, when positive, is the token calls per second this process may
	// make to the tenant (a token bucket); 0 means unlimited. It holds
	// without Redis; SharedRate is the tenant-wide limit.
	Rate float64
	// Burst is the token bucket's size. Default: Concurrency.
	Burst int
	// SharedRate, when positive, is the token calls per minute all
	// replicas together may make to the tenant, counted in Redis (the
	// Shared store, which must implement SharedLimiter). A call waits for
	// room up to its deadline; one that would find none gets a 503. While
	// Redis fails, only the per-process limits hold: issuing goes on.
	// 0 turns it off.
	SharedRate float64
	// SharedBurst is how many calls SharedRate lets out at once after a
	// quiet spell: in any minute the tenant sees at most SharedRate +
	// SharedBurst calls. Default 5.
	SharedBurst int
	// Retries is how many times a call that failed with a 5xx, a timeout
	// or a connection error is retried, with full-jitter exponential
	// back-off inside the request's deadline. Default 2; -1 for none.
	Retries int
	// RetryBase and RetryMax bound the back-off. Defaults 100ms and 2s.
	RetryBase, RetryMax time.Duration
	// BreakerFailures consecutive failures open the tenant's circuit
	// breaker. Default 5.
	BreakerFailures uint32
	// BreakerOpen is how long an open breaker refuses calls before one
	// probe goes through. Default 30s.
	BreakerOpen time.Duration
	// CooldownDefault is the cooldown after a 429 whose Retry-After is
	// missing or unreadable. Default 30s. CooldownMax caps any Retry-After.
	// Default 10m.
	CooldownDefault, CooldownMax time.Duration
}

func (c UpstreamConfig) withDefaults() UpstreamConfig {
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.Burst <= 0 {
		c.Burst = c.Concurrency
	}
	if c.SharedBurst <= 0 {
		c.SharedBurst = 5
	}
	if c.Retries == 0 {
		c.Retries = 2
	}
	c.Retries = max(c.Retries, 0)
	c.RetryBase = orDefault(c.RetryBase, 100*time.Millisecond)
	c.RetryMax = orDefault(c.RetryMax, 2*time.Second)
	if c.BreakerFailures == 0 {
		c.BreakerFailures = 5
	}
	c.BreakerOpen = orDefault(c.BreakerOpen, 30*time.Second)
	c.CooldownDefault = orDefault(c.CooldownDefault, 30*time.Second)
	c.CooldownMax = orDefault(c.CooldownMax, 10*time.Minute)
	return c
}

// SharedLimiter is a rate limit the replicas share. Allow takes one call
// from the limit named key, or reports how long until one could be taken.
// *cache.Redis is the implementation.
type SharedLimiter interface {
	Allow(ctx context.Context, key string, perMinute float64, burst int) (allowed bool, retryAfter time.Duration, err error)
}

var _ SharedLimiter = (*cache.Redis)(nil)

// UnavailableError is a token request refused because the tenant may not
// be asked now; the caller should retry after RetryAfter.
type UnavailableError struct {
	// Cause is one of metrics.RejectCooldown, RejectBreakerOpen,
	// RejectQueueTimeout.
	Cause      string
	RetryAfter time.Duration
	Err        error
}

func (e *UnavailableError) Error() string {
	msg := "broker: tenant not asked (" + e.Cause + ")"
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *UnavailableError) Unwrap() error { return e.Err }

var (
	// ErrUnknownUser means the tenant has no active user for the lookup.
	ErrUnknownUser = errors.New("broker: the tenant does not know this user")
	// ErrInvalidClient means the tenant refused the broker's own client
	// credentials: an operator must fix them.
	ErrInvalidClient = errors.New("broker: the tenant refused the client credentials")
)

// upstream guards one tenant's token endpoint: cooldown after 429,
// retries, a circuit breaker, a concurrency bound, rate limits (this
// process's and the replicas' shared one), and secret rotation on 401.
type upstream struct {
	b      *Broker
	tenant Tenant
	cfg    UpstreamConfig
	*guard

	credsMu sync.RWMutex
	creds   qlik.Credentials
}

// guard is the state that protects a tenant, kept across registry reloads.
type guard struct {
	slots   chan struct{}
	limiter *rate.Limiter // nil: unlimited
	breaker *gobreaker.CircuitBreaker[*qlik.Token]

	openedAt      atomic.Int64 // unix nanos of the last breaker opening
	cooldownUntil atomic.Int64 // unix nanos
	credsOKUntil  atomic.Int64 // unix nanos: client credentials known good
}

// withTenant is u with a new configuration of the same tenant and client,
// keeping its guard (cooldown, breaker, limits).
func (u *upstream) withTenant(t Tenant) *upstream {
	return &upstream{b: u.b, tenant: t, cfg: u.cfg, guard: u.guard, creds: t.Credentials}
}

func newUpstream(b *Broker, t Tenant, cfg UpstreamConfig) *upstream {
	u := &upstream{b: b, tenant: t, cfg: cfg, creds: t.Credentials,
		guard: &guard{slots: make(chan struct{}, cfg.Concurrency)}}
	g := u.guard
	if cfg.Rate > 0 {
		g.limiter = rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst)
	}
	g.breaker = gobreaker.NewCircuitBreaker[*qlik.Token](gobreaker.Settings{
		Name:        t.ID,
		MaxRequests: 1,
		Timeout:     cfg.BreakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= cfg.BreakerFailures },
		// A 4xx (429 included) means the tenant is up and answering.
		IsSuccessful: func(err error) bool {
			var qe *qlik.Error
			return err == nil || errors.As(err, &qe) && qe.StatusCode < 500
		},
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			state := map[gobreaker.State]float64{
				gobreaker.StateClosed: metrics.BreakerClosed, gobreaker.StateHalfOpen: metrics.BreakerHalfOpen, gobreaker.StateOpen: metrics.BreakerOpen,
			}[to]
			b.m.UpstreamBreakerState.WithLabelValues(t.ID).Set(state)
			if to == gobreaker.StateOpen {
				g.openedAt.Store(time.Now().UnixNano())
				b.log.Error("tenant keeps failing: circuit breaker open, cold token requests get 503 for a while",
					"tenant", t.ID, "open_for", cfg.BreakerOpen)
			} else {
				b.log.Info("tenant circuit breaker changed state", "tenant", t.ID, "from", from.String(), "to", to.String())
			}
		},
	})
	b.m.UpstreamBreakerState.WithLabelValues(t.ID).Set(metrics.BreakerClosed)
	return u
}

func (u *upstream) credentials() qlik.Credentials {
	u.credsMu.RLock()
	defer u.credsMu.RUnlock()
	return u.creds
}

// impersonate asks the tenant for a token for user, within ctx's deadline.
func (u *upstream) impersonate(ctx context.Context, user qlik.UserLookup) (_ *qlik.Token, err error) {
	ctx, span := u.b.tracer.Start(ctx, spanUpstream, trace.WithAttributes(attrTenant.String(u.tenant.ID)))
	defer func() { endSpan(span, spanOutcome(err), err) }()
	if err := u.checkCooldown(ctx); err != nil {
		return nil, err
	}
	if u.breaker.State() == gobreaker.StateOpen {
		return nil, u.breakerOpen(gobreaker.ErrOpenState)
	}
	release, err := u.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()

	for attempt := 0; ; attempt++ {
		tok, err := u.call(ctx, user)
		if err == nil {
			return tok, nil
		}
		var qe *qlik.Error
		switch {
		case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
			return nil, u.breakerOpen(err)
		case errors.As(err, &qe) && qe.StatusCode == 429:
			return nil, u.startCooldown(ctx, qe)
		case errors.As(err, &qe) && qe.StatusCode == 401:
			return u.unauthorized(ctx, user, qe)
		case !retryable(err) || attempt >= u.cfg.Retries:
			return nil, fmt.Errorf("%w: token: %w", ErrUpstream, err)
		}
		if !u.backoff(ctx, attempt) {
			return nil, fmt.Errorf("%w: token: %w", ErrUpstream, err)
		}
		u.b.m.UpstreamRetries.WithLabelValues(u.tenant.ID).Inc()
		if err := u.wait(ctx); err != nil {
			return nil, err
		}
	}
}

// call makes one token request through the breaker and records it.
func (u *upstream) call(ctx context.Context, user qlik.UserLookup) (*qlik.Token, error) {
	start := u.b.now()
	tok, err := u.breaker.Execute(func() (*qlik.Token, error) {
		return u.tenant.Issuer.ImpersonationToken(ctx, u.credentials(), user, u.tenant.Scope)
	})
	if !errors.Is(err, gobreaker.ErrOpenState) && !errors.Is(err, gobreaker.ErrTooManyRequests) {
		u.b.observeUpstream(u.tenant.ID, "token", start, err)
	}
	return tok, err
}

// retryable reports whether a failed call may succeed if repeated: tenant
// 5xx, timeouts and connection failures; never a 4xx or a bad body, and
// never the caller's own cancellation.
func retryable(err error) bool {
	var qe *qlik.Error
	switch {
	case errors.As(err, &qe):
		return qe.StatusCode >= 500
	case errors.Is(err, qlik.ErrMalformedResponse), errors.Is(err, qlik.ErrInvalidRequest), errors.Is(err, context.Canceled):
		return false
	}
	return true
}

// backoff sleeps a full-jitter exponential delay, unless that would pass
// ctx's deadline. It reports whether to try again.
func (u *upstream) backoff(ctx context.Context, attempt int) bool {
	ceiling := min(u.cfg.RetryMax, u.cfg.RetryBase<<attempt)
	d := time.Duration(rand.Int64N(int64(ceiling) + 1))
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// acquire takes a concurrency slot and a rate token (this process's, then
// the shared one), or gives up with a 503 once ctx's deadline would pass
// first.
func (u *upstream) acquire(ctx context.Context) (release func(), err error) {
	start := time.Now()
	defer func() { u.b.m.UpstreamQueueWait.WithLabelValues(u.tenant.ID).Observe(time.Since(start).Seconds()) }()
	select {
	case u.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, u.queueTimeout(ctx.Err(), 0)
	}
	release = func() { <-u.slots }
	if err := u.wait(ctx); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// callMargin is the time a queued call must still have when it leaves the
// queue, so that one let through just before the deadline does not time
// out at the tenant instead of getting a clean 503.
const callMargin = 250 * time.Millisecond

// wait takes a rate token for one call (retries included): this process's,
// then the replicas' shared one. It fails at once when a token could not
// come before ctx's deadline (less callMargin).
func (u *upstream) wait(ctx context.Context) error {
	if u.limiter == nil && u.b.limiter == nil {
		return nil
	}
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-callMargin))
		defer cancel()
	}
	if u.limiter != nil {
		if err := u.limiter.Wait(ctx); err != nil {
			return u.queueTimeout(err, 0)
		}
	}
	return u.waitShared(ctx)
}

// errSharedRate is why a call refused by the shared rate limit was not made.
var errSharedRate = errors.New("broker: the tenant's shared rate limit has no room before the deadline")

// waitShared takes a call from the rate limit the replicas share in Redis,
// waiting as long as Redis says and asking again, unless the wait would
// pass ctx's deadline. When Redis fails it lets the call go: the local
// limits still hold, and a Redis outage must not stop token issuing.
func (u *upstream) waitShared(ctx context.Context) error {
	if u.b.limiter == nil {
		return nil
	}
	for {
		ok, retry, err := u.b.limiter.Allow(ctx, u.rateKey(), u.cfg.SharedRate, u.cfg.SharedBurst)
		switch {
		case ctx.Err() != nil:
			return u.refuse(metrics.RejectSharedRate, ctx.Err(), retry)
		case err != nil:
			u.b.redisError(ctx, "rate", err)
			return nil
		case ok:
			return nil
		}
		retry = max(retry, 10*time.Millisecond) // never a busy loop on Redis
		if deadline, has := ctx.Deadline(); has && time.Until(deadline) < retry {
			return u.refuse(metrics.RejectSharedRate, errSharedRate, retry)
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return u.refuse(metrics.RejectSharedRate, ctx.Err(), retry)
		case <-t.C:
		}
	}
}

// rateKey is the Redis key of the tenant's shared rate limit.
func (u *upstream) rateKey() string { return "qtb:rate:" + u.tenant.ID }

// queueTimeout is the 503 for a call that could not leave the queue in
// time. Its Retry-After is at least atLeast (the shared limit's own wait).
func (u *upstream) queueTimeout(err error, atLeast time.Duration) error {
	return u.refuse(metrics.RejectQueueTimeout, err, atLeast)
}

// refuse is a 503 for a call that could not leave the queue in time, by
// cause: this process's slots and rate (queue_timeout) or the replicas'
// shared rate (shared_rate); both are upstream_busy to the caller.
func (u *upstream) refuse(cause string, err error, atLeast time.Duration) error {
	u.b.m.Rejections.WithLabelValues(cause).Inc()
	retry := max(5*time.Second, atLeast)
	if u.cfg.Rate > 0 {
		retry = max(retry, time.Duration(float64(u.cfg.Concurrency)/u.cfg.Rate*float64(time.Second)))
	}
	return &UnavailableError{Cause: cause, RetryAfter: retry, Err: err}
}

func (u *upstream) breakerOpen(err error) error {
	u.b.m.Rejections.WithLabelValues(metrics.RejectBreakerOpen).Inc()
	left := time.Until(time.Unix(0, u.openedAt.Load()).Add(u.cfg.BreakerOpen))
	return &UnavailableError{Cause: metrics.RejectBreakerOpen, RetryAfter: max(left, time.Second), Err: err}
}

// cooldownKey is the Redis key replicas share a tenant's cooldown under.
func (u *upstream) cooldownKey() string { return "qtb:cooldown:" + u.tenant.ID }

// checkCooldown refuses while this replica, or any replica through Redis,
// has seen a 429 whose Retry-After has not passed.
func (u *upstream) checkCooldown(ctx context.Context) error {
	now := u.b.now()
	until := time.Unix(0, u.cooldownUntil.Load())
	if !now.Before(until) && u.b.shared != nil {
		raw, err := u.b.shared.Get(ctx, u.cooldownKey())
		switch {
		case err == nil:
			if ms, perr := strconv.ParseInt(string(raw), 10, 64); perr == nil {
				until = time.UnixMilli(ms)
				u.noteCooldown(until)
			}
		case !errors.Is(err, cache.ErrMiss):
			u.b.redisError(ctx, "get", err)
		}
	}
	if now.Before(until) {
		u.b.m.Rejections.WithLabelValues(metrics.RejectCooldown).Inc()
		return &UnavailableError{Cause: metrics.RejectCooldown, RetryAfter: until.Sub(now)}
	}
	return nil
}

// startCooldown records a 429 here and in Redis for the other replicas.
func (u *upstream) startCooldown(ctx context.Context, qe *qlik.Error) error {
	d := qe.RetryAfter
	switch {
	case d <= 0:
		d = u.cfg.CooldownDefault // missing, unreadable or in the past
	case d < time.Second:
		d = time.Second
	case d > u.cfg.CooldownMax:
		d = u.cfg.CooldownMax
	}
	until := u.b.now().Add(d)
	u.noteCooldown(until)
	u.b.log.WarnContext(ctx, "tenant rate limit reached: no token calls until the cooldown ends",
		"tenant", u.tenant.ID, "cooldown", d, "retry_after_header", qe.RetryAfter)
	if u.b.shared != nil {
		if err := u.b.shared.Set(ctx, u.cooldownKey(), []byte(strconv.FormatInt(until.UnixMilli(), 10)), d); err != nil {
			u.b.redisError(ctx, "set", err)
		}
	}
	u.b.m.Rejections.WithLabelValues(metrics.RejectCooldown).Inc()
	return &UnavailableError{Cause: metrics.RejectCooldown, RetryAfter: d, Err: qe}
}

func (u *upstream) noteCooldown(until time.Time) {
	for {
		cur := u.cooldownUntil.Load()
		if until.UnixNano() <= cur || u.cooldownUntil.CompareAndSwap(cur, until.UnixNano()) {
			break
		}
	}
	u.b.m.UpstreamCooldownUntil.WithLabelValues(u.tenant.ID).Set(float64(until.UnixMilli()) / 1000)
}

// unauthorized handles a 401 to an impersonation request. Qlik answers 401
// both for bad client credentials and (unconfirmed) for an unknown user.
// The secret may have been rotated: re-read it once and retry. Otherwise
// tell the two cases apart by the error code, or when it is not
// conclusive by checking the credentials with a client_credentials call
// (remembered for five minutes).
func (u *upstream) unauthorized(ctx context.Context, user qlik.UserLookup, qe *qlik.Error) (*qlik.Token, error) {
	if u.reloadSecret(ctx) {
		tok, err := u.call(ctx, user)
		var again *qlik.Error
		if err == nil || !errors.As(err, &again) || again.StatusCode != 401 {
			if err != nil {
				return nil, fmt.Errorf("%w: token: %w", ErrUpstream, err)
			}
			return tok, nil
		}
		qe = again
	}
	switch qe.Code {
	case "invalid_client", "unauthorized_client":
		return nil, u.invalidClient(ctx, qe)
	case "invalid_grant", "invalid_user", "user_not_found":
		return nil, u.unknownUser(qe)
	}
	if u.b.now().UnixNano() < u.credsOKUntil.Load() {
		return nil, u.unknownUser(qe)
	}
	start := u.b.now()
	_, err := u.tenant.Issuer.ClientCredentialsToken(ctx, u.credentials(), "")
	u.b.observeUpstream(u.tenant.ID, "token", start, err)
	var ce *qlik.Error
	if errors.As(err, &ce) && ce.StatusCode == 401 {
		return nil, u.invalidClient(ctx, qe)
	}
	if err == nil || errors.As(err, &ce) {
		// The tenant accepted the credentials (or refused only the grant).
		u.credsOKUntil.Store(u.b.now().Add(5 * time.Minute).UnixNano())
		return nil, u.unknownUser(qe)
	}
	return nil, fmt.Errorf("%w: token: %w", ErrUpstream, qe)
}

func (u *upstream) unknownUser(qe *qlik.Error) error {
	u.b.m.Rejections.WithLabelValues(metrics.RejectUnknownUser).Inc()
	return fmt.Errorf("%w: %w", ErrUnknownUser, qe)
}

func (u *upstream) invalidClient(ctx context.Context, qe *qlik.Error) error {
	u.b.m.Rejections.WithLabelValues(metrics.RejectInvalidClient).Inc()
	u.b.m.UpstreamInvalidCredentials.WithLabelValues(u.tenant.ID).Inc()
	u.b.log.ErrorContext(ctx, "the tenant refused the broker's OAuth client credentials; check the client id and secret",
		"tenant", u.tenant.ID, "client_id", u.credentials().ClientID, "code", qe.Code)
	return fmt.Errorf("%w: %w", ErrInvalidClient, qe)
}

// reloadSecret re-reads the client secret (a rotated Kubernetes secret
// file) and reports whether it changed.
func (u *upstream) reloadSecret(ctx context.Context) bool {
	if u.tenant.ReloadSecret == nil {
		return false
	}
	secret, err := u.tenant.ReloadSecret()
	if err != nil {
		u.b.log.ErrorContext(ctx, "re-reading the client secret failed", "tenant", u.tenant.ID, "err", err)
		return false
	}
	u.credsMu.Lock()
	defer u.credsMu.Unlock()
	if secret == "" || secret == u.creds.ClientSecret {
		return false
	}
	u.creds.ClientSecret = secret
	u.b.log.InfoContext(ctx, "client secret changed on disk; using the new one", "tenant", u.tenant.ID)
	return true
}
