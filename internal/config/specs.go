package config

import (
	"cmp"
	"net/http"
	"time"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// What the configuration gives each service package. Nothing here reads a
// file or builds a client that talks to anything: the values were read by
// Load and checked by Validate.

// BrokerConfig is the broker's configuration, without what is built at run
// time: Tenants (BrokerTenants), Shared, Keyring, Metrics, Logger, Tracer.
func (c Config) BrokerConfig() broker.Config {
	return broker.Config{
		Upstream:     new(c.UpstreamConfig()),
		L1MaxEntries: c.L1MaxEntries,
		NoL1:         !c.L1Enabled,
		L1TTL:        c.L1TTL,
		TokenSkew:    c.TokenSkew,
		MinTokenTTL:  c.MinTokenTTL,
		RefreshAhead: c.RefreshAhead,
		// A fill may wait for one upstream call and the retries after it.
		FetchTimeout: c.UpstreamTimeout + 5*time.Second,
		RefusalTTL:   refusalTTL(c.RefusalTTL),
	}
}

// refusalTTL maps QTB_REFUSAL_TTL to the broker's: there 0 is the
// default and a negative value turns remembering off.
func refusalTTL(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// UpstreamConfig is the broker's protection of the tenants: concurrency,
// local and shared rate limits, retries and circuit breaker. What no
// setting names keeps the broker's default.
func (c Config) UpstreamConfig() broker.UpstreamConfig {
	u := broker.DefaultUpstreamConfig()
	u.Concurrency = c.UpstreamConcurrency
	u.RatePerMinute = c.UpstreamRatePerMinute
	// QTB_UPSTREAM_BURST 0 means "as many as QTB_UPSTREAM_CONCURRENCY".
	u.Burst = cmp.Or(c.UpstreamBurst, c.UpstreamConcurrency)
	u.SharedRatePerMinute = c.UpstreamSharedRatePerMinute
	u.SharedBurst = c.UpstreamSharedBurst
	u.Retries = c.UpstreamRetries // 0: none
	u.BreakerFailures = uint32(c.UpstreamBreakerFailures)
	u.BreakerOpen = c.UpstreamBreakerOpen
	return u
}

// APIConfig is the configuration of the broker's HTTP API, without what is
// built at run time: Broker, Verifier, Ready, ServiceVerifier, Metrics,
// Logger.
func (c Config) APIConfig() broker.APIConfig {
	return broker.APIConfig{
		SessionCookie:     c.SessionCookie,
		AllowedOrigins:    c.CORSOrigins,
		Proxy:             broker.ProxyConfig{Timeout: c.ProxyTimeout, MaxRequestBytes: int64(c.ProxyMaxBody), Websocket: c.ProxyWebsocket},
		UserRatePerMinute: c.UserRatePerMinute,
		UserBurst:         c.UserBurst,
	}
}

// UpstreamHTTPClient is a client for calls to tenants, each bounded by
// QTB_UPSTREAM_TIMEOUT. Instrument it (telemetry) before passing it to
// BrokerTenants.
func (c Config) UpstreamHTTPClient() *http.Client {
	return qlik.NewHTTPClient(c.UpstreamTimeout)
}

// ServiceEnabled reports whether service credentials are configured.
func (c Config) ServiceEnabled() bool {
	return c.ServiceHMACSecret != "" || c.ServicePublicKeyFile != "" || c.ServiceJWKSURL != ""
}

// ServiceConfig is the verifier configuration of service credentials: the
// service name is the sub claim, the tenants come from the list claim.
func (c Config) ServiceConfig() session.Config {
	sc := session.Config{
		JWKSURL:      c.ServiceJWKSURL,
		PublicKeyPEM: c.ServicePublicKeyPEM,
		Issuer:       c.ServiceIssuer,
		Audience:     c.ServiceAudience,
		Leeway:       c.SessionLeeway,
		UserClaim:    "sub",
		ListClaim:    c.ServiceTenantsClaim,

		JWKSRefreshInterval:   c.SessionJWKSRefresh,
		JWKSUnknownKIDMinWait: c.SessionJWKSUnknownKIDInterval,
	}
	if c.ServiceHMACSecret != "" {
		sc.HMACSecret = []byte(c.ServiceHMACSecret)
	}
	return sc
}

// SessionConfig is the verifier configuration of user sessions.
func (c Config) SessionConfig() session.Config {
	sc := session.Config{
		JWKSURL:          c.SessionJWKSURL,
		PublicKeyPEM:     c.SessionPublicKeyPEM,
		Algorithms:       c.SessionAlgorithms,
		Issuer:           c.SessionIssuer,
		Audience:         c.SessionAudience,
		Leeway:           c.SessionLeeway,
		UserClaim:        c.UserClaim,
		UserLookup:       c.UserLookup,
		TenantClaim:      c.TenantClaim,
		VerifiedCacheTTL: c.SessionCacheTTL,
		MaxGroups:        c.GroupsMax,

		JWKSRefreshInterval:   c.SessionJWKSRefresh,
		JWKSUnknownKIDMinWait: c.SessionJWKSUnknownKIDInterval,
	}
	if c.SessionHMACSecret != "" {
		sc.HMACSecret = []byte(c.SessionHMACSecret)
	}
	return sc
}

// RedisEnabled reports whether any Redis setting asks for a shared cache.
func (c Config) RedisEnabled() bool {
	return c.RedisURL != "" || len(c.RedisAddrs) > 0
}

// RedisOptions are the cache package's options for Redis. The CA is the
// file's content, read by Load.
func (c Config) RedisOptions() cache.RedisOptions {
	return cache.RedisOptions{
		Mode:       c.RedisMode,
		URL:        string(c.RedisURL),
		Addrs:      c.RedisAddrs,
		MasterName: c.RedisMasterName,
		Password:   string(c.RedisPassword),
		TLSCA:      c.RedisCA,

		SentinelUsername: c.RedisSentinelUsername,
		SentinelPassword: string(c.RedisSentinelPassword),
	}
}

// Keyring is the keyring sealing tokens in Redis; nil without QTB_CACHE_KEY.
func (c Config) Keyring() (*cache.Keyring, error) {
	if c.CacheKey == "" {
		return nil, nil
	}
	return cache.ParseKeyring(string(c.CacheKey))
}
