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
//
// Every call that can reach a tenant's /oauth/token goes through one road,
// the tenant's guard (guard.go): an Issuer around the tenant's Issuer that
// holds its cooldown, circuit breaker, retries, rate limits and
// concurrency bound.
//
// Files by job: broker.go (Broker, Config, New, the interfaces it needs),
// fill.go (lookups, coalescing, leases), refresh.go (refresh-ahead),
// logout.go (eviction and revocation, tombstones, retries), recheck.go and
// suspect.go (L1 copies checked against Redis, and after the invalidation
// subscription comes back), refusals.go
// (remembered refusals), budget.go (per-identity token-call budgets),
// priority.go (requests before refreshes), keys.go (Redis key names),
// answer.go (the cached token ready to answer, and the stored codec),
// tenants.go (the registry), upstream.go and credentials.go (one tenant's
// client: credentials and refusals), directory.go (emails to users),
// groups.go and groupsync.go (the session's groups kept in step with the
// user's Qlik custom groups; guardwrite.go is their road for writes),
// guard.go (the road), routes.go, cors.go, instrument.go, proxy.go,
// proxyhygiene.go, service.go, limit.go, listener.go (the HTTP API), errors.go (every error
// and the one mapping to HTTP), trace.go (spans).
package broker

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// Issuer mints and revokes user-impersonation tokens at one tenant.
// *qlik.Client is the production implementation.
type Issuer interface {
	ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error)
	// ClientCredentialsToken checks the client's own credentials when a
	// 400 or 401 does not say whether the client or the user was refused.
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
	// after the tenant answers 400 or 401, and while the client is known
	// to be refused, so a rotated secret is picked up without a restart.
	ReloadSecret func() (string, error)
	// ReloadKey, when set, re-reads the client's signing key (Private Key
	// JWT) after a 401, as ReloadSecret does the secret.
	ReloadKey func() (*qlik.SigningKey, error)
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
	// Groups, when set, keeps each user's Qlik custom groups in step with
	// the session claim GroupsClaim (groups.go), with the tenant's admin
	// client; nil syncs nothing.
	Groups GroupAdmin
	// GroupsClaim names the session claim holding the user's group names
	// (what Broker.GroupsClaim tells the session verifier).
	GroupsClaim string
	// GroupsPrefix, when set, is the start of every group name the broker
	// may create, add or remove; other names are left alone.
	GroupsPrefix string
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
	// L1TTL bounds how long a token is served from L1 without asking Shared
	// again, and so how stale a replica can be if it misses an
	// invalidation. The token stays in L1 for its own life: while Shared
	// cannot answer it is still served, and a Shared that lost it gets it
	// back (recheck.go). Default 5m.
	L1TTL time.Duration
	// Shared is Redis, or nil to run on L1 alone.
	Shared Shared
	// Limiter counts Upstream.SharedRatePerMinute across the replicas
	// (*cache.Redis); nil turns the shared rate limit off. One needs the
	// other.
	Limiter SharedLimiter
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
	// Upstream protects the tenants: cooldowns, retries, breaker, limits.
	// Nil means DefaultUpstreamConfig(); in a config that is set, zero
	// means zero (Retries: 0 is no retries).
	Upstream *UpstreamConfig
	// Tracer starts the spans of cache lookups, fills and upstream calls;
	// nil means no tracing, which costs nothing on a cached token.
	Tracer trace.Tracer
	// RefusalTTL is how long the tenant's refusal of a user (unknown,
	// disabled, not allowed) is remembered and answered without a token
	// call; shared through Redis when Shared is set. Default 30s; negative
	// turns it off.
	RefusalTTL time.Duration
}

// Broker hands out cached user-impersonation tokens.
type Broker struct {
	tenants     atomic.Pointer[tenantSet]
	upstreamCfg UpstreamConfig
	l1          *cache.Memory[*cached]    // nil when turned off
	emails      *cache.Memory[string]     // email -> Qlik user id
	groupHashes *cache.Memory[groupsMemo] // groups key -> the last synced set
	groupIDs    *cache.Memory[string]     // tenant + name -> custom group id
	names       nameCache
	l1TTL       time.Duration
	shared      Shared
	limiter     SharedLimiter // nil: no shared rate limit
	keyring     *cache.Keyring
	nameKey     []byte
	deps
	skew         time.Duration
	minTTL       time.Duration
	refreshAhead time.Duration
	fetchTimeout time.Duration
	leaseTTL     time.Duration
	leasePoll    time.Duration
	tracer       trace.Tracer
	traced       bool // tracer is not the no-op one

	flight singleflight.Group

	// Remembered refusals (refusals.go) and logouts (logout.go).
	refusalTTL    time.Duration
	refused       *cache.Memory[string] // key -> kind
	refusalsSince atomic.Int64          // unix ms of the last reload
	reissued      *cache.Memory[string] // key -> token minted after a 401
	logouts       *cache.Memory[uint64] // key -> sequence of its last logout
	logoutSeq     atomic.Uint64
	hmacs         sync.Pool // hash.Hash: HMAC-SHA256 keyed with nameKey

	l1Hit, l1Miss prometheus.Counter            // resolved once: the hot path
	redisLookups  map[string]prometheus.Counter // by result, resolved once

	// Background refreshes: one per key at a time, with a back-off after
	// a failed or skipped one.
	refreshMu  sync.Mutex
	refreshing map[string]time.Time // key -> not before (zero while running)
	nextHeal   atomic.Int64         // Unix ns: no L1-to-Redis heal before (recheck.go)
	bg         sync.WaitGroup
	bgCtx      context.Context
	bgCancel   context.CancelFunc

	// L1 copies held while the invalidation subscription was down are
	// suspect until checked (suspect.go): l1Gen counts the subscription's
	// returns, usersMe asks the tenant about a copy Redis cannot vouch for.
	l1Gen          atomic.Uint32
	verifying      singleflight.Group
	usersMe        tokenCheck
	pendingLogouts pendingLogouts // logout.go
	healHold       atomic.Int64   // Unix ns (broker clock): no unchecked heal before
	redisFailed    atomic.Bool    // Redis failed since the subscription last came back
}

// New checks cfg and returns a Broker. Call Close to stop its background
// refreshes.
func New(cfg Config) (*Broker, error) {
	b := &Broker{
		upstreamCfg:  DefaultUpstreamConfig(),
		l1TTL:        orDefault(cfg.L1TTL, 5*time.Minute),
		shared:       cfg.Shared,
		limiter:      cfg.Limiter,
		keyring:      cfg.Keyring,
		deps:         deps{m: cfg.Metrics, log: cfg.Logger, now: cfg.Now},
		skew:         orDefault(cfg.TokenSkew, 60*time.Second),
		minTTL:       orDefault(cfg.MinTokenTTL, 10*time.Minute),
		refreshAhead: orDefault(cfg.RefreshAhead, time.Hour),
		fetchTimeout: orDefault(cfg.FetchTimeout, 15*time.Second),
		leaseTTL:     orDefault(cfg.LeaseTTL, 5*time.Second),
		leasePoll:    orDefault(cfg.LeasePoll, 20*time.Millisecond),
		refreshing:   make(map[string]time.Time),
		refusalTTL:   cfg.RefusalTTL,
	}
	if b.refusalTTL == 0 {
		b.refusalTTL = defaultRefusalTTL
	}
	if cfg.Upstream != nil {
		b.upstreamCfg = *cfg.Upstream
	}
	var errs []error
	if err := b.upstreamCfg.validate(); err != nil {
		errs = append(errs, err)
	}
	switch {
	case b.upstreamCfg.SharedRatePerMinute > 0 && b.limiter == nil:
		errs = append(errs, errors.New("broker: a shared upstream rate needs a Limiter to count the calls in (Redis)"))
	case b.upstreamCfg.SharedRatePerMinute == 0 && b.limiter != nil:
		errs = append(errs, errors.New("broker: a Limiter needs a shared upstream rate (Upstream.SharedRatePerMinute)"))
	}
	if cfg.NoL1 && b.shared == nil {
		errs = append(errs, errors.New("broker: needs an L1 store, a shared store or both"))
	}
	if b.m == nil {
		errs = append(errs, errors.New("broker: metrics is nil"))
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
	b.groupHashes = cache.NewMemory[groupsMemo](memOpts)
	b.groupIDs = cache.NewMemory[string](memOpts)
	b.refused = cache.NewMemory[string](memOpts)
	b.reissued = cache.NewMemory[string](memOpts)
	b.logouts = cache.NewMemory[uint64](memOpts)
	b.names.max = memOpts.MaxEntries
	if b.names.max <= 0 {
		b.names.max = cache.DefaultMaxEntries
	}
	b.hmacs.New = func() any { return hmac.New(sha256.New, b.nameKey) }
	b.usersMe = newTokenCheck(checkTransport())
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

// deps are what the broker's parts share: its metrics, log and clock.
type deps struct {
	m   *metrics.Metrics
	log *slog.Logger
	now func() time.Time
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
	b.usersMe.client.CloseIdleConnections()
}

// Run listens for other replicas' invalidations and drops those keys from
// L1, until ctx is done; when the subscription comes back after an
// interruption, every L1 copy becomes suspect (suspect.go). Without Shared
// it just waits for ctx.
func (b *Broker) Run(ctx context.Context) error {
	if b.shared == nil {
		<-ctx.Done()
		return nil
	}
	err := b.shared.SubscribeInvalidations(ctx, func(key string) {
		if key == cache.InvalidateAll {
			// The subscription was re-established: invalidations sent
			// while it was down (a logout during a Redis outage) are
			// lost, so no L1 copy is served before it is checked.
			b.suspectAll()
			return
		}
		b.deleteL1(key)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}
