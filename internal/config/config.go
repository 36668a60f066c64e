package config

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// secret holds a credential. It never prints, logs or marshals its value.
type secret string

func (s secret) String() string {
	if s == "" {
		return ""
	}
	return "REDACTED"
}

// GoString keeps %#v from printing the value.
func (s secret) GoString() string { return `"` + s.String() + `"` }

// LogValue keeps slog from printing the value.
func (s secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON keeps encoders from printing the value.
func (s secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// config is every setting of `serve`, validated whole.
type config struct {
	Listen        string
	MetricsListen string

	TenantURL               string
	ClientID                string
	ClientSecret            secret
	ClientSecretFile        string
	Scope                   string
	TenantsFile             string
	TenantClaim             string
	AdminClientID           string
	AdminClientSecret       secret
	AdminClientSecretFile   string
	CreateUsers             bool
	UpstreamTimeout         time.Duration
	UpstreamConcurrency     int
	UpstreamRate            float64
	UpstreamBurst           int
	UpstreamSharedRate      float64
	UpstreamSharedBurst     int
	UpstreamRetries         int
	UpstreamBreakerFailures int
	UpstreamBreakerOpen     time.Duration
	UserRate                float64
	UserBurst               int

	SessionHMACSecret     secret
	SessionHMACSecretFile string
	SessionPublicKeyFile  string
	SessionJWKSURL        string
	SessionAlgorithms     []string
	SessionIssuer         string
	SessionAudience       string
	SessionLeeway         time.Duration
	SessionCookie         string
	SessionCacheTTL       time.Duration
	UserClaim             string
	UserLookup            string

	RedisURL          secret // may carry a password
	RedisMode         string
	RedisAddrs        []string
	RedisMasterName   string
	RedisCAFile       string
	RedisPassword     secret
	RedisPasswordFile string
	// The sentinels' own credentials, when they differ from the master's.
	RedisSentinelUsername     string
	RedisSentinelPassword     secret
	RedisSentinelPasswordFile string
	CacheKey                  secret
	CacheKeyFile              string
	TokenSkew                 time.Duration
	MinTokenTTL               time.Duration
	RefreshAhead              time.Duration
	L1TTL                     time.Duration
	L1Enabled                 bool
	L1MaxEntries              int

	CORSOrigins []string

	ServiceHMACSecret     secret
	ServiceHMACSecretFile string
	ServicePublicKeyFile  string
	ServiceJWKSURL        string
	ServiceIssuer         string
	ServiceAudience       string
	ServiceTenantsClaim   string
	ProxyTimeout          time.Duration
	ProxyMaxBody          int
	ProxyWebsocket        bool

	ShutdownTimeout time.Duration
	LogLevel        string
	LogFormat       string

	// tracing comes from the OTEL_* variables, not from a setting.
	tracing tracingConfig
}

func defaultConfig() config {
	return config{
		Listen:                  ":8080",
		MetricsListen:           ":9090",
		Scope:                   "user_default",
		UpstreamTimeout:         10 * time.Second,
		UpstreamConcurrency:     8,
		UpstreamSharedBurst:     5,
		UpstreamRetries:         2,
		UpstreamBreakerFailures: 5,
		UpstreamBreakerOpen:     30 * time.Second,
		UserBurst:               10,
		SessionLeeway:           30 * time.Second,
		SessionCacheTTL:         30 * time.Second,
		UserClaim:               "sub",
		UserLookup:              qlik.FieldUserID,
		RedisMode:               cache.ModeStandalone,
		TokenSkew:               60 * time.Second,
		MinTokenTTL:             10 * time.Minute,
		RefreshAhead:            time.Hour,
		L1TTL:                   5 * time.Minute,
		L1Enabled:               true,
		L1MaxEntries:            100_000,
		ShutdownTimeout:         15 * time.Second,
		ServiceTenantsClaim:     "tenants",
		ProxyTimeout:            5 * time.Minute,
		ProxyMaxBody:            32 << 20,
		LogLevel:                "info",
		LogFormat:               "json",
	}
}

// setting binds one environment variable and its flag to a config field.
type setting struct {
	env   string
	usage string
	value flag.Value
}

// flagName derives the flag from the variable: QTB_TENANT_URL -> tenant-url.
func (s setting) flagName() string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.env, "QTB_")), "_", "-")
}

// settings lists every variable `serve` reads, in the order the README shows.
func (c *config) settings() []setting {
	return []setting{
		{"QTB_LISTEN", "API listen address", (*stringValue)(&c.Listen)},
		{"QTB_METRICS_LISTEN", "metrics listen address (serves /metrics)", (*stringValue)(&c.MetricsListen)},
		{"QTB_TENANT_URL", "Qlik Cloud tenant URL, e.g. https://acme.eu.qlikcloud.com", (*stringValue)(&c.TenantURL)},
		{"QTB_CLIENT_ID", "impersonation OAuth client id", (*stringValue)(&c.ClientID)},
		{"QTB_CLIENT_SECRET", "impersonation OAuth client secret (prefer QTB_CLIENT_SECRET_FILE)", (*secretValue)(&c.ClientSecret)},
		{"QTB_CLIENT_SECRET_FILE", "file holding the OAuth client secret", (*stringValue)(&c.ClientSecretFile)},
		{"QTB_SCOPE", "scope requested for impersonation tokens", (*stringValue)(&c.Scope)},
		{"QTB_TENANTS_FILE", "YAML file listing the tenants (instead of QTB_TENANT_URL/QTB_CLIENT_*); reloaded on change and on SIGHUP", (*stringValue)(&c.TenantsFile)},
		{"QTB_TENANT_CLAIM", "session claim naming the tenant (required with several tenants)", (*stringValue)(&c.TenantClaim)},
		{"QTB_ADMIN_CLIENT_ID", "admin OAuth client (scope admin_classic) for email lookups in single-tenant mode", (*stringValue)(&c.AdminClientID)},
		{"QTB_ADMIN_CLIENT_SECRET", "its secret (prefer the _FILE form)", (*secretValue)(&c.AdminClientSecret)},
		{"QTB_ADMIN_CLIENT_SECRET_FILE", "file holding the admin client secret", (*stringValue)(&c.AdminClientSecretFile)},
		{"QTB_CREATE_USERS", "with QTB_USER_LOOKUP=email, create unknown users just in time", (*boolValue)(&c.CreateUsers)},
		{"QTB_UPSTREAM_TIMEOUT", "timeout of one call to the tenant", (*durationValue)(&c.UpstreamTimeout)},
		{"QTB_UPSTREAM_CONCURRENCY", "most token calls in flight to the tenant from this replica; more wait", (*intValue)(&c.UpstreamConcurrency)},
		{"QTB_UPSTREAM_RATE", "token calls per minute this replica may make to the tenant (0: unlimited); Qlik allows about 100 per tenant", (*floatValue)(&c.UpstreamRate)},
		{"QTB_UPSTREAM_BURST", "token calls that may go out at once under QTB_UPSTREAM_RATE (default: QTB_UPSTREAM_CONCURRENCY)", (*intValue)(&c.UpstreamBurst)},
		{"QTB_UPSTREAM_SHARED_RATE", "token calls per minute all replicas together may make to each tenant, counted in Redis (0: off; e.g. 90 under Qlik's 100); while Redis fails only the per-replica limits hold", (*floatValue)(&c.UpstreamSharedRate)},
		{"QTB_UPSTREAM_SHARED_BURST", "token calls that may go out at once under QTB_UPSTREAM_SHARED_RATE; a tenant sees at most rate + burst calls in any minute", (*intValue)(&c.UpstreamSharedBurst)},
		{"QTB_UPSTREAM_RETRIES", "retries of a token call after a 5xx, timeout or connection failure (0: none)", (*intValue)(&c.UpstreamRetries)},
		{"QTB_UPSTREAM_BREAKER_FAILURES", "consecutive tenant failures that open its circuit breaker", (*intValue)(&c.UpstreamBreakerFailures)},
		{"QTB_UPSTREAM_BREAKER_OPEN", "how long an open breaker refuses calls before probing the tenant", (*durationValue)(&c.UpstreamBreakerOpen)},
		{"QTB_USER_RATE", "token requests per minute one identity may make (0: unlimited); beyond it 429", (*floatValue)(&c.UserRate)},
		{"QTB_USER_BURST", "token requests one identity may make at once under QTB_USER_RATE", (*intValue)(&c.UserBurst)},
		{"QTB_SESSION_HMAC_SECRET", "HMAC key of session JWTs (prefer the _FILE form)", (*secretValue)(&c.SessionHMACSecret)},
		{"QTB_SESSION_HMAC_SECRET_FILE", "file holding the HMAC key of session JWTs", (*stringValue)(&c.SessionHMACSecretFile)},
		{"QTB_SESSION_PUBLIC_KEY_FILE", "PEM public key (RSA, ECDSA, Ed25519) or certificate verifying session JWTs", (*stringValue)(&c.SessionPublicKeyFile)},
		{"QTB_SESSION_JWKS_URL", "JWKS URL with the keys verifying session JWTs", (*stringValue)(&c.SessionJWKSURL)},
		{"QTB_SESSION_ALGORITHMS", "allowed session JWT algorithms, comma separated (default: per key type)", (*listValue)(&c.SessionAlgorithms)},
		{"QTB_SESSION_ISSUER", "required session iss claim", (*stringValue)(&c.SessionIssuer)},
		{"QTB_SESSION_AUDIENCE", "required session aud claim", (*stringValue)(&c.SessionAudience)},
		{"QTB_SESSION_LEEWAY", "clock skew allowed on exp, nbf and iat", (*durationValue)(&c.SessionLeeway)},
		{"QTB_SESSION_CACHE_TTL", "remember session tokens that verified (by hash) this long, never past exp; 0 checks every request in full", (*durationValue)(&c.SessionCacheTTL)},
		{"QTB_SESSION_COOKIE", "cookie to read the session JWT from when no Authorization header is sent", (*stringValue)(&c.SessionCookie)},
		{"QTB_USER_CLAIM", "session claim holding the Qlik user", (*stringValue)(&c.UserClaim)},
		{"QTB_USER_LOOKUP", "how Qlik finds the user: userId, subject or email (resolved through the users API)", (*stringValue)(&c.UserLookup)},
		{"QTB_REDIS_URL", "redis:// or rediss:// URL; empty keeps tokens in process memory only", (*secretValue)(&c.RedisURL)},
		{"QTB_REDIS_MODE", "standalone, cluster or sentinel", (*stringValue)(&c.RedisMode)},
		{"QTB_REDIS_ADDRS", "cluster seed nodes or sentinels (host:port), comma separated, added to the URL's host", (*listValue)(&c.RedisAddrs)},
		{"QTB_REDIS_MASTER_NAME", "Sentinel master name", (*stringValue)(&c.RedisMasterName)},
		{"QTB_REDIS_CA_FILE", "PEM CA bundle to trust for rediss:// instead of the system roots", (*stringValue)(&c.RedisCAFile)},
		{"QTB_REDIS_PASSWORD", "Redis password (in sentinel mode the master's), overriding the URL's (prefer the _FILE form)", (*secretValue)(&c.RedisPassword)},
		{"QTB_REDIS_PASSWORD_FILE", "file holding the Redis password", (*stringValue)(&c.RedisPasswordFile)},
		{"QTB_REDIS_SENTINEL_USERNAME", "ACL user to authenticate to the sentinels as, overriding the URL's user (sentinel mode; needs a sentinel password)", (*stringValue)(&c.RedisSentinelUsername)},
		{"QTB_REDIS_SENTINEL_PASSWORD", "the sentinels' own password, overriding the URL's (sentinel mode; prefer the _FILE form)", (*secretValue)(&c.RedisSentinelPassword)},
		{"QTB_REDIS_SENTINEL_PASSWORD_FILE", "file holding the sentinels' password", (*stringValue)(&c.RedisSentinelPasswordFile)},
		{"QTB_CACHE_KEY", "keys sealing tokens in Redis: id:base64key[,id:base64key...], the last seals (prefer the _FILE form)", (*secretValue)(&c.CacheKey)},
		{"QTB_CACHE_KEY_FILE", "file holding the cache sealing keys, one id:base64key per line, newest last", (*stringValue)(&c.CacheKeyFile)},
		{"QTB_TOKEN_SKEW", "clock skew allowance: every token is treated as expiring this much earlier", (*durationValue)(&c.TokenSkew)},
		{"QTB_MIN_TOKEN_TTL", "never hand out a token with less life left than this", (*durationValue)(&c.MinTokenTTL)},
		{"QTB_REFRESH_AHEAD", "refresh a served token in the background once it has less life left than this", (*durationValue)(&c.RefreshAhead)},
		{"QTB_L1_TTL", "longest time a token stays in the in-process cache in front of Redis", (*durationValue)(&c.L1TTL)},
		{"QTB_L1_ENABLED", "keep tokens in the in-process cache in front of Redis (false only for measuring the Redis path)", (*boolValue)(&c.L1Enabled)},
		{"QTB_L1_MAX_ENTRIES", "maximum tokens kept in the in-process cache", (*intValue)(&c.L1MaxEntries)},
		{"QTB_CORS_ORIGINS", "browser origins allowed to call the API, comma separated, exact match", (*listValue)(&c.CORSOrigins)},
		{"QTB_SERVICE_HMAC_SECRET", "HMAC key of service credentials for POST /v1/service/token (prefer the _FILE form); unset: endpoint off", (*secretValue)(&c.ServiceHMACSecret)},
		{"QTB_SERVICE_HMAC_SECRET_FILE", "file holding the service credentials' HMAC key", (*stringValue)(&c.ServiceHMACSecretFile)},
		{"QTB_SERVICE_PUBLIC_KEY_FILE", "PEM public key verifying service credentials", (*stringValue)(&c.ServicePublicKeyFile)},
		{"QTB_SERVICE_JWKS_URL", "JWKS URL verifying service credentials", (*stringValue)(&c.ServiceJWKSURL)},
		{"QTB_SERVICE_ISSUER", "required iss of service credentials", (*stringValue)(&c.ServiceIssuer)},
		{"QTB_SERVICE_AUDIENCE", "required aud of service credentials (must differ from QTB_SESSION_AUDIENCE)", (*stringValue)(&c.ServiceAudience)},
		{"QTB_SERVICE_TENANTS_CLAIM", "claim listing the tenants a service credential may act in (\"*\": all)", (*stringValue)(&c.ServiceTenantsClaim)},
		{"QTB_PROXY_TIMEOUT", "time limit of one request proxied through /v1/qlik/*", (*durationValue)(&c.ProxyTimeout)},
		{"QTB_PROXY_MAX_BODY", "largest request body proxied, in bytes", (*intValue)(&c.ProxyMaxBody)},
		{"QTB_PROXY_WEBSOCKET", "let engine websockets (/v1/qlik/app/...) through", (*boolValue)(&c.ProxyWebsocket)},
		{"QTB_SHUTDOWN_TIMEOUT", "how long to drain requests on SIGTERM", (*durationValue)(&c.ShutdownTimeout)},
		{"QTB_LOG_LEVEL", "debug, info, warn or error", (*stringValue)(&c.LogLevel)},
		{"QTB_LOG_FORMAT", "json or text", (*stringValue)(&c.LogFormat)},
	}
}

// fileSecrets maps a *_FILE variable to the secret it fills. A value given
// both directly and as a file is a configuration error.
func (c *config) fileSecrets() []struct {
	fileEnv, env string
	path         *string
	dst          *secret
} {
	return []struct {
		fileEnv, env string
		path         *string
		dst          *secret
	}{
		{"QTB_CLIENT_SECRET_FILE", "QTB_CLIENT_SECRET", &c.ClientSecretFile, &c.ClientSecret},
		{"QTB_SESSION_HMAC_SECRET_FILE", "QTB_SESSION_HMAC_SECRET", &c.SessionHMACSecretFile, &c.SessionHMACSecret},
		{"QTB_REDIS_PASSWORD_FILE", "QTB_REDIS_PASSWORD", &c.RedisPasswordFile, &c.RedisPassword},
		{"QTB_REDIS_SENTINEL_PASSWORD_FILE", "QTB_REDIS_SENTINEL_PASSWORD", &c.RedisSentinelPasswordFile, &c.RedisSentinelPassword},
		{"QTB_ADMIN_CLIENT_SECRET_FILE", "QTB_ADMIN_CLIENT_SECRET", &c.AdminClientSecretFile, &c.AdminClientSecret},
		{"QTB_SERVICE_HMAC_SECRET_FILE", "QTB_SERVICE_HMAC_SECRET", &c.ServiceHMACSecretFile, &c.ServiceHMACSecret},
		{"QTB_CACHE_KEY_FILE", "QTB_CACHE_KEY", &c.CacheKeyFile, &c.CacheKey},
	}
}

// loadConfig applies defaults, then the environment, then flags, then reads
// secret files, then validates everything at once.
func loadConfig(c config, name string, args []string, getenv func(string) string) (config, error) {
	var errs []error
	settings := c.settings()
	for _, s := range settings {
		if v := getenv(s.env); v != "" {
			if err := s.value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s.env, err))
			}
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(discard{})
	for _, s := range settings {
		fs.Var(s.value, s.flagName(), s.usage+" ("+s.env+")")
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	for _, fsec := range c.fileSecrets() {
		if *fsec.path == "" {
			continue
		}
		if *fsec.dst != "" {
			errs = append(errs, fmt.Errorf("%s and %s: set one, not both", fsec.env, fsec.fileEnv))
			continue
		}
		v, err := readSecretFile(*fsec.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", fsec.fileEnv, err))
			continue
		}
		*fsec.dst = v
	}
	if len(errs) > 0 {
		return c, errors.Join(append(errs, c.validate())...)
	}
	return c, c.validate()
}

// readSecretFile reads a secret mounted as a file, without its final newline.
func readSecretFile(path string) (secret, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	v := strings.TrimRight(string(raw), "\r\n")
	if v == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return secret(v), nil
}

// validate returns every problem with the configuration, each naming its
// variable. Secret values are never quoted.
func (c config) validate() error {
	var errs []error
	add := func(env, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{env}, a...)...))
	}
	for _, l := range []struct{ env, addr string }{{"QTB_LISTEN", c.Listen}, {"QTB_METRICS_LISTEN", c.MetricsListen}} {
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			add(l.env, "not a host:port address: %q", l.addr)
		}
	}
	if c.Listen == c.MetricsListen && !strings.HasSuffix(c.Listen, ":0") {
		add("QTB_METRICS_LISTEN", "must differ from QTB_LISTEN")
	}
	if c.TenantsFile != "" {
		if c.TenantURL != "" || c.ClientID != "" || c.ClientSecret != "" || c.AdminClientID != "" {
			add("QTB_TENANTS_FILE", "replaces QTB_TENANT_URL, QTB_CLIENT_ID, QTB_CLIENT_SECRET(_FILE) and QTB_ADMIN_CLIENT_*: set one or the other")
		}
		if _, err := c.loadTenants(); err != nil {
			add("QTB_TENANTS_FILE", "%v", err)
		}
	} else {
		if c.TenantURL == "" {
			add("QTB_TENANT_URL", "required (or QTB_TENANTS_FILE)")
		} else if _, err := qlik.New(c.TenantURL, qlik.Options{}); err != nil {
			add("QTB_TENANT_URL", "%v", err)
		}
		if c.ClientID == "" {
			add("QTB_CLIENT_ID", "required")
		}
		if c.ClientSecret == "" && c.ClientSecretFile == "" {
			add("QTB_CLIENT_SECRET", "required (or QTB_CLIENT_SECRET_FILE)")
		}
		if c.UserLookup == "email" && (c.AdminClientID == "" || c.AdminClientSecret == "") {
			add("QTB_ADMIN_CLIENT_ID", "QTB_USER_LOOKUP=email needs an admin client (QTB_ADMIN_CLIENT_ID and its secret) to look users up")
		}
	}
	if c.UpstreamTimeout <= 0 {
		add("QTB_UPSTREAM_TIMEOUT", "must be positive")
	}
	if c.UpstreamConcurrency < 1 || c.UpstreamConcurrency > 1000 {
		add("QTB_UPSTREAM_CONCURRENCY", "must be between 1 and 1000, got %d", c.UpstreamConcurrency)
	}
	if c.UpstreamRate < 0 {
		add("QTB_UPSTREAM_RATE", "must not be negative")
	}
	if c.UpstreamBurst < 0 {
		add("QTB_UPSTREAM_BURST", "must not be negative")
	}
	switch r := c.UpstreamSharedRate; {
	case r < 0:
		add("QTB_UPSTREAM_SHARED_RATE", "must not be negative")
	case r > 0 && (r < 0.01 || r > 1e6):
		add("QTB_UPSTREAM_SHARED_RATE", "must be 0 (off) or between 0.01 and 1000000 calls a minute, got %v", r)
	case r > 0 && !c.redisEnabled():
		add("QTB_UPSTREAM_SHARED_RATE", "is counted in Redis: needs QTB_REDIS_URL (or QTB_REDIS_ADDRS)")
	}
	if c.UpstreamSharedBurst < 1 || c.UpstreamSharedBurst > 1000 {
		add("QTB_UPSTREAM_SHARED_BURST", "must be between 1 and 1000, got %d", c.UpstreamSharedBurst)
	}
	if c.UpstreamRetries < 0 || c.UpstreamRetries > 10 {
		add("QTB_UPSTREAM_RETRIES", "must be between 0 and 10, got %d", c.UpstreamRetries)
	}
	if c.UpstreamBreakerFailures < 1 {
		add("QTB_UPSTREAM_BREAKER_FAILURES", "must be at least 1")
	}
	if c.UpstreamBreakerOpen < time.Second {
		add("QTB_UPSTREAM_BREAKER_OPEN", "must be at least 1s")
	}
	if c.UserRate < 0 {
		add("QTB_USER_RATE", "must not be negative")
	}
	if c.UserBurst < 1 {
		add("QTB_USER_BURST", "must be at least 1")
	}
	sources := 0
	for _, set := range []bool{c.SessionHMACSecret != "", c.SessionPublicKeyFile != "", c.SessionJWKSURL != ""} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		add("QTB_SESSION_HMAC_SECRET", "exactly one of QTB_SESSION_HMAC_SECRET(_FILE), QTB_SESSION_PUBLIC_KEY_FILE, QTB_SESSION_JWKS_URL is required, %d given", sources)
	}
	if c.SessionCacheTTL < 0 || c.SessionCacheTTL > 10*time.Minute {
		add("QTB_SESSION_CACHE_TTL", "must be between 0 and 10m, got %s", c.SessionCacheTTL)
	}
	if c.SessionLeeway < 0 || c.SessionLeeway > 5*time.Minute {
		add("QTB_SESSION_LEEWAY", "must be between 0 and 5m, got %s", c.SessionLeeway)
	}
	if c.UserClaim == "" {
		add("QTB_USER_CLAIM", "must not be empty")
	}
	if c.UserLookup != qlik.FieldUserID && c.UserLookup != qlik.FieldSubject && c.UserLookup != session.LookupEmail {
		add("QTB_USER_LOOKUP", "must be %q, %q or %q, got %q", qlik.FieldUserID, qlik.FieldSubject, session.LookupEmail, c.UserLookup)
	}
	if c.redisEnabled() {
		if r, err := cache.NewRedis(c.redisOptions()); err != nil {
			add("QTB_REDIS_URL", "%v", err) // cache redacts passwords
		} else {
			r.Close()
		}
	}
	// The sentinels' credentials mean nothing without sentinels, and a user
	// name alone is never sent: AUTH takes it only with a password.
	sentinelPasswordEnv := "QTB_REDIS_SENTINEL_PASSWORD"
	if c.RedisSentinelPasswordFile != "" {
		sentinelPasswordEnv = "QTB_REDIS_SENTINEL_PASSWORD_FILE"
	}
	for _, s := range []struct {
		env string
		set bool
	}{
		{"QTB_REDIS_SENTINEL_USERNAME", c.RedisSentinelUsername != ""},
		{sentinelPasswordEnv, c.RedisSentinelPassword != ""},
	} {
		switch {
		case !s.set:
		case c.RedisMode != cache.ModeSentinel:
			add(s.env, "authenticates to Redis Sentinels: set only with QTB_REDIS_MODE=%s, got %q", cache.ModeSentinel, c.RedisMode)
		case !c.redisEnabled():
			add(s.env, "needs the sentinels, in QTB_REDIS_URL or QTB_REDIS_ADDRS")
		case c.RedisSentinelPassword == "":
			add(s.env, "needs QTB_REDIS_SENTINEL_PASSWORD(_FILE): Redis sends a user name only with its password")
		}
	}
	if c.CacheKey != "" {
		if _, err := cache.ParseKeyring(string(c.CacheKey)); err != nil {
			add("QTB_CACHE_KEY", "%v", err) // names ids, never key bytes
		}
	}
	if c.TokenSkew < 0 || c.TokenSkew > time.Hour {
		add("QTB_TOKEN_SKEW", "must be between 0 and 1h, got %s", c.TokenSkew)
	}
	if c.MinTokenTTL < time.Minute || c.MinTokenTTL > 3*time.Hour {
		add("QTB_MIN_TOKEN_TTL", "must be between 1m and 3h, got %s", c.MinTokenTTL)
	}
	if c.RefreshAhead <= c.MinTokenTTL || c.RefreshAhead > 5*time.Hour {
		add("QTB_REFRESH_AHEAD", "must exceed QTB_MIN_TOKEN_TTL (%s) and be at most 5h, got %s", c.MinTokenTTL, c.RefreshAhead)
	}
	if c.L1TTL <= 0 {
		add("QTB_L1_TTL", "must be positive")
	}
	if !c.L1Enabled && !c.redisEnabled() {
		add("QTB_L1_ENABLED", "false needs Redis (QTB_REDIS_URL): the in-process cache is the only cache without it")
	}
	if c.L1MaxEntries < 1 {
		add("QTB_L1_MAX_ENTRIES", "must be at least 1")
	}
	for _, o := range c.CORSOrigins {
		if err := checkOrigin(o); err != nil {
			add("QTB_CORS_ORIGINS", "%v", err)
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		add("QTB_LOG_LEVEL", "%v", err)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		add("QTB_LOG_FORMAT", "must be json or text, got %q", c.LogFormat)
	}
	if c.serviceEnabled() {
		n := 0
		for _, set := range []bool{c.ServiceHMACSecret != "", c.ServicePublicKeyFile != "", c.ServiceJWKSURL != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			add("QTB_SERVICE_HMAC_SECRET", "at most one of QTB_SERVICE_HMAC_SECRET(_FILE), QTB_SERVICE_PUBLIC_KEY_FILE, QTB_SERVICE_JWKS_URL")
		}
		if c.ServiceAudience == "" || c.ServiceAudience == c.SessionAudience {
			add("QTB_SERVICE_AUDIENCE", "required with service credentials, and different from QTB_SESSION_AUDIENCE, so a user session can never pass as one")
		}
		if c.ServiceTenantsClaim == "" {
			add("QTB_SERVICE_TENANTS_CLAIM", "must not be empty")
		}
	}
	if c.ProxyTimeout <= 0 {
		add("QTB_PROXY_TIMEOUT", "must be positive")
	}
	if c.ProxyMaxBody < 0 {
		add("QTB_PROXY_MAX_BODY", "must not be negative")
	}
	if c.ShutdownTimeout <= 0 {
		add("QTB_SHUTDOWN_TIMEOUT", "must be positive")
	}
	return errors.Join(errs...)
}

// checkOrigin accepts exact origins only: scheme://host[:port], no path, no
// wildcard (a wildcard with credentials would hand tokens to any site).
func checkOrigin(o string) error {
	if strings.ContainsAny(o, "*?") {
		return fmt.Errorf("origin %q: wildcards are not allowed", o)
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("origin %q: want scheme://host[:port]", o)
	}
	if u.Path == "/" {
		return fmt.Errorf("origin %q: no trailing slash (browsers send none)", o)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// upstreamConfig turns the settings into the broker's upstream protection.
func (c config) upstreamConfig() broker.UpstreamConfig {
	retries := c.UpstreamRetries
	if retries == 0 {
		retries = -1 // the broker reads 0 as "default"
	}
	return broker.UpstreamConfig{
		Concurrency:     c.UpstreamConcurrency,
		Rate:            c.UpstreamRate / 60,
		Burst:           c.UpstreamBurst,
		SharedRate:      c.UpstreamSharedRate,
		SharedBurst:     c.UpstreamSharedBurst,
		Retries:         retries,
		BreakerFailures: uint32(c.UpstreamBreakerFailures),
		BreakerOpen:     c.UpstreamBreakerOpen,
	}
}

// serviceEnabled reports whether service credentials are configured.
func (c config) serviceEnabled() bool {
	return c.ServiceHMACSecret != "" || c.ServicePublicKeyFile != "" || c.ServiceJWKSURL != ""
}

// serviceConfig is the verifier configuration of service credentials: the
// service name is the sub claim, the tenants come from the list claim.
func (c config) serviceConfig() (session.Config, error) {
	sc := session.Config{
		JWKSURL:   c.ServiceJWKSURL,
		Issuer:    c.ServiceIssuer,
		Audience:  c.ServiceAudience,
		Leeway:    c.SessionLeeway,
		UserClaim: "sub",
		ListClaim: c.ServiceTenantsClaim,
	}
	if c.ServiceHMACSecret != "" {
		sc.HMACSecret = []byte(c.ServiceHMACSecret)
	}
	if c.ServicePublicKeyFile != "" {
		pem, err := os.ReadFile(c.ServicePublicKeyFile)
		if err != nil {
			return sc, fmt.Errorf("QTB_SERVICE_PUBLIC_KEY_FILE: %w", err)
		}
		sc.PublicKeyPEM = pem
	}
	return sc, nil
}

// redisEnabled reports whether any Redis setting asks for a shared cache.
func (c config) redisEnabled() bool {
	return c.RedisURL != "" || len(c.RedisAddrs) > 0
}

// redisOptions turns the settings into the cache package's options.
func (c config) redisOptions() cache.RedisOptions {
	return cache.RedisOptions{
		Mode:       c.RedisMode,
		URL:        string(c.RedisURL),
		Addrs:      c.RedisAddrs,
		MasterName: c.RedisMasterName,
		Password:   string(c.RedisPassword),
		TLSCAFile:  c.RedisCAFile,

		SentinelUsername: c.RedisSentinelUsername,
		SentinelPassword: string(c.RedisSentinelPassword),
	}
}

// sessionConfig turns the settings into the session package's config.
func (c config) sessionConfig() (session.Config, error) {
	sc := session.Config{
		JWKSURL:          c.SessionJWKSURL,
		Algorithms:       c.SessionAlgorithms,
		Issuer:           c.SessionIssuer,
		Audience:         c.SessionAudience,
		Leeway:           c.SessionLeeway,
		UserClaim:        c.UserClaim,
		UserLookup:       c.UserLookup,
		TenantClaim:      c.TenantClaim,
		VerifiedCacheTTL: c.SessionCacheTTL,
	}
	if c.SessionHMACSecret != "" {
		sc.HMACSecret = []byte(c.SessionHMACSecret)
	}
	if c.SessionPublicKeyFile != "" {
		pem, err := os.ReadFile(c.SessionPublicKeyFile)
		if err != nil {
			return sc, fmt.Errorf("QTB_SESSION_PUBLIC_KEY_FILE: %w", err)
		}
		sc.PublicKeyPEM = pem
	}
	return sc, nil
}

// The flag.Value types behind settings.
type (
	stringValue   string
	secretValue   secret
	durationValue time.Duration
	intValue      int
	boolValue     bool
	floatValue    float64
	listValue     []string
)

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }
func (v *secretValue) Set(s string) error { *v = secretValue(s); return nil }
func (v *secretValue) String() string     { return secret(*v).String() }
func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration (e.g. 30s, 5m): %q", s)
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }
func (v *intValue) Set(s string) error {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		return fmt.Errorf("not an integer: %q", s)
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return fmt.Sprint(int(*v)) }
func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("not a boolean (true or false): %q", s)
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string { return strconv.FormatBool(bool(*v)) }

func (v *floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != f {
		return fmt.Errorf("not a number: %q", s)
	}
	*v = floatValue(f)
	return nil
}
func (v *floatValue) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }

// IsBoolFlag lets --l1-enabled stand for --l1-enabled=true.
func (v *boolValue) IsBoolFlag() bool { return true }
func (v *listValue) Set(s string) error {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	*v = slices.Clip(out)
	return nil
}
func (v *listValue) String() string { return strings.Join(*v, ",") }

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
