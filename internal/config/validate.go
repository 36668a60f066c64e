package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// Validate returns every problem with the configuration, each naming its
// variable: those Load met reading values and files, the QTB_* settings'
// and the OTEL_* variables' together. It does no I/O: files were read by
// Load, and no client is built. Secret values are never quoted.
func (c Config) Validate() error {
	errs := slices.Clone(c.problems)
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
		if err := checkTenants(c.Tenants); err != nil {
			add("QTB_TENANTS_FILE", "%v", err)
		}
	} else {
		if c.TenantURL == "" {
			add("QTB_TENANT_URL", "required (or QTB_TENANTS_FILE)")
		} else if err := checkTenantURL(c.TenantURL); err != nil {
			add("QTB_TENANT_URL", "%v", err)
		}
		if c.ClientID == "" {
			add("QTB_CLIENT_ID", "required")
		}
		if c.ClientSecret == "" && c.ClientSecretFile == "" && c.ClientKeyFile == "" {
			add("QTB_CLIENT_SECRET", "required (or QTB_CLIENT_SECRET_FILE, or QTB_CLIENT_KEY_FILE)")
		}
		if c.UserLookup == "email" && (c.AdminClientID == "" || (c.AdminClientSecret == "" && c.AdminClientKeyFile == "")) {
			add("QTB_ADMIN_CLIENT_ID", "QTB_USER_LOOKUP=email needs an admin client (QTB_ADMIN_CLIENT_ID and its secret) to look users up")
		}
	}
	c.checkDirectory(add)
	c.checkGroups(add)
	c.checkClientKeys(add)
	if c.UpstreamTimeout <= 0 {
		add("QTB_UPSTREAM_TIMEOUT", "must be positive")
	}
	if c.UpstreamConcurrency < 1 || c.UpstreamConcurrency > 1000 {
		add("QTB_UPSTREAM_CONCURRENCY", "must be between 1 and 1000, got %d", c.UpstreamConcurrency)
	}
	if c.UpstreamRatePerMinute < 0 {
		add("QTB_UPSTREAM_RATE", "must not be negative")
	}
	if c.UpstreamBurst < 0 {
		add("QTB_UPSTREAM_BURST", "must not be negative")
	}
	switch r := c.UpstreamSharedRatePerMinute; {
	case r < 0:
		add("QTB_UPSTREAM_SHARED_RATE", "must not be negative")
	case r > 0 && (r < 0.01 || r > 1e6):
		add("QTB_UPSTREAM_SHARED_RATE", "must be 0 (off) or between 0.01 and 1000000 calls a minute, got %v", r)
	case r > 0 && !c.RedisEnabled():
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
	if c.UserRatePerMinute < 0 {
		add("QTB_USER_RATE", "must not be negative")
	}
	if c.UserBurst < 1 {
		add("QTB_USER_BURST", "must be at least 1")
	}
	if c.RefusalTTL < 0 || c.RefusalTTL > 10*time.Minute {
		add("QTB_REFUSAL_TTL", "must be between 0 (off) and 10m, got %s", c.RefusalTTL)
	}
	if c.TenantsFile != "" && len(c.Tenants) > 1 && c.TenantClaim == "" {
		add("QTB_TENANT_CLAIM", "required with several tenants (QTB_TENANTS_FILE lists %d): without it every session is refused", len(c.Tenants))
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
	if c.RedisEnabled() {
		if err := cache.CheckRedisOptions(c.RedisOptions()); err != nil {
			add("QTB_REDIS_URL", "%v", err) // cache redacts passwords
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
		case !c.RedisEnabled():
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
	if !c.L1Enabled && !c.RedisEnabled() {
		add("QTB_L1_ENABLED", "false needs Redis (QTB_REDIS_URL): the in-process cache is the only cache without it")
	}
	if c.L1MaxEntries < 1 {
		add("QTB_L1_MAX_ENTRIES", "must be at least 1")
	}
	for _, o := range c.CORSOrigins {
		if err := CheckOrigin(o); err != nil {
			add("QTB_CORS_ORIGINS", "%v", err)
		} else if !c.CORSAllowHTTP && insecureOrigin(o) {
			add("QTB_CORS_ORIGINS", "origin %q: http:// is allowed only for loopback hosts (tokens would cross the network in clear); set QTB_CORS_ALLOW_HTTP=true to allow it anyway", o)
		}
	}
	for _, t := range c.Tenants {
		for _, o := range t.AllowedOrigins {
			if !c.CORSAllowHTTP && CheckOrigin(o) == nil && insecureOrigin(o) {
				add("QTB_TENANTS_FILE", "tenant %q: allowedOrigins %q: http:// is allowed only for loopback hosts; set QTB_CORS_ALLOW_HTTP=true to allow it anyway", t.ID, o)
			}
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		add("QTB_LOG_LEVEL", "%v", err)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		add("QTB_LOG_FORMAT", "must be json or text, got %q", c.LogFormat)
	}
	if c.ServiceEnabled() {
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
	errs = append(errs, c.keyProblems()...)
	errs = append(errs, c.inertProblems()...)
	return errors.Join(errs...)
}

// CheckOrigin accepts exact origins only: scheme://host[:port], no path, no
// wildcard (a wildcard with credentials would hand tokens to any site).
func CheckOrigin(o string) error {
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

// insecureOrigin reports whether o (a checked origin) is http:// to a
// host other than loopback.
func insecureOrigin(o string) bool {
	u, err := url.Parse(o)
	return err == nil && u.Scheme == "http" && !isLoopback(u.Hostname())
}

// riskWarnings lists what works but is risky; Warnings adds them to its
// list for `serve` to log at start: they are not Validate errors.
func (c Config) riskWarnings() []string {
	var w []string
	if c.CORSAllowHTTP {
		for _, o := range c.CORSOrigins {
			if insecureOrigin(o) {
				w = append(w, fmt.Sprintf("QTB_CORS_ORIGINS: origin %q is plain http: tokens handed to it cross the network in clear", o))
			}
		}
		for _, t := range c.Tenants {
			for _, o := range t.AllowedOrigins {
				if insecureOrigin(o) {
					w = append(w, fmt.Sprintf("QTB_TENANTS_FILE: tenant %q: origin %q is plain http: tokens handed to it cross the network in clear", t.ID, o))
				}
			}
		}
	}
	if host, ok := plainRedisHost(string(c.RedisURL)); ok && !isLoopback(host) {
		w = append(w, "QTB_REDIS_URL: redis:// to a host other than loopback: tokens and the password cross the network in clear (use rediss://, and QTB_CACHE_KEY to seal tokens)")
	}
	return w
}

// plainRedisHost returns the host of a redis:// URL (not rediss://).
func plainRedisHost(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "redis" {
		return "", false
	}
	return u.Hostname(), true
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// Level is the log level QTB_LOG_LEVEL names (info when it names none).
func (c Config) Level() slog.Level {
	l, _ := parseLevel(c.LogLevel)
	return l
}

// checkTenantURL applies qlik.New's rules for a tenant URL without
// building a client: an absolute https URL with no userinfo, query,
// fragment or path, or http for a loopback host. Errors never echo the
// URL, which could hold a password.
func checkTenantURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the whole URL; keep only the reason
		}
		return fmt.Errorf("qlik: tenant URL is invalid: %w", err)
	}
	switch {
	case u.Scheme == "":
		return errors.New("qlik: tenant URL is not absolute (want https://host)")
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("qlik: tenant URL scheme %q is not https", u.Scheme)
	case u.Opaque != "" || u.Host == "":
		return errors.New("qlik: tenant URL has no host")
	case u.User != nil:
		return errors.New("qlik: tenant URL must not contain userinfo")
	case u.RawQuery != "" || u.ForceQuery:
		return errors.New("qlik: tenant URL must not contain a query")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return errors.New("qlik: tenant URL must not contain a fragment")
	case u.Path != "" && u.Path != "/":
		return errors.New("qlik: tenant URL must not contain a path")
	case u.Scheme == "http" && !isLoopback(u.Hostname()):
		return errors.New("qlik: tenant URL must use https (http is allowed only for loopback hosts)")
	}
	return nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
