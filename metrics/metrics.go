// Package metrics owns the broker's Prometheus collectors. Everything is
// registered on a registry passed in (never the global one), names carry the
// qlik_token_broker_ prefix and base units, and every label has a bounded set
// of values: routes are echo route templates, tenants come from configuration,
// reasons and outcomes are constants. User ids, tokens, raw paths and rejected
// origins never become label values.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "qlik_token_broker"

// Cache tiers and lookup results, the label values of CacheLookups.
const (
	TierL1    = "l1" // the in-process cache
	TierRedis = "redis"

	ResultHit   = "hit"
	ResultMiss  = "miss"
	ResultError = "error"
)

// Refresh-ahead results, the label values of Refreshes.
const (
	RefreshRefreshed = "refreshed" // a new token was fetched from the tenant
	RefreshAdopted   = "adopted"   // another replica had refreshed it already
	RefreshSkipped   = "skipped"   // another replica holds the refresh lease
	RefreshError     = "error"
)

// Results of checking a suspect L1 copy (one held when the invalidation
// subscription came back), the label values of SuspectChecks.
const (
	SuspectConfirmed = "confirmed"  // Redis holds the same token: served
	SuspectReplaced  = "replaced"   // Redis holds a newer token: that one served
	SuspectLoggedOut = "logged_out" // the user's logout tombstone stands: dropped, filled afresh
	SuspectAccepted  = "accepted"   // not in Redis; the tenant takes it: put back and served
	SuspectRefused   = "refused"    // not in Redis; the tenant refused it: evicted, a new one minted
	SuspectUnchecked = "unchecked"  // the tenant could not be asked: served, not put back
)

// Lease results, the label values of Leases.
const (
	LeaseAcquired  = "acquired"   // took the lease at once and fetched
	LeaseWaited    = "waited"     // waited and got the holder's token
	LeaseTakenOver = "taken_over" // waited, then took the lease (holder gone or failed)
	LeaseError     = "error"      // Redis failed; fetched without the lease
)

// Upstream outcomes, the label values of UpstreamRequests.
const (
	OutcomeSuccess     = "success"
	OutcomeClientError = "client_error" // 4xx other than 429
	OutcomeRateLimited = "rate_limited" // 429
	OutcomeServerError = "server_error" // 5xx
	OutcomeNetwork     = "network_error"
	OutcomeTimeout     = "timeout"
	OutcomeMalformed   = "malformed"
)

// Rejection causes, the label values of Rejections.
const (
	RejectCooldown      = "cooldown"        // the tenant answered 429; waiting out Retry-After
	RejectBreakerOpen   = "breaker_open"    // the tenant keeps failing; not asked for a while
	RejectQueueTimeout  = "queue_timeout"   // no upstream slot or rate token before the deadline
	RejectSharedRate    = "shared_rate"     // the replicas' shared rate limit had no room before the deadline
	RejectUserRateLimit = "user_rate_limit" // one identity asked too often
	RejectUnknownUser   = "unknown_user"    // the tenant does not know the Qlik user
	RejectInvalidClient = "invalid_client"  // the tenant refused the broker's client credentials
)

// RejectRememberedRefusal is the Rejections cause of a request answered
// from a remembered refusal of the same user, without a token call.
const RejectRememberedRefusal = "remembered_refusal"

// Refused-token claim outcomes, the label values of RefusedTokenClaims.
const (
	ClaimMismatch  = "mismatch"  // not the token the broker holds: answered it, no tenant call
	ClaimAccepted  = "accepted"  // the tenant still takes it: answered it
	ClaimRefused   = "refused"   // the tenant refused it: evicted, a fresh one answered
	ClaimUnchecked = "unchecked" // the check failed: answered it as it is
	ClaimLimited   = "limited"   // too many checks for the identity: answered it unchecked
)

// Groups sync results, the label values of GroupSyncs.
const (
	GroupsSynced    = "synced"    // memberships changed; every change applied
	GroupsUnchanged = "unchanged" // the user's groups already matched the claim
	GroupsDeferred  = "deferred"  // tenant cooling down after a 429, or the user's budget spent
	GroupsPartial   = "partial"   // the tenant applied part of the patch (207)
	GroupsFailed    = "failed"    // any other failure (the tenant, the admin client)
)

// Groups sync changes, the label values of GroupChanges.
const (
	GroupChangeAdded   = "added"   // a membership added
	GroupChangeRemoved = "removed" // a membership removed
	GroupChangeCreated = "created" // a custom group created
	GroupChangeFailed  = "failed"  // a membership change the tenant did not apply (207)
)

// Breaker states, the values of UpstreamBreakerState.
const (
	BreakerClosed   = 0
	BreakerHalfOpen = 1
	BreakerOpen     = 2
)

// BuildInfo describes the running binary for the build_info gauge.
type BuildInfo struct {
	Version  string
	Revision string
}

// Metrics holds the broker's collectors.
type Metrics struct {
	// HTTPRequests counts API requests by route template, method and status code.
	HTTPRequests *prometheus.CounterVec
	// HTTPDuration observes API request latency by route template.
	HTTPDuration *prometheus.HistogramVec
	// CacheLookups counts token cache lookups by tier and result.
	CacheLookups *prometheus.CounterVec
	// Coalesced counts requests that waited for another request's upstream
	// call instead of making their own.
	Coalesced prometheus.Counter
	// UpstreamRequests counts calls to a tenant by tenant, endpoint and outcome.
	UpstreamRequests *prometheus.CounterVec
	// UpstreamDuration observes tenant call latency by tenant and endpoint.
	UpstreamDuration *prometheus.HistogramVec
	// SessionRejections counts session tokens rejected, by reason.
	SessionRejections *prometheus.CounterVec
	// OriginRejections counts browser requests refused for their Origin.
	OriginRejections prometheus.Counter
	// Refreshes counts refresh-ahead runs by result.
	Refreshes *prometheus.CounterVec
	// Leases counts cross-replica fetch coordination on a cold key by result.
	Leases *prometheus.CounterVec
	// UnsealFailures counts Redis values that could not be opened, by reason
	// (tampered, unknown_key, malformed); each is treated as a miss.
	UnsealFailures *prometheus.CounterVec
	// RedisErrors counts failed Redis operations by operation.
	RedisErrors *prometheus.CounterVec
	// Rejections counts token requests refused without (or after) asking
	// the tenant, by cause.
	Rejections *prometheus.CounterVec
	// UpstreamRetries counts retried tenant calls by tenant.
	UpstreamRetries *prometheus.CounterVec
	// UpstreamCooldownUntil is, per tenant, the Unix time until which no
	// token call goes out after a 429 (in the past when none is active).
	UpstreamCooldownUntil *prometheus.GaugeVec
	// UpstreamBreakerState is the tenant's circuit breaker state: 0 closed,
	// 1 half-open, 2 open.
	UpstreamBreakerState *prometheus.GaugeVec
	// UpstreamQueueWait observes the wait for an upstream slot and rate
	// token, by tenant.
	UpstreamQueueWait *prometheus.HistogramVec
	// UpstreamInvalidCredentials counts tenant answers that the broker's
	// client id or secret is wrong, by tenant.
	UpstreamInvalidCredentials *prometheus.CounterVec
	// ProxyRequests counts requests proxied to a tenant by tenant, method
	// class (read, write) and status class (2xx...5xx).
	ProxyRequests *prometheus.CounterVec
	// ProxyDuration observes proxied request latency (to the response
	// headers) by tenant.
	ProxyDuration *prometheus.HistogramVec
	// RedisDegraded is 1 while the Redis circuit breaker is open and the
	// broker runs on its in-process cache alone.
	RedisDegraded prometheus.Gauge
	// RefusedTokenClaims counts token requests that named a refused token
	// (X-QTB-Refused-Token), by outcome.
	RefusedTokenClaims *prometheus.CounterVec
	// GroupSyncs counts syncs of a session's groups to the user's Qlik
	// custom groups, by tenant and result.
	GroupSyncs *prometheus.CounterVec
	// GroupChanges counts what the syncs changed at the tenant, by tenant
	// and change (added, removed, created, failed).
	GroupChanges *prometheus.CounterVec
	// RefreshDeferrals counts refresh-ahead runs that gave way to requests
	// (no free slot, a request waiting, or the local or shared rate limit
	// without its reserve for requests) and are tried again shortly while
	// the served token has life left. Refreshes counts them as errors too.
	RefreshDeferrals prometheus.Counter
	// SuspectChecks counts checks of L1 copies held while the invalidation
	// subscription was down (Redis or the network away), by result.
	SuspectChecks *prometheus.CounterVec
}

// NewRegistry returns a registry holding the Go runtime and process
// collectors, ready for New.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// New creates the broker's collectors and registers them on reg. It panics if
// they are already registered there, as prometheus.MustRegister does: that is
// a wiring bug, not a runtime condition.
func New(reg prometheus.Registerer, build BuildInfo) *Metrics {
	m := &Metrics{
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "http", Name: "requests_total",
			Help: "API requests by route template, method and status code.",
		}, []string{"route", "method", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "API request latency by route template.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		CacheLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "cache", Name: "lookups_total",
			Help: "Token cache lookups by tier and result (hit, miss, error).",
		}, []string{"tier", "result"}),
		Coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "token", Name: "coalesced_requests_total",
			Help: "Token requests that shared another request's upstream call.",
		}),
		UpstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "upstream", Name: "requests_total",
			Help: "Calls to the Qlik tenant by tenant, endpoint and outcome.",
		}, []string{"tenant", "endpoint", "outcome"}),
		UpstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "upstream", Name: "request_duration_seconds",
			Help:    "Latency of calls to the Qlik tenant by tenant and endpoint.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"tenant", "endpoint"}),
		SessionRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "session", Name: "rejections_total",
			Help: "Session tokens rejected, by reason.",
		}, []string{"reason"}),
		OriginRejections: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "http", Name: "origin_rejections_total",
			Help: "Browser requests refused because their Origin is not allowed.",
		}),
		Refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "token", Name: "refreshes_total",
			Help: "Refresh-ahead runs by result (refreshed, adopted, skipped, error).",
		}, []string{"result"}),
		Leases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "token", Name: "leases_total",
			Help: "Cold-key fetch coordination across replicas by result (acquired, waited, taken_over, error).",
		}, []string{"result"}),
		UnsealFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "cache", Name: "unseal_failures_total",
			Help: "Cached values that failed to unseal, by reason; each counts as a miss.",
		}, []string{"reason"}),
		RedisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "redis", Name: "errors_total",
			Help: "Failed Redis operations by operation.",
		}, []string{"op"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "token", Name: "rejections_total",
			Help: "Token requests refused by cause (cooldown, breaker_open, queue_timeout, shared_rate, user_rate_limit, unknown_user, invalid_client).",
		}, []string{"cause"}),
		UpstreamRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "upstream", Name: "retries_total",
			Help: "Tenant calls retried after a 5xx, timeout or connection failure.",
		}, []string{"tenant"}),
		UpstreamCooldownUntil: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "upstream", Name: "cooldown_until_timestamp_seconds",
			Help: "Unix time until which no token call goes to the tenant after a 429.",
		}, []string{"tenant"}),
		UpstreamBreakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "upstream", Name: "breaker_state",
			Help: "Circuit breaker state per tenant: 0 closed, 1 half-open, 2 open.",
		}, []string{"tenant"}),
		UpstreamQueueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "upstream", Name: "queue_wait_seconds",
			Help:    "Wait for an upstream concurrency slot and rate token.",
			Buckets: []float64{.001, .005, .025, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"tenant"}),
		UpstreamInvalidCredentials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "upstream", Name: "invalid_credentials_total",
			Help: "Tenant answers that the broker's OAuth client id or secret is wrong.",
		}, []string{"tenant"}),
		ProxyRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "proxy", Name: "requests_total",
			Help: "Requests proxied to the tenant by tenant, method class (read, write) and status class.",
		}, []string{"tenant", "method_class", "code_class"}),
		ProxyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "proxy", Name: "request_duration_seconds",
			Help:    "Time to the tenant's response headers for proxied requests.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"tenant"}),
		RedisDegraded: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "redis", Name: "degraded",
			Help: "1 while Redis is considered down and tokens come from the in-process cache and the tenant.",
		}),
		RefusedTokenClaims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "token", Name: "refused_claims_total",
			Help: "Token requests that named a token as refused, by outcome (mismatch, accepted, refused, unchecked, limited).",
		}, []string{"result"}),
		RefreshDeferrals: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "token", Name: "refresh_deferrals_total",
			Help: "Refresh-ahead runs deferred because requests came first (also counted as refreshes_total{result=\"error\"}).",
		}),
		SuspectChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "token", Name: "suspect_checks_total",
			Help: "Checks of L1 copies held while the invalidation subscription was down, by result (confirmed, replaced, logged_out, accepted, refused, unchecked).",
		}, []string{"result"}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Build information of the running broker; the value is always 1.",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision},
	})
	buildInfo.Set(1)
	reg.MustRegister(m.HTTPRequests, m.HTTPDuration, m.CacheLookups, m.Coalesced,
		m.UpstreamRequests, m.UpstreamDuration, m.SessionRejections, m.OriginRejections,
		m.Refreshes, m.Leases, m.UnsealFailures, m.RedisErrors, m.RedisDegraded,
		m.Rejections, m.UpstreamRetries, m.UpstreamCooldownUntil, m.UpstreamBreakerState,
		m.UpstreamQueueWait, m.UpstreamInvalidCredentials, m.ProxyRequests, m.ProxyDuration, buildInfo)
	reg.MustRegister(m.RefusedTokenClaims)
	m.GroupSyncs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "groups", Name: "syncs_total",
		Help: "Syncs of session groups to Qlik custom groups by tenant and result (synced, unchanged, deferred, partial, failed).",
	}, []string{"tenant", "result"})
	m.GroupChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "groups", Name: "changes_total",
		Help: "Changes made by groups syncs at the tenant by tenant and change (added, removed, created, failed).",
	}, []string{"tenant", "change"})
	reg.MustRegister(m.GroupSyncs, m.GroupChanges)
	reg.MustRegister(m.SuspectChecks, m.RefreshDeferrals)
	return m
}

// Handler serves the registry in the Prometheus exposition formats.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{EnableOpenMetrics: true})
}
