package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// Token returns a token acting for the identity's Qlik user with at least
// MinTokenTTL to live. A token inside its refresh-ahead window is returned
// at once while a background refresh replaces it.
func (b *Broker) Token(ctx context.Context, id session.Identity) (qlik.Token, error) {
	c, err := b.token(ctx, id)
	if err != nil {
		return qlik.Token{}, err
	}
	return c.tok, nil
}

// token is Token returning the cached form, which the HTTP API answers
// from without encoding anything.
func (b *Broker) token(ctx context.Context, id session.Identity) (*cached, error) {
	up, user, err := b.resolve(ctx, id)
	if err != nil {
		return nil, err
	}
	k := b.keysFor(up, user)
	// The session's groups are synced before any answer (groups.go): a
	// token minted after a changed claim is minted after the sync. One
	// that could not sync answers the token the user holds, if any.
	var unsynced error
	if id.HasGroups && up.tenant.Groups != nil {
		synced, err := b.syncGroups(ctx, up, k, user, id.Groups)
		switch {
		case err != nil:
			unsynced = err
			noteGroups(ctx, hdrGroupsPending)
		case synced:
			noteGroups(ctx, hdrGroupsSynced)
		}
	}
	now := b.now()
	if c, ok := b.fromL1(ctx, k.token, now); ok {
		if b.shared != nil {
			if gen := b.l1Gen.Load(); c.verified.Load() != gen {
				c = b.checkSuspect(ctx, up, k, c, gen)
			} else if c.checkDue(now, b.l1TTL) {
				c = b.recheck(ctx, k, c, now)
			}
		}
		if c != nil {
			b.annotate(ctx, up.tenant.ID, metrics.TierL1)
			b.maybeRefresh(up, k, user, c, now)
			return c, nil
		}
	}
	if c, ok := b.fromShared(ctx, k.token, true); ok {
		b.annotate(ctx, up.tenant.ID, metrics.TierRedis)
		b.putL1(k.token, c)
		b.maybeRefresh(up, k, user, c, now)
		return c, nil
	}
	b.annotate(ctx, up.tenant.ID, tierNone)
	if unsynced != nil {
		return nil, unsynced
	}
	// A miss may cost a token call: not for a user the tenant refused a
	// moment ago, and only inside the caller's budget.
	if err := b.remembered(ctx, k); err != nil {
		return nil, err
	}
	if err := b.spendBudget(ctx); err != nil {
		return nil, err
	}
	ch := b.flight.DoChan(k.token, func() (any, error) {
		// Detached from the first caller: its going away must not fail
		// the others sharing this call. Values (trace ids) are kept.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
		defer cancel()
		return b.fill(fctx, up, k, user)
	})
	select {
	case r := <-ch:
		if r.Shared {
			b.m.Coalesced.Inc()
		}
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*cached), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("broker: waiting for token: %w", ctx.Err())
	}
}

// fill gets a token for a cold key: from another replica that holds the
// lease, or from the tenant under the lease. Without Shared, or while Redis
// fails, the process-level singleflight around it is the only coalescing.
func (b *Broker) fill(ctx context.Context, up *upstream, k keys, user qlik.UserLookup) (tok *cached, err error) {
	ctx, span := b.tracer.Start(ctx, spanFill, trace.WithAttributes(attrTenant.String(up.tenant.ID)))
	defer func() { endSpan(span, spanOutcome(err), err) }() // after the recover below
	defer func() {
		// DoChan re-panics in a fresh goroutine, which would kill the
		// process: turn a panic into an error for every waiter instead.
		if p := recover(); p != nil {
			b.log.Error("token fetch panicked", "panic", fmt.Sprint(p))
			err = ErrFetchPanicked
		}
	}()
	if b.shared == nil {
		return b.mint(ctx, up, k, user)
	}
	waited := false
	for delay := b.leasePoll; ; delay = min(2*delay, 250*time.Millisecond) {
		// The caller has just missed Redis; look again only after waiting.
		if waited {
			if tok, ok := b.fromShared(ctx, k.token, false); ok {
				b.m.Leases.WithLabelValues(metrics.LeaseWaited).Inc()
				span.SetAttributes(attrLease.String(metrics.LeaseWaited))
				b.putL1(k.token, tok)
				return tok, nil
			}
		}
		lease, ok, err := b.shared.TryLock(ctx, k.lease(), b.leaseTTL)
		if err != nil {
			b.redisError(ctx, "lock", err)
			b.m.Leases.WithLabelValues(metrics.LeaseError).Inc()
			span.SetAttributes(attrLease.String(metrics.LeaseError))
			return b.mint(ctx, up, k, user)
		}
		if ok {
			result := metrics.LeaseAcquired
			if waited {
				result = metrics.LeaseTakenOver
			}
			b.m.Leases.WithLabelValues(result).Inc()
			span.SetAttributes(attrLease.String(result))
			return b.mintUnderLease(ctx, up, lease, k, user)
		}
		waited = true
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: waiting for another replica's token: %w", ErrUpstream, ctx.Err())
		case <-t.C:
		}
	}
}

// mintUnderLease fetches while holding the lease, keeping it alive for as
// long as the tenant takes, and releases it after storing the result.
func (b *Broker) mintUnderLease(ctx context.Context, up *upstream, lease *cache.Lease, k keys, user qlik.UserLookup) (*cached, error) {
	defer b.holdLease(ctx, lease)()
	// The holder before us may have stored a token just before we locked.
	if tok, ok := b.fromShared(ctx, k.token, false); ok {
		b.putL1(k.token, tok)
		return tok, nil
	}
	return b.mint(ctx, up, k, user)
}

// holdLease keeps lease alive while its holder works; the func it returns
// stops that and releases the lease (even when ctx is done).
func (b *Broker) holdLease(ctx context.Context, lease *cache.Lease) (release func()) {
	stop := lease.KeepAlive(ctx, b.leaseTTL)
	return func() {
		stop()
		if err := lease.Release(context.WithoutCancel(ctx)); err != nil {
			b.redisError(ctx, "release", err)
		}
	}
}

// mint calls the tenant (through its guard) and stores the result in both
// tiers.
func (b *Broker) mint(ctx context.Context, up *upstream, k keys, user qlik.UserLookup) (*cached, error) {
	since := b.logoutMark(ctx, k)
	got, err := up.impersonate(ctx, user)
	if err != nil {
		b.remember(ctx, k, err)
		return nil, err
	}
	tok := *got
	ttl := b.cacheTTL(tok, b.now())
	if ttl <= 0 {
		return nil, ErrTokenTooShortLived
	}
	if b.shared != nil {
		if err := b.shared.Set(ctx, k.token, b.seal(k.token, tok), ttl); err != nil {
			// Still serve it: a cache failure costs quota, not users.
			b.redisError(ctx, "set", err)
		}
	}
	c := b.newCached(k.token, tok)
	b.putL1(k.token, c)
	if b.loggedOutSince(ctx, k, since) {
		return nil, b.discard(ctx, up, k, tok)
	}
	return c, nil
}

// cacheTTL is how long tok stays servable: until MinTokenTTL before its
// expiry (after the skew).
func (b *Broker) cacheTTL(tok qlik.Token, now time.Time) time.Duration {
	return tok.ExpiresAt.Add(-b.skew - b.minTTL).Sub(now)
}

func (b *Broker) servable(tok qlik.Token, now time.Time) bool {
	return tok.AccessToken != "" && b.cacheTTL(tok, now) > 0
}

// Reissue drops the identity's cached token if it is still stale (the
// tenant refused it: revoked or expired early) and returns a fresh one.
// Concurrent callers holding the same stale token share one new token.
func (b *Broker) Reissue(ctx context.Context, id session.Identity, stale string) (qlik.Token, error) {
	return b.reissue(ctx, id, stale, false)
}

// reissue is Reissue. confirmed says the tenant itself refused stale (the
// re-ask's check at the tenant), so a token minted for an earlier refusal
// being refused too is news, not a request the tenant refuses whatever the
// token: the again-guard does not apply.
func (b *Broker) reissue(ctx context.Context, id session.Identity, stale string, confirmed bool) (qlik.Token, error) {
	up, user, err := b.resolve(ctx, id)
	if err != nil {
		return qlik.Token{}, err
	}
	k := b.keysFor(up, user)
	if again, ok := b.reissued.Get(k.token); ok && again == stale && !confirmed {
		// The token minted for the last 401 got one too: the tenant
		// refuses the request, not the token. Another token would not
		// help, and would cost a token call per request.
		return qlik.Token{}, errRefusedAgain
	}
	if c, ok := b.getL1(k.token); ok && c.tok.AccessToken == stale {
		b.deleteL1(k.token)
	}
	if b.shared != nil {
		if c, ok := b.fromShared(ctx, k.token, false); ok && c.tok.AccessToken == stale {
			_ = b.dropShared(ctx, k.token) // counted; the refetch below goes on
		}
	}
	tok, err := b.Token(ctx, id)
	if err == nil {
		_ = b.reissued.Set(k.token, tok.AccessToken, max(b.refusalTTL, defaultRefusalTTL))
	}
	return tok, err
}

// fromL1 returns a servable token from the in-process cache.
func (b *Broker) fromL1(ctx context.Context, key string, now time.Time) (c *cached, ok bool) {
	if b.traced { // a no-op span would cost an allocation on every hit
		_, span := b.tracer.Start(ctx, spanL1)
		defer func() { endLookup(span, lookupResult(ok)) }()
	}
	if c, ok := b.getL1(key); ok && b.servable(c.tok, now) {
		b.l1Hit.Inc()
		return c, true
	}
	b.l1Miss.Inc()
	return nil, false
}

func (b *Broker) getL1(key string) (*cached, bool) {
	if b.l1 == nil {
		return nil, false
	}
	return b.l1.Get(key)
}

func (b *Broker) deleteL1(key string) {
	if b.l1 != nil {
		b.l1.Delete(key)
	}
}

// fromShared returns a servable token from Redis. Errors, and values that
// fail to unseal, are misses: the tenant is the source of truth. lookup
// says whether this is a request's lookup, which is counted, or a re-check
// while filling, which is not (so one bad value counts once).
func (b *Broker) fromShared(ctx context.Context, key string, lookup bool) (*cached, bool) {
	c, found := b.lookupShared(ctx, key, lookup)
	return c, found == sharedHit
}

// What lookupShared found in Redis.
const (
	sharedHit      = iota // a servable token
	sharedAbsent          // no value under the key
	sharedFailed          // Redis did not answer (error, breaker open)
	sharedUnusable        // a value that does not unseal, decode or serve
)

// lookupShared is fromShared saying why there is no token.
func (b *Broker) lookupShared(ctx context.Context, key string, lookup bool) (*cached, int) {
	if b.shared == nil {
		return nil, sharedFailed
	}
	span := noSpan
	if b.traced { // the no-op tracer's Start allocates a context
		ctx, span = b.tracer.Start(ctx, spanRedis, trace.WithSpanKind(trace.SpanKindClient))
	}
	result := metrics.ResultMiss
	defer func() {
		endLookup(span, result)
		if lookup {
			b.redisLookups[result].Inc()
		}
	}()
	raw, err := b.shared.Get(ctx, key)
	switch {
	case errors.Is(err, cache.ErrMiss):
		return nil, sharedAbsent
	case err != nil:
		result = metrics.ResultError
		b.redisError(ctx, "get", err)
		return nil, sharedFailed
	}
	if b.keyring != nil {
		if raw, err = b.keyring.Open([]byte(key), raw); err != nil {
			if lookup {
				b.m.UnsealFailures.WithLabelValues(cache.UnsealReason(err)).Inc()
				b.log.WarnContext(ctx, "cached token failed to unseal; treating it as a miss", "reason", cache.UnsealReason(err))
			}
			return nil, sharedUnusable
		}
	}
	tok, err := decodeToken(raw)
	if err != nil || !b.servable(tok, b.now()) {
		return nil, sharedUnusable
	}
	result = metrics.ResultHit
	return b.newCached(key, tok), sharedHit
}

// putL1 keeps tok in the in-process cache for as long as it is servable;
// with Redis, L1TTL bounds how long it is served without asking Redis
// again (cached.checkAt), not how long it is kept, so a Redis outage never
// costs a token anyone holds. It does not replace a token that lives
// longer: a request that read Redis just before a refresh landed must not
// put the old token back.
func (b *Broker) putL1(key string, c *cached) {
	if b.l1 == nil {
		return
	}
	if cur, ok := b.l1.Get(key); ok && cur.tok.ExpiresAt.After(c.tok.ExpiresAt) {
		return
	}
	if ttl := b.cacheTTL(c.tok, b.now()); ttl > 0 {
		_ = b.l1.Set(key, c, ttl) // only fails for ttl <= 0
	}
}

func (b *Broker) seal(key string, tok qlik.Token) []byte {
	raw := encodeToken(tok)
	if b.keyring == nil {
		return raw
	}
	return b.keyring.Seal([]byte(key), raw)
}

func (b *Broker) redisError(ctx context.Context, op string, err error) {
	countRedisError(ctx, b.deps, op, err)
	b.holdHeals(err)
}
