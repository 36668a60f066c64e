package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// UpstreamConfig tunes how the broker protects one tenant's token endpoint
// (Qlik's Tier 2: about 100 calls a minute) and survives its bad minutes.
// Rates are per minute. Zero means zero: start from DefaultUpstreamConfig
// and change what differs.
type UpstreamConfig struct {
	// Concurrency bounds the token calls in flight to the tenant from this
	// process; more wait in a queue up to their deadline. At least 1.
	Concurrency int
	// RatePerMinute, when positive, is the token calls per minute this
	// process may make to the tenant (a token bucket); 0 means unlimited.
	// It holds without Redis; SharedRatePerMinute is the tenant-wide
	// limit.
	RatePerMinute float64
	// Burst is the token bucket's size; at least 1 when RatePerMinute is
	// set.
	Burst int
	// SharedRatePerMinute, when positive, is the token calls per minute
	// all replicas together may make to the tenant, counted by
	// Config.Limiter (Redis). A call waits for room up to its deadline;
	// one that would find none gets a 503. While Redis fails, only the
	// per-process limits hold: issuing goes on. 0 turns it off.
	SharedRatePerMinute float64
	// SharedBurst is how many calls SharedRatePerMinute lets out at once
	// after a quiet spell: in any minute the tenant sees at most
	// SharedRatePerMinute + SharedBurst calls. At least 1 when the shared
	// rate is set.
	SharedBurst int
	// Retries is how many times a call that failed with a 5xx, a timeout
	// or a connection error is retried, with full-jitter exponential
	// back-off inside the request's deadline. 0 means no retries.
	Retries int
	// RetryBase and RetryMax bound the back-off; both positive when
	// Retries is.
	RetryBase, RetryMax time.Duration
	// BreakerFailures consecutive failures open the tenant's circuit
	// breaker. At least 1.
	BreakerFailures uint32
	// BreakerOpen is how long an open breaker refuses calls before one
	// probe goes through. Positive.
	BreakerOpen time.Duration
	// CooldownDefault is the cooldown after a 429 whose Retry-After is
	// missing or unreadable; CooldownMax caps any Retry-After. Both
	// positive.
	CooldownDefault, CooldownMax time.Duration
}

// DefaultUpstreamConfig is the protection the broker runs with unless told
// otherwise: 8 calls in flight, no local rate limit (burst 8 when one is
// set), shared burst 5, 2 retries backing off from 100ms up to 2s, a
// breaker that opens after 5 consecutive failures for 30s, and 429
// cooldowns of 30s when the tenant names none, 10m at most.
func DefaultUpstreamConfig() UpstreamConfig {
	return UpstreamConfig{
		Concurrency:     8,
		Burst:           8,
		SharedBurst:     5,
		Retries:         2,
		RetryBase:       100 * time.Millisecond,
		RetryMax:        2 * time.Second,
		BreakerFailures: 5,
		BreakerOpen:     30 * time.Second,
		CooldownDefault: 30 * time.Second,
		CooldownMax:     10 * time.Minute,
	}
}

// validate reports every value that cannot work. It does not fill in
// defaults: zero means zero.
func (c UpstreamConfig) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("broker: upstream: "+format, args...))
	}
	if c.Concurrency < 1 {
		bad("Concurrency must be at least 1, got %d", c.Concurrency)
	}
	if !(c.RatePerMinute >= 0) {
		bad("RatePerMinute must not be negative, got %v", c.RatePerMinute)
	}
	if c.RatePerMinute > 0 && c.Burst < 1 {
		bad("Burst must be at least 1 with a rate, got %d", c.Burst)
	}
	if !(c.SharedRatePerMinute >= 0) || math.IsInf(c.SharedRatePerMinute, 0) {
		bad("SharedRatePerMinute must be finite and not negative, got %v", c.SharedRatePerMinute)
	}
	if c.SharedRatePerMinute > 0 && c.SharedBurst < 1 {
		bad("SharedBurst must be at least 1 with a shared rate, got %d", c.SharedBurst)
	}
	if c.Retries < 0 {
		bad("Retries must not be negative, got %d", c.Retries)
	}
	if c.Retries > 0 && (c.RetryBase <= 0 || c.RetryMax <= 0) {
		bad("RetryBase and RetryMax must be positive with retries, got %v and %v", c.RetryBase, c.RetryMax)
	}
	if c.BreakerFailures < 1 {
		bad("BreakerFailures must be at least 1")
	}
	if c.BreakerOpen <= 0 {
		bad("BreakerOpen must be positive, got %v", c.BreakerOpen)
	}
	if c.CooldownDefault <= 0 || c.CooldownMax <= 0 {
		bad("CooldownDefault and CooldownMax must be positive, got %v and %v", c.CooldownDefault, c.CooldownMax)
	}
	return errors.Join(errs...)
}

// SharedLimiter is a rate limit the replicas share. Allow takes one call
// from the limit named key, or reports how long until one could be taken.
// *cache.Redis is the implementation.
type SharedLimiter interface {
	Allow(ctx context.Context, key string, perMinute float64, burst int) (allowed bool, retryAfter time.Duration, err error)
}

var _ SharedLimiter = (*cache.Redis)(nil)

// upstream is one tenant as the broker calls it: its configuration, the
// client credentials in use, and the road to its token endpoint (a guard
// around the tenant's Issuer). It reads what a refusal means (client or
// user) by the HTTP status and a cached check of its own credentials, never
// by the tenant's error codes: every call it makes, the retry after
// re-reading a rotated secret and the check of the credentials included,
// goes through the guard.
type upstream struct {
	tenant Tenant
	road   *guard
	tracer trace.Tracer
	deps

	// client is what is known of the client credentials; kept across
	// registry reloads.
	client       *clientState
	credsMu      sync.RWMutex
	creds        qlik.Credentials
	keySwappedAt atomic.Int64 // unix nanos of reloadKey's last swap
}

func newUpstream(t Tenant, road *guard, tracer trace.Tracer, d deps) *upstream {
	return &upstream{tenant: t, road: road, tracer: tracer, deps: d, client: new(clientState), creds: t.Credentials}
}

// withTenant is u with a new configuration of the same tenant and client,
// keeping its guard's state (cooldown, breaker, limits) around the new
// configuration's Issuer. A new secret forgets that the old one was
// refused.
func (u *upstream) withTenant(t Tenant) *upstream {
	if cur := u.credentials(); t.Credentials.ClientSecret != cur.ClientSecret || !t.Credentials.Key.Equal(cur.Key) {
		u.client.badUntil.Store(0)
	}
	return &upstream{tenant: t, road: u.road.wrap(t.Issuer), tracer: u.tracer, deps: u.deps,
		client: u.client, creds: t.Credentials}
}

func (u *upstream) credentials() qlik.Credentials {
	u.credsMu.RLock()
	defer u.credsMu.RUnlock()
	return u.creds
}

// impersonate asks the tenant for a token for user, within ctx's deadline.
// While the client is known to be refused it asks nothing, unless the
// secret on disk has changed since.
func (u *upstream) impersonate(ctx context.Context, user qlik.UserLookup) (_ *qlik.Token, err error) {
	ctx, span := u.tracer.Start(ctx, spanUpstream, trace.WithAttributes(attrTenant.String(u.tenant.ID)))
	defer func() { endSpan(span, spanOutcome(err), err) }()
	if err := u.stillRefused(ctx); err != nil {
		return nil, err
	}
	tok, err := u.road.ImpersonationToken(ctx, u.credentials(), user, u.tenant.Scope)
	if qe := refusal(err); qe != nil {
		tok, err = u.refused(ctx, user, qe)
	}
	if err == nil {
		u.noteExpiry(ctx, tok)
	}
	return tok, err
}

// revoke revokes an access token at the tenant.
func (u *upstream) revoke(ctx context.Context, access string) error {
	if err := u.road.Revoke(ctx, u.credentials(), access); err != nil {
		return fmt.Errorf("%w: revoke: %w", ErrUpstream, err)
	}
	return nil
}

// qlikStatus returns the tenant's answer beneath err when it has that HTTP
// status, and nil otherwise.
func qlikStatus(err error, code int) *qlik.Error {
	var qe *qlik.Error
	if errors.As(err, &qe) && qe.StatusCode == code {
		return qe
	}
	return nil
}

// refusal returns the tenant's answer beneath err when it is a 400 or a
// 401: the statuses with which Qlik refuses either the client (a wrong
// secret is a 400 "OAUTH-14" in the one public real answer, a 401 in the
// schema) or the request or user (a bad lookup is a 400, an unknown user
// likely a 401). Which one only a check of the credentials can tell.
func refusal(err error) *qlik.Error {
	if qe := qlikStatus(err, 400); qe != nil {
		return qe
	}
	return qlikStatus(err, 401)
}

// refused reads a 400 or 401 to an impersonation request. The secret may
// have been rotated: re-read it and retry once when it changed. Otherwise,
// when the credentials were checked good lately, the refusal is the
// user's (or the request's); when not, one client_credentials call
// (shared by concurrent callers, remembered) tells a refused client from a
// refused user.
func (u *upstream) refused(ctx context.Context, user qlik.UserLookup, qe *qlik.Error) (*qlik.Token, error) {
	if u.reloadSecret(ctx) || u.reloadKey(ctx) {
		tok, err := u.road.ImpersonationToken(ctx, u.credentials(), user, u.tenant.Scope)
		again := refusal(err)
		if again == nil {
			if err == nil { // the new secret works
				u.client.okUntil.Store(u.now().Add(credsGoodFor).UnixNano())
			}
			return tok, err
		}
		qe = again
	}
	if u.client.knownGood(u.now()) {
		return nil, u.userRefused(qe)
	}
	good, checkErr := u.checkCredentials(ctx)
	switch {
	case checkErr != nil:
		// The check itself got no answer (cooldown, breaker, 5xx): say
		// what the tenant said to the request.
		var ue *UnavailableError
		if errors.As(checkErr, &ue) {
			return nil, checkErr
		}
		return nil, fmt.Errorf("%w: token: %w", ErrUpstream, qe)
	case !good:
		return nil, u.clientRefused(ctx, qe)
	}
	return nil, u.userRefused(qe)
}

// userRefused is a refusal with the client's credentials known good: a
// 401 means the tenant has no such (active) user; a 400 a request the
// tenant will not take for this user (scope, lookup), which no operator
// action on the broker's side fixes either, so it stays a 502.
func (u *upstream) userRefused(qe *qlik.Error) error {
	if qe.StatusCode == 401 {
		reject(u.m, CauseUnknownUser)
		return fmt.Errorf("%w: %w", ErrUnknownUser, qe)
	}
	return fmt.Errorf("%w: token: %w", ErrUpstream, qe)
}

// clientRefused records and reports a tenant answer that the broker's own
// client credentials are wrong: an error log with the tenant's traceId,
// the invalid-credentials metric (which the alert reads) and, for a while,
// no more calls with the same secret.
func (u *upstream) clientRefused(ctx context.Context, qe *qlik.Error) error {
	u.client.badUntil.Store(u.now().Add(credsBadFor).UnixNano())
	reject(u.m, CauseInvalidClient)
	u.m.UpstreamInvalidCredentials.WithLabelValues(u.tenant.ID).Inc()
	u.log.ErrorContext(ctx, "the tenant refused the broker's OAuth client credentials; check the client id and secret",
		"tenant", u.tenant.ID, "client_id", u.credentials().ClientID, "status", qe.StatusCode, "code", qe.Code,
		"trace_id", qe.TraceID, "quiet_for", credsBadFor)
	return fmt.Errorf("%w: %w", ErrInvalidClient, qe)
}

// reloadSecret re-reads the client secret (a rotated Kubernetes secret
// file) and reports whether it changed. A change forgets that the old
// secret was refused.
func (u *upstream) reloadSecret(ctx context.Context) bool {
	if u.tenant.ReloadSecret == nil {
		return false
	}
	secret, err := u.tenant.ReloadSecret()
	if err != nil {
		u.log.ErrorContext(ctx, "re-reading the client secret failed", "tenant", u.tenant.ID, "err", err)
		return false
	}
	u.credsMu.Lock()
	defer u.credsMu.Unlock()
	if secret == "" || secret == u.creds.ClientSecret {
		return false
	}
	u.creds.ClientSecret = secret
	u.client.badUntil.Store(0)
	u.log.InfoContext(ctx, "client secret changed on disk; using the new one", "tenant", u.tenant.ID)
	return true
}
