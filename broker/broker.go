// Package broker is the service: it turns a verified session identity into a
// valid Qlik access token for that user, from the cache when it can and from
// the tenant when it must, and serves that over HTTP (routes, CORS/origin
// policy, error mapping).
//
// Tokens live in two tiers: an in-process L1 (always) and Redis shared by the
// replicas (optional). A cold key costs one upstream call across all
// replicas: one request per process gets through (singleflight), and across
// processes a Redis lease decides who calls the tenant while the others wait
// for the value. A token entering its refresh-ahead window is still served
// while one background refresh per key replaces it.
package broker

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// Issuer mints and revokes user-impersonation tokens at one tenant.
// *qlik.Client is the production implementation.
type Issuer interface {
	ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error)
	// ClientCredentialsToken checks the client's own credentials when a
	// 401 does not say whether the client or the user was refused.
	ClientCredentialsToken(ctx context.Context, creds qlik.Credentials, scope string) (*qlik.Token, error)
	Revoke(ctx context.Context, creds qlik.Credentials, accessToken string) error
}

var _ Issuer = (*qlik.Client)(nil)

// Store keeps opaque values with a time to live; a miss is cache.ErrMiss.
type Store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	Delete(ctx context.Context, key string) error
}

// Shared is the store the replicas share, with the coordination the broker
// needs: leases for cold keys and refreshes, and L1 invalidation broadcasts.
// cache.Redis is the implementation.
type Shared interface {
	Store
	TryLock(ctx context.Context, key string, ttl time.Duration) (*cache.Lease, bool, error)
	PublishInvalidation(ctx context.Context, key string) error
	SubscribeInvalidations(ctx context.Context, fn func(key string)) error
}

var _ Shared = (*cache.Redis)(nil)

// Tenant is one Qlik Cloud tenant and the impersonation client used there.
type Tenant struct {
	// ID names the tenant in cache keys, metrics and logs. It comes from
	// configuration, so its set of values is bounded.
	ID          string
	Issuer      Issuer
	Credentials qlik.Credentials
	Scope       string
	// ReloadSecret, when set, re-reads the client secret (from its file)
	// after the tenant answers 401, so a rotated secret is picked up
	// without a restart.
	ReloadSecret func() (string, error)
	// URL is the tenant's address, for logs and the reverse proxy.
	URL string
	// UserLookup, when set, overrides the session's lookup field for this
	// tenant: userId, subject or email.
	UserLookup string
	// ProxyPaths are the path prefixes /v1/qlik/* may reach at this
	// tenant; empty means DefaultProxyPaths.
	ProxyPaths []string
	// AllowedOrigins are browser origins allowed for this tenant's
	// sessions, on top of the API's global list.
	AllowedOrigins []string
	// Directory maps emails to Qlik user ids for sessions that name users
	// by email; nil refuses such sessions.
	Directory Directory
}

// Directory finds Qlik users by email (the users API, with an admin
// client's credentials). UserIDByEmail fails with ErrUnknownUser when the
// tenant has no such user and may not create one.
type Directory interface {
	UserIDByEmail(ctx context.Context, email string) (string, error)
}

// Config holds the Broker's dependencies and tuning. Zero durations take the
// defaults noted.
type Config struct {
	// Tenants are the tenants served; a session picks one by its tenant
	// claim, or gets the only one when there is exactly one. SetTenants
	// replaces them at run time.
	Tenants []Tenant
	// L1MaxEntries bounds the in-process cache (L1) of tokens; default
	// cache.DefaultMaxEntries.
	L1MaxEntries int
	// NoL1 turns the in-process token cache off, which only makes sense
	// with Shared (benchmarks of the Redis path).
	NoL1 bool
	// L1TTL caps how long a token stays in L1 when Shared is set, bounding
	// how stale a replica can be if it misses an invalidation. Default 5m.
	L1TTL time.Duration
	// Shared is Redis, or nil to run on L1 alone. When it is also a
	// SharedLimiter (as *cache.Redis is), Upstream.SharedRate is counted
	// there.
	Shared Shared
	// Keyring seals values in Shared and keys the HMAC of key names. Nil
	// stores plaintext and names keys by a plain SHA-256.
	Keyring *cache.Keyring
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TokenSkew is subtracted from every expires_at, for clock skew with
	// the tenant. Default 60s.
	TokenSkew time.Duration
	// MinTokenTTL is the least remaining life (after the skew) a token may
	// have when handed out; a request never gets one with less. Default 10m.
	MinTokenTTL time.Duration
	// RefreshAhead is the window before expiry (after the skew) in which a
	// served token is replaced in the background. Must exceed MinTokenTTL.
	// Default 1h.
	RefreshAhead time.Duration
	// FetchTimeout bounds one fill of a cold key, waiting for another
	// replica's lease included. It runs detached from the request that
	// started it, so a caller going away does not fail the others. Default
	// 15s.
	FetchTimeout time.Duration
	// LeaseTTL is the lease on a key while one replica fetches it; it is
	// kept alive while the fetch runs and lets another replica take over
	// this long after the holder dies. Default 5s.
	LeaseTTL time.Duration
	// LeasePoll is the first wait between looks for another replica's
	// result; it doubles up to 250ms. Default 20ms.
	LeasePoll time.Duration
	// Upstream protects the tenant: cooldowns, retries, breaker, limits.
	Upstream UpstreamConfig
	// Tracer starts the spans of cache lookups, fills and upstream calls;
	// nil means no tracing, which costs nothing on a cached token.
	Tracer trace.Tracer
}

// Broker hands out cached user-impersonation tokens.
type Broker struct {
	tenants      atomic.Pointer[tenantSet]
	upstreamCfg  UpstreamConfig
	l1           *cache.Memory[*cached] // nil when turned off
	emails       *cache.Memory[string]  // email -> Qlik user id
	names        nameCache
	l1TTL        time.Duration
	shared       Shared
	limiter      SharedLimiter // nil: no shared rate limit
	keyring      *cache.Keyring
	nameKey      []byte
	m            *metrics.Metrics
	log          *slog.Logger
	now          func() time.Time
	skew         time.Duration
	minTTL       time.Duration
	refreshAhead time.Duration
	fetchTimeout time.Duration
	leaseTTL     time.Duration
	leasePoll    time.Duration
	tracer       trace.Tracer
	traced       bool // tracer is not the no-op one

	flight singleflight.Group
	hmacs  sync.Pool // hash.Hash: HMAC-SHA256 keyed with nameKey

	l1Hit, l1Miss prometheus.Counter            // resolved once: the hot path
	redisLookups  map[string]prometheus.Counter // by result, resolved once

	// Background refreshes: one per key at a time, with a back-off after
	// a failed or skipped one.
	refreshMu  sync.Mutex
	refreshing map[string]time.Time // key -> not before (zero while running)
	bg         sync.WaitGroup
	bgCtx      context.Context
	bgCancel   context.CancelFunc
}

// Sentinel errors of the broker; the HTTP layer maps them to statuses.
var (
	// ErrUpstream wraps every failed call to the tenant; errors.As finds
	// the *qlik.Error or network error beneath it.
	ErrUpstream = errors.New("broker: upstream call failed")
	// ErrTokenTooShortLived means the tenant issued a token with less than
	// MinTokenTTL to live, so it cannot be served.
	ErrTokenTooShortLived = errors.New("broker: tenant issued a token that expires too soon")
	// ErrFetchPanicked means the upstream call panicked; the panic is logged.
	ErrFetchPanicked = errors.New("broker: token fetch panicked")
)

// New checks cfg and returns a Broker. Call Close to stop its background
// refreshes.
func New(cfg Config) (*Broker, error) {
	b := &Broker{
		upstreamCfg:  cfg.Upstream.withDefaults(),
		l1TTL:        orDefault(cfg.L1TTL, 5*time.Minute),
		shared:       cfg.Shared,
		keyring:      cfg.Keyring,
		m:            cfg.Metrics,
		log:          cfg.Logger,
		now:          cfg.Now,
		skew:         orDefault(cfg.TokenSkew, 60*time.Second),
		minTTL:       orDefault(cfg.MinTokenTTL, 10*time.Minute),
		refreshAhead: orDefault(cfg.RefreshAhead, time.Hour),
		fetchTimeout: orDefault(cfg.FetchTimeout, 15*time.Second),
		leaseTTL:     orDefault(cfg.LeaseTTL, 5*time.Second),
		leasePoll:    orDefault(cfg.LeasePoll, 20*time.Millisecond),
		refreshing:   make(map[string]time.Time),
	}
	var errs []error
	if cfg.NoL1 && b.shared == nil {
		errs = append(errs, errors.New("broker: needs an L1 store, a shared store or both"))
	}
	if b.m == nil {
		errs = append(errs, errors.New("broker: metrics is nil"))
	}
	if b.upstreamCfg.SharedRate > 0 {
		if l, ok := b.shared.(SharedLimiter); ok {
			b.limiter = l
		} else {
			errs = append(errs, errors.New("broker: a shared upstream rate needs a Shared store that is a SharedLimiter (Redis)"))
		}
	}
	if b.refreshAhead <= b.minTTL {
		errs = append(errs, fmt.Errorf("broker: refresh-ahead window %s must exceed the minimum token TTL %s", b.refreshAhead, b.minTTL))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.keyring != nil {
		b.nameKey = b.keyring.NameKey()
	}
	memOpts := cache.MemoryOptions{MaxEntries: cfg.L1MaxEntries, Now: b.now}
	if !cfg.NoL1 {
		b.l1 = cache.NewMemory[*cached](memOpts)
	}
	b.emails = cache.NewMemory[string](memOpts)
	b.names.max = memOpts.MaxEntries
	if b.names.max <= 0 {
		b.names.max = cache.DefaultMaxEntries
	}
	b.hmacs.New = func() any { return hmac.New(sha256.New, b.nameKey) }
	b.l1Hit = b.m.CacheLookups.WithLabelValues(metrics.TierL1, metrics.ResultHit)
	b.l1Miss = b.m.CacheLookups.WithLabelValues(metrics.TierL1, metrics.ResultMiss)
	if b.shared != nil {
		b.redisLookups = make(map[string]prometheus.Counter)
		for _, r := range []string{metrics.ResultHit, metrics.ResultMiss, metrics.ResultError} {
			b.redisLookups[r] = b.m.CacheLookups.WithLabelValues(metrics.TierRedis, r)
		}
	}
	b.tracer, b.traced = newTracer(cfg.Tracer)
	if err := b.SetTenants(cfg.Tenants); err != nil {
		return nil, err
	}
	b.bgCtx, b.bgCancel = context.WithCancel(context.Background())
	return b, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Close stops background refreshes and waits for them.
func (b *Broker) Close() {
	b.bgCancel()
	b.bg.Wait()
}

// Run listens for other replicas' invalidations and drops those keys from
// L1, until ctx is done. Without Shared it just waits for ctx.
func (b *Broker) Run(ctx context.Context) error {
	if b.shared == nil {
		<-ctx.Done()
		return nil
	}
	err := b.shared.SubscribeInvalidations(ctx, func(key string) {
		b.deleteL1(key)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// keys are the Redis names of one user's entries; they share a hash tag,
// so they live in one Cluster slot. Only the token's name is kept (it is
// remembered for every cached user); the lease name is only needed on a
// miss, so it is built then.
type keys struct {
	token string // qtb:tok:<tenant>:{<hash>}
}

// lease is qtb:lock:<tenant>:{<hash>}.
func (k keys) lease() string { return "qtb:lock:" + strings.TrimPrefix(k.token, "qtb:tok:") }

// keysFor names the cache entries of one user of one client at one tenant.
// The user value is HMACed (with the keyring's name key when sealing is on)
// so no raw identifier reaches the store. Names are remembered: a user asks
// many times per token lifetime, and the HMAC was 7% of an L1 hit's CPU.
func (b *Broker) keysFor(up *upstream, user qlik.UserLookup) keys {
	nk := nameKey{tenant: up.tenant.ID, client: up.tenant.Credentials.ClientID, scope: up.tenant.Scope, field: user.Field, value: user.Value}
	if k, ok := b.names.get(nk); ok {
		return k
	}
	name := append(append(make([]byte, 0, 8+len(up.tenant.ID)+hashTagLen), "qtb:tok:"...), up.tenant.ID...)
	k := keys{token: string(b.appendHashTag(name, up.tenant.Credentials.ClientID, user.Field, user.Value, up.tenant.Scope))}
	b.names.put(nk, k)
	return k
}

// nameKey is what a user's key names are derived from.
type nameKey struct{ tenant, client, scope, field, value string }

// nameCache remembers key names. It is bounded like L1 and simply starts
// over when full: a name costs one HMAC to derive again.
type nameCache struct {
	max int
	mu  sync.RWMutex
	m   map[nameKey]keys
}

func (c *nameCache) get(nk nameKey) (keys, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	k, ok := c.m[nk]
	return k, ok
}

func (c *nameCache) put(nk nameKey, k keys) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= c.max {
		c.m = make(map[nameKey]keys)
	}
	c.m[nk] = k
}

// hashTagLen is the length of a hash tag: ":{" + base64 of 32 bytes + "}".
const hashTagLen = 2 + 43 + 1

// hashTag is ":{<HMAC of parts>}", the part of a key name that identifies
// a user without revealing them, and pins their keys to one Cluster slot.
func (b *Broker) hashTag(parts ...string) string {
	var buf [hashTagLen]byte
	return string(b.appendHashTag(buf[:0], parts...))
}

// appendHashTag appends hashTag(parts...) to dst. The HMAC states are
// pooled.
func (b *Broker) appendHashTag(dst []byte, parts ...string) []byte {
	h := b.hmacs.Get().(hash.Hash)
	defer b.hmacs.Put(h)
	h.Reset()
	// One Write of the parts, each ended by a 0 byte: writing them one by
	// one would copy each string (hmac has no WriteString).
	var buf [256]byte
	msg := buf[:0]
	for _, part := range parts {
		msg = append(append(msg, part...), 0)
	}
	h.Write(msg)
	var sum [sha256.Size]byte
	dst = append(dst, ":{"...)
	dst = base64.RawURLEncoding.AppendEncode(dst, h.Sum(sum[:0]))
	return append(dst, '}')
}

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
	now := b.now()
	if c, ok := b.fromL1(ctx, k.token, now); ok {
		b.annotate(ctx, up.tenant.ID, metrics.TierL1)
		b.maybeRefresh(up, k, user, c, now)
		return c, nil
	}
	if c, ok := b.fromShared(ctx, k.token, true); ok {
		b.annotate(ctx, up.tenant.ID, metrics.TierRedis)
		b.putL1(k.token, c)
		b.maybeRefresh(up, k, user, c, now)
		return c, nil
	}
	b.annotate(ctx, up.tenant.ID, tierNone)
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
	stop := lease.KeepAlive(ctx, b.leaseTTL)
	defer func() {
		stop()
		if err := lease.Release(context.WithoutCancel(ctx)); err != nil {
			b.redisError(ctx, "release", err)
		}
	}()
	// The holder before us may have stored a token just before we locked.
	if tok, ok := b.fromShared(ctx, k.token, false); ok {
		b.putL1(k.token, tok)
		return tok, nil
	}
	return b.mint(ctx, up, k, user)
}

// mint calls the tenant and stores the result in both tiers.
func (b *Broker) mint(ctx context.Context, up *upstream, k keys, user qlik.UserLookup) (*cached, error) {
	got, err := up.impersonate(ctx, user)
	if err != nil {
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

// refreshAt is when tok's background refresh is due. Each token gets a
// point spread uniformly over the first half of its window (from a hash of
// its key and expiry, so every replica computes the same point): keys
// cached together do not refresh together, and a failed refresh has the
// second half of the window to succeed before anyone has to wait.
func (b *Broker) refreshAt(key string, tok qlik.Token) time.Time {
	h := fnv.New64a()
	h.Write([]byte(key))
	var exp [8]byte
	u := uint64(tok.ExpiresAt.UnixNano())
	for i := range exp {
		exp[i] = byte(u >> (8 * i))
	}
	h.Write(exp[:])
	frac := float64(h.Sum64()>>11) / (1 << 53)
	spread := (b.refreshAhead - b.minTTL) / 2
	start := tok.ExpiresAt.Add(-b.skew - b.refreshAhead)
	return start.Add(time.Duration(frac * float64(spread)))
}

// maybeRefresh starts the background refresh of a served token once it is
// due, at most one per key at a time in this process.
func (b *Broker) maybeRefresh(up *upstream, k keys, user qlik.UserLookup, c *cached, now time.Time) {
	if now.Before(c.refreshAt) {
		return
	}
	b.refreshMu.Lock()
	notBefore, busy := b.refreshing[k.token]
	if busy && (notBefore.IsZero() || now.Before(notBefore)) {
		b.refreshMu.Unlock()
		return
	}
	b.refreshing[k.token] = time.Time{}
	b.bg.Add(1)
	b.refreshMu.Unlock()

	go func() {
		defer b.bg.Done()
		ctx, cancel := context.WithTimeout(b.bgCtx, b.fetchTimeout)
		defer cancel()
		ctx, span := b.tracer.Start(ctx, spanRefresh, trace.WithAttributes(attrTenant.String(up.tenant.ID)))
		result, err := b.refresh(ctx, up, k, user, c.tok)
		endSpan(span, result, err)
		b.m.Refreshes.WithLabelValues(result).Inc()

		b.refreshMu.Lock()
		defer b.refreshMu.Unlock()
		switch result {
		case metrics.RefreshRefreshed, metrics.RefreshAdopted:
			delete(b.refreshing, k.token)
		case metrics.RefreshSkipped:
			// Another replica is on it; look again shortly to adopt.
			b.refreshing[k.token] = b.now().Add(time.Second)
		default:
			b.log.Warn("background token refresh failed; the cached token is still served", "tenant", up.tenant.ID, "err", err)
			wait := 30 * time.Second
			var ue *UnavailableError
			if errors.As(err, &ue) {
				wait = max(wait, ue.RetryAfter)
			}
			b.refreshing[k.token] = b.now().Add(wait)
		}
	}()
}

// refresh replaces old with a fresh token in both tiers, unless another
// replica has done so already (adopt it) or is doing so (leave it to them).
func (b *Broker) refresh(ctx context.Context, up *upstream, k keys, user qlik.UserLookup, old qlik.Token) (string, error) {
	if b.shared != nil {
		adopt := func() bool {
			cur, ok := b.fromShared(ctx, k.token, false)
			if ok && cur.tok.ExpiresAt.After(old.ExpiresAt) {
				b.putL1(k.token, cur)
				return true
			}
			return false
		}
		if adopt() {
			return metrics.RefreshAdopted, nil
		}
		lease, ok, err := b.shared.TryLock(ctx, k.lease(), b.leaseTTL)
		switch {
		case err != nil:
			b.redisError(ctx, "lock", err) // Redis down: refresh locally
		case !ok:
			return metrics.RefreshSkipped, nil
		default:
			stop := lease.KeepAlive(ctx, b.leaseTTL)
			defer func() {
				stop()
				if err := lease.Release(context.WithoutCancel(ctx)); err != nil {
					b.redisError(ctx, "release", err)
				}
			}()
			// The previous holder may have finished just before we locked.
			if adopt() {
				return metrics.RefreshAdopted, nil
			}
		}
	}
	if _, err := b.mint(ctx, up, k, user); err != nil {
		return metrics.RefreshError, err
	}
	return metrics.RefreshRefreshed, nil
}

// Evict removes the identity's cached tokens from every tier (and every
// replica's L1) and revokes them at the tenant. With nothing cached it
// succeeds without calling the tenant.
func (b *Broker) Evict(ctx context.Context, id session.Identity) error {
	up, user, err := b.resolve(ctx, id)
	if err != nil {
		return err
	}
	k := b.keysFor(up, user)
	b.flight.Forget(k.token)

	var found []string
	if c, ok := b.getL1(k.token); ok {
		found = append(found, c.tok.AccessToken)
	}
	b.deleteL1(k.token)
	if b.shared != nil {
		if c, ok := b.fromShared(ctx, k.token, false); ok && (len(found) == 0 || found[0] != c.tok.AccessToken) {
			found = append(found, c.tok.AccessToken)
		}
		if err := b.shared.Delete(ctx, k.token); err != nil {
			b.redisError(ctx, "delete", err)
			return fmt.Errorf("broker: evict: %w", err)
		}
		if err := b.shared.PublishInvalidation(ctx, k.token); err != nil {
			b.redisError(ctx, "publish", err)
		}
	}
	var errs []error
	for _, access := range found {
		start := b.now()
		err := up.tenant.Issuer.Revoke(ctx, up.credentials(), access)
		b.observeUpstream(up.tenant.ID, "revoke", start, err)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: revoke: %w", ErrUpstream, err))
		}
	}
	return errors.Join(errs...)
}

// Reissue drops the identity's cached token if it is still stale (the
// tenant refused it: revoked or expired early) and returns a fresh one.
// Concurrent callers holding the same stale token share one new token.
func (b *Broker) Reissue(ctx context.Context, id session.Identity, stale string) (qlik.Token, error) {
	up, user, err := b.resolve(ctx, id)
	if err != nil {
		return qlik.Token{}, err
	}
	k := b.keysFor(up, user)
	if c, ok := b.getL1(k.token); ok && c.tok.AccessToken == stale {
		b.deleteL1(k.token)
	}
	if b.shared != nil {
		if c, ok := b.fromShared(ctx, k.token, false); ok && c.tok.AccessToken == stale {
			if err := b.shared.Delete(ctx, k.token); err != nil {
				b.redisError(ctx, "delete", err)
			}
			if err := b.shared.PublishInvalidation(ctx, k.token); err != nil {
				b.redisError(ctx, "publish", err)
			}
		}
	}
	return b.Token(ctx, id)
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
	if b.shared == nil {
		return nil, false
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
		return nil, false
	case err != nil:
		result = metrics.ResultError
		b.redisError(ctx, "get", err)
		return nil, false
	}
	if b.keyring != nil {
		if raw, err = b.keyring.Open([]byte(key), raw); err != nil {
			if lookup {
				b.m.UnsealFailures.WithLabelValues(cache.UnsealReason(err)).Inc()
				b.log.WarnContext(ctx, "cached token failed to unseal; treating it as a miss", "reason", cache.UnsealReason(err))
			}
			return nil, false
		}
	}
	tok, err := decodeToken(raw)
	if err != nil || !b.servable(tok, b.now()) {
		return nil, false
	}
	result = metrics.ResultHit
	return b.newCached(key, tok), true
}

// putL1 keeps tok in the in-process cache, for at most L1TTL when Redis
// is the shared source of truth. It does not replace a token that lives
// longer: a request that read Redis just before a refresh landed must not
// put the old token back.
func (b *Broker) putL1(key string, c *cached) {
	if b.l1 == nil {
		return
	}
	if cur, ok := b.l1.Get(key); ok && cur.tok.ExpiresAt.After(c.tok.ExpiresAt) {
		return
	}
	ttl := b.cacheTTL(c.tok, b.now())
	if b.shared != nil {
		ttl = min(ttl, b.l1TTL)
	}
	if ttl > 0 {
		_ = b.l1.Set(key, c, ttl) // only fails for ttl <= 0
	}
}

// cached is a token as the broker serves it. Everything a hit needs is
// computed once, when the token enters the process: the decoded token, its
// refresh point and its JSON answer (all but expires_in), so a hit costs
// no decoding, hashing or JSON encoding. It is immutable once built.
type cached struct {
	tok       qlik.Token
	refreshAt time.Time
	jsonHead  []byte // the JSON answer up to the value of "expires_in"
	text      []byte // the access token: the text/plain answer
}

func (b *Broker) newCached(key string, tok qlik.Token) *cached {
	c := &cached{tok: tok, refreshAt: b.refreshAt(key, tok), jsonHead: renderTokenHead(tok)}
	if end := accessTokenAt + len(tok.AccessToken); len(tok.AccessToken) > 0 && len(c.jsonHead) > end &&
		string(c.jsonHead[accessTokenAt:end]) == tok.AccessToken {
		// The token is in the answer unescaped (every JWT is): the text
		// answer and the token itself are that part of it, so each cached
		// user holds the token's bytes once, not three times. Nothing
		// writes to jsonHead once it is rendered.
		c.text = c.jsonHead[accessTokenAt:end:end]
		c.tok.AccessToken = unsafe.String(unsafe.SliceData(c.text), len(c.text))
	} else {
		c.text = []byte(tok.AccessToken)
	}
	return c
}

func (b *Broker) seal(key string, tok qlik.Token) []byte {
	raw := encodeToken(tok)
	if b.keyring == nil {
		return raw
	}
	return b.keyring.Seal([]byte(key), raw)
}

func (b *Broker) redisError(ctx context.Context, op string, err error) {
	b.m.RedisErrors.WithLabelValues(op).Inc()
	b.log.DebugContext(ctx, "redis operation failed", "op", op, "err", err)
}

func (b *Broker) observeUpstream(tenant, endpoint string, start time.Time, err error) {
	b.m.UpstreamRequests.WithLabelValues(tenant, endpoint, outcome(err)).Inc()
	b.m.UpstreamDuration.WithLabelValues(tenant, endpoint).Observe(b.now().Sub(start).Seconds())
}

// outcome classifies an upstream error into a bounded metrics label.
func outcome(err error) string {
	var qe *qlik.Error
	switch {
	case err == nil:
		return metrics.OutcomeSuccess
	case errors.As(err, &qe) && qe.StatusCode == 429:
		return metrics.OutcomeRateLimited
	case errors.As(err, &qe) && qe.StatusCode >= 500:
		return metrics.OutcomeServerError
	case errors.As(err, &qe):
		return metrics.OutcomeClientError
	case errors.Is(err, qlik.ErrMalformedResponse):
		return metrics.OutcomeMalformed
	case errors.Is(err, context.DeadlineExceeded):
		return metrics.OutcomeTimeout
	default:
		return metrics.OutcomeNetwork
	}
}

// The stored form of a token: a version byte, the expiry in Unix
// nanoseconds, then length-prefixed token type and scope, then the access
// token. Cheaper than JSON on every L1 hit (measured: BenchmarkToken/L1).
const codecVersion = 1

func encodeToken(t qlik.Token) []byte {
	raw := make([]byte, 0, 1+8+2+len(t.TokenType)+2+len(t.Scope)+len(t.AccessToken))
	raw = append(raw, codecVersion)
	raw = binary.BigEndian.AppendUint64(raw, uint64(t.ExpiresAt.UnixNano()))
	raw = binary.BigEndian.AppendUint16(raw, uint16(min(len(t.TokenType), 0xffff)))
	raw = append(raw, t.TokenType[:min(len(t.TokenType), 0xffff)]...)
	raw = binary.BigEndian.AppendUint16(raw, uint16(min(len(t.Scope), 0xffff)))
	raw = append(raw, t.Scope[:min(len(t.Scope), 0xffff)]...)
	return append(raw, t.AccessToken...)
}

var errBadCachedToken = errors.New("broker: malformed cached token")

func decodeToken(raw []byte) (qlik.Token, error) {
	if len(raw) < 1+8+2 || raw[0] != codecVersion {
		return qlik.Token{}, errBadCachedToken
	}
	exp := int64(binary.BigEndian.Uint64(raw[1:9]))
	rest := raw[9:]
	field := func() (string, bool) {
		if len(rest) < 2 {
			return "", false
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return "", false
		}
		v := string(rest[2 : 2+n])
		rest = rest[2+n:]
		return v, true
	}
	tokenType, ok1 := field()
	scope, ok2 := field()
	if !ok1 || !ok2 || len(rest) == 0 {
		return qlik.Token{}, errBadCachedToken
	}
	return qlik.Token{AccessToken: string(rest), TokenType: tokenType, Scope: scope, ExpiresAt: time.Unix(0, exp)}, nil
}
