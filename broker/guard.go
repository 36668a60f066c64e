package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// guard is the one road to a tenant's token endpoint: an Issuer around the
// tenant's own Issuer (as vault's LeaseCache wraps a Proxier) that holds
// the tenant's cooldown after a 429, its circuit breaker, retries with
// back-off, this process's rate limit and concurrency bound, and the rate
// limit the replicas share. Every call that can reach /oauth/token goes
// through it: a cold fill, a background refresh, a reissue after the
// tenant refused a token, the retry after re-reading a rotated secret and
// the check of the client's credentials after an unclear 401.
//
// A refusal is an *UnavailableError with its Cause and a Retry-After; a
// call the tenant failed is wrapped in ErrUpstream. Revocations pass
// through unguarded (a logout must reach the tenant even while token calls
// are refused) but are counted here, so every tenant call is.
type guard struct {
	next Issuer
	*guardState
}

var _ Issuer = (*guard)(nil)

// guardConfig is what a guard needs; nothing of the Broker.
type guardConfig struct {
	tenant   string // names the tenant in metrics, logs and Redis keys
	upstream UpstreamConfig
	// limiter counts upstream.SharedRatePerMinute; nil turns it off.
	limiter SharedLimiter
	// cooldowns shares a 429's cooldown with the other replicas; nil keeps
	// it in this process.
	cooldowns Store
	deps
	// jitter draws a back-off delay up to ceiling; nil is uniform.
	jitter func(ceiling time.Duration) time.Duration
}

// guardState is what protects a tenant. It is kept across registry
// reloads, which only change the Issuer it wraps.
type guardState struct {
	guardConfig
	slots   chan struct{}
	local   *rate.Limiter // nil: unlimited
	breaker *gobreaker.CircuitBreaker[*qlik.Token]

	openedAt      atomic.Int64 // unix nanos of the last breaker opening
	cooldownUntil atomic.Int64 // unix nanos
	// waiting counts interactive calls waiting for a slot or a rate
	// token; a background refresh defers while there are any.
	waiting atomic.Int64
}

// newGuard returns a guard around next. cfg.upstream must be valid.
func newGuard(next Issuer, cfg guardConfig) *guard {
	if cfg.jitter == nil {
		cfg.jitter = func(ceiling time.Duration) time.Duration { return time.Duration(rand.Int64N(int64(ceiling) + 1)) }
	}
	up := cfg.upstream
	g := &guardState{guardConfig: cfg, slots: make(chan struct{}, up.Concurrency)}
	if up.RatePerMinute > 0 {
		g.local = rate.NewLimiter(rate.Limit(up.RatePerMinute/60), up.Burst)
	}
	g.breaker = gobreaker.NewCircuitBreaker[*qlik.Token](gobreaker.Settings{
		Name:        cfg.tenant,
		MaxRequests: 1,
		Timeout:     up.BreakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= up.BreakerFailures },
		// A 4xx (429 included) means the tenant is up and answering.
		IsSuccessful: func(err error) bool {
			var qe *qlik.Error
			return err == nil || errors.As(err, &qe) && qe.StatusCode < 500
		},
		IsExcluded:    func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: g.breakerChanged,
	})
	g.m.UpstreamBreakerState.WithLabelValues(cfg.tenant).Set(metrics.BreakerClosed)
	return &guard{next: next, guardState: g}
}

// wrap returns a guard around next that shares g's state: the same
// tenant's Issuer after a registry reload.
func (g *guard) wrap(next Issuer) *guard { return &guard{next: next, guardState: g.guardState} }

func (g *guardState) breakerChanged(_ string, from, to gobreaker.State) {
	state := map[gobreaker.State]float64{
		gobreaker.StateClosed: metrics.BreakerClosed, gobreaker.StateHalfOpen: metrics.BreakerHalfOpen, gobreaker.StateOpen: metrics.BreakerOpen,
	}[to]
	g.m.UpstreamBreakerState.WithLabelValues(g.tenant).Set(state)
	if to == gobreaker.StateOpen {
		// gobreaker keeps its own (wall) clock; so does the open interval.
		g.openedAt.Store(time.Now().UnixNano())
		g.log.Error("tenant keeps failing: circuit breaker open, cold token requests get 503 for a while",
			"tenant", g.tenant, "open_for", g.upstream.BreakerOpen)
	} else {
		g.log.Info("tenant circuit breaker changed state", "tenant", g.tenant, "from", from.String(), "to", to.String())
	}
}

// ImpersonationToken asks for a token acting for user, if the tenant may
// be asked now, within ctx's deadline.
func (g *guard) ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error) {
	return g.do(ctx, func(ctx context.Context) (*qlik.Token, error) {
		return g.next.ImpersonationToken(ctx, creds, user, scope)
	})
}

// ClientCredentialsToken asks for a token of the client itself, on the same
// terms: it is a call to the same endpoint.
func (g *guard) ClientCredentialsToken(ctx context.Context, creds qlik.Credentials, scope string) (*qlik.Token, error) {
	return g.do(ctx, func(ctx context.Context) (*qlik.Token, error) {
		return g.next.ClientCredentialsToken(ctx, creds, scope)
	})
}

// Revoke revokes accessToken at the tenant, unguarded, and counts the call.
func (g *guard) Revoke(ctx context.Context, creds qlik.Credentials, accessToken string) error {
	start := g.now()
	err := g.next.Revoke(ctx, creds, accessToken)
	observeUpstream(g.m, g.tenant, "revoke", g.now().Sub(start), err)
	return err
}

// do makes one token call through every protection: the cooldown and an
// open breaker refuse at once; then a concurrency slot and rate tokens;
// then the call, retried after a 5xx, a timeout or a connection failure.
func (g *guard) do(ctx context.Context, call func(context.Context) (*qlik.Token, error)) (*qlik.Token, error) {
	if err := g.checkCooldown(ctx); err != nil {
		return nil, err
	}
	if g.breaker.State() == gobreaker.StateOpen {
		return nil, g.breakerOpen(gobreaker.ErrOpenState)
	}
	if isBackground(ctx) && g.waiting.Load() > 0 {
		return nil, errRefreshDeferred
	}
	release, err := g.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()

	for attempt := 0; ; attempt++ {
		tok, err := g.call(ctx, call)
		if err == nil {
			return tok, nil
		}
		switch qe := qlikStatus(err, 429); {
		case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
			return nil, g.breakerOpen(err)
		case qe != nil:
			return nil, g.startCooldown(ctx, qe)
		case !retryable(err) || attempt >= g.upstream.Retries:
			return nil, fmt.Errorf("%w: token: %w", ErrUpstream, err)
		}
		if !g.backoff(ctx, attempt) {
			return nil, fmt.Errorf("%w: token: %w", ErrUpstream, err)
		}
		g.m.UpstreamRetries.WithLabelValues(g.tenant).Inc()
		if err := g.wait(ctx); err != nil {
			return nil, err
		}
	}
}

// call makes one token request through the breaker and records it.
func (g *guard) call(ctx context.Context, call func(context.Context) (*qlik.Token, error)) (*qlik.Token, error) {
	start := g.now()
	tok, err := g.breaker.Execute(func() (*qlik.Token, error) { return call(ctx) })
	if !errors.Is(err, gobreaker.ErrOpenState) && !errors.Is(err, gobreaker.ErrTooManyRequests) {
		observeUpstream(g.m, g.tenant, "token", g.now().Sub(start), err)
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
func (g *guard) backoff(ctx context.Context, attempt int) bool {
	ceiling := g.upstream.RetryBase
	for i := 0; i < attempt && ceiling < g.upstream.RetryMax; i++ {
		ceiling *= 2
	}
	d := g.jitter(min(ceiling, g.upstream.RetryMax))
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
func (g *guard) acquire(ctx context.Context) (release func(), err error) {
	if isBackground(ctx) {
		if err := g.backgroundSlot(ctx); err != nil {
			return nil, err
		}
		if err := g.wait(ctx); err != nil {
			<-g.slots
			return nil, err
		}
		return func() { <-g.slots }, nil
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	start := time.Now()
	defer func() { g.m.UpstreamQueueWait.WithLabelValues(g.tenant).Observe(time.Since(start).Seconds()) }()
	select {
	case g.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, g.refuse(CauseQueueTimeout, ctx.Err(), 0)
	}
	release = func() { <-g.slots }
	if err := g.wait(ctx); err != nil {
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
func (g *guard) wait(ctx context.Context) error {
	if g.local == nil && g.limiter == nil {
		return nil
	}
	if isBackground(ctx) {
		return g.spare(ctx)
	}
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-callMargin))
		defer cancel()
	}
	if g.local != nil {
		if err := g.local.Wait(ctx); err != nil {
			return g.refuse(CauseQueueTimeout, err, 0)
		}
	}
	return g.waitShared(ctx)
}

// spare takes a rate token for a background call only if one is there now
// (and, shared, half the burst is unused), or defers it.
func (g *guard) spare(ctx context.Context) error {
	if g.waiting.Load() > 0 || g.local != nil && !g.local.Allow() {
		return errRefreshDeferred
	}
	if g.limiter == nil {
		return nil
	}
	ok, _, err := g.limiter.Allow(ctx, rateKey(g.tenant), g.upstream.SharedRatePerMinute, backgroundBurst(g.upstream.SharedBurst))
	switch {
	case err != nil:
		countRedisError(ctx, g.deps, "rate", err)
		return nil // as for requests: a Redis outage must not stop issuing
	case !ok:
		return errRefreshDeferred
	}
	return nil
}

// waitShared takes a call from the rate limit the replicas share in Redis,
// waiting as long as Redis says and asking again, unless the wait would
// pass ctx's deadline. When Redis fails it lets the call go: the local
// limits still hold, and a Redis outage must not stop token issuing.
func (g *guard) waitShared(ctx context.Context) error {
	if g.limiter == nil {
		return nil
	}
	for {
		ok, retry, err := g.limiter.Allow(ctx, rateKey(g.tenant), g.upstream.SharedRatePerMinute, g.upstream.SharedBurst)
		switch {
		case ctx.Err() != nil:
			return g.refuse(CauseSharedRate, ctx.Err(), retry)
		case err != nil:
			countRedisError(ctx, g.deps, "rate", err)
			return nil
		case ok:
			return nil
		}
		retry = max(retry, 10*time.Millisecond) // never a busy loop on Redis
		if deadline, has := ctx.Deadline(); has && time.Until(deadline) < retry {
			return g.refuse(CauseSharedRate, errSharedRate, retry)
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return g.refuse(CauseSharedRate, ctx.Err(), retry)
		case <-t.C:
		}
	}
}

// refuse is a 503 for a call that could not leave the queue in time, by
// cause: this process's slots and rate (CauseQueueTimeout) or the
// replicas' shared rate (CauseSharedRate); both are upstream_busy to the
// caller. Its Retry-After is at least atLeast (the shared limit's own
// wait).
func (g *guard) refuse(cause Cause, err error, atLeast time.Duration) error {
	reject(g.m, cause)
	retry := max(5*time.Second, atLeast)
	if r := g.upstream.RatePerMinute; r > 0 {
		perSecond := r / 60
		retry = max(retry, time.Duration(float64(g.upstream.Concurrency)/perSecond*float64(time.Second)))
	}
	return &UnavailableError{Cause: cause, RetryAfter: retry, Err: err}
}

func (g *guard) breakerOpen(err error) error {
	reject(g.m, CauseBreakerOpen)
	left := time.Until(time.Unix(0, g.openedAt.Load()).Add(g.upstream.BreakerOpen))
	return &UnavailableError{Cause: CauseBreakerOpen, RetryAfter: max(left, time.Second), Err: err}
}

// checkCooldown refuses while this replica, or any replica through Redis,
// has seen a 429 whose Retry-After has not passed.
func (g *guard) checkCooldown(ctx context.Context) error {
	now := g.now()
	until := time.Unix(0, g.cooldownUntil.Load())
	if !now.Before(until) && g.cooldowns != nil {
		raw, err := g.cooldowns.Get(ctx, cooldownKey(g.tenant))
		switch {
		case err == nil:
			if ms, perr := strconv.ParseInt(string(raw), 10, 64); perr == nil {
				until = time.UnixMilli(ms)
				g.noteCooldown(until)
			}
		case !errors.Is(err, cache.ErrMiss):
			countRedisError(ctx, g.deps, "get", err)
		}
	}
	if now.Before(until) {
		reject(g.m, CauseCooldown)
		return &UnavailableError{Cause: CauseCooldown, RetryAfter: until.Sub(now)}
	}
	return nil
}

// startCooldown records a 429 here and in Redis for the other replicas.
func (g *guard) startCooldown(ctx context.Context, qe *qlik.Error) error {
	d := qe.RetryAfter
	switch {
	case d <= 0:
		d = g.upstream.CooldownDefault // missing, unreadable or in the past
	case d < time.Second:
		d = time.Second
	case d > g.upstream.CooldownMax:
		d = g.upstream.CooldownMax
	}
	until := g.now().Add(d)
	g.noteCooldown(until)
	g.log.WarnContext(ctx, "tenant rate limit reached: no token calls until the cooldown ends",
		"tenant", g.tenant, "cooldown", d, "retry_after_header", qe.RetryAfter)
	if g.cooldowns != nil {
		if err := g.cooldowns.Set(ctx, cooldownKey(g.tenant), []byte(strconv.FormatInt(until.UnixMilli(), 10)), d); err != nil {
			countRedisError(ctx, g.deps, "set", err)
		}
	}
	reject(g.m, CauseCooldown)
	return &UnavailableError{Cause: CauseCooldown, RetryAfter: d, Err: qe}
}

func (g *guard) noteCooldown(until time.Time) {
	for {
		cur := g.cooldownUntil.Load()
		if until.UnixNano() <= cur || g.cooldownUntil.CompareAndSwap(cur, until.UnixNano()) {
			break
		}
	}
	g.m.UpstreamCooldownUntil.WithLabelValues(g.tenant).Set(float64(until.UnixMilli()) / 1000)
}
