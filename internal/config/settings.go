package config

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Setting is one variable `serve` reads, and the flag that can stand for it.
type Setting struct {
	Env   string // QTB_TENANT_URL
	Flag  string // tenant-url, given as --tenant-url
	Usage string
	// Default is the value before any variable or flag is read, as the
	// flag listing prints it; empty when there is none.
	Default string
	// Secret marks a credential: its value never prints. Where a _FILE
	// variable exists beside it, that is the form to use.
	Secret bool
}

// Settings lists every variable `serve` reads, in the order the README
// shows them. (Tracing reads the standard OTEL_* variables besides.)
func Settings() []Setting {
	c := Default()
	settings := c.settings()
	out := make([]Setting, len(settings))
	for i, s := range settings {
		_, secret := s.value.(*secretValue)
		out[i] = Setting{Env: s.env, Flag: s.flagName(), Usage: s.usage, Default: s.value.String(), Secret: secret}
	}
	return out
}

// PrintFlags writes the flag listing of command name, with the values of c
// (the defaults, for --help); secrets show as REDACTED.
func PrintFlags(w io.Writer, name string, c Config) {
	fmt.Fprintf(w, "Usage: qlik-token-broker %s [flags]\n\nEach flag can also be set by its environment variable.\n\n", name)
	for _, s := range c.settings() {
		def := s.value.String()
		if def != "" {
			def = " (default " + def + ")"
		}
		fmt.Fprintf(w, "  --%-28s %s\n  %-30s %s%s\n", s.flagName(), s.env, "", s.usage, def)
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
func (c *Config) settings() []setting {
	return []setting{
		{"QTB_LISTEN", "API listen address", (*stringValue)(&c.Listen)},
		{"QTB_METRICS_LISTEN", "metrics listen address (serves /metrics)", (*stringValue)(&c.MetricsListen)},
		{"QTB_TENANT_URL", "Qlik Cloud tenant URL, e.g. https://acme.eu.qlikcloud.com", (*stringValue)(&c.TenantURL)},
		{"QTB_CLIENT_ID", "impersonation OAuth client id", (*stringValue)(&c.ClientID)},
		{"QTB_CLIENT_SECRET", "impersonation OAuth client secret (prefer QTB_CLIENT_SECRET_FILE)", (*secretValue)(&c.ClientSecret)},
		{"QTB_CLIENT_SECRET_FILE", "file holding the OAuth client secret", (*stringValue)(&c.ClientSecretFile)},
		{"QTB_CLIENT_KEY_FILE", "PEM private key (PKCS#8, PKCS#1 or SEC1) the client authenticates with instead of a secret (Private Key JWT)", (*stringValue)(&c.ClientKeyFile)},
		{"QTB_CLIENT_KEY_ID", "kid the client's public key is registered under (default: its RFC 7638 thumbprint)", (*stringValue)(&c.ClientKeyID)},
		{"QTB_CLIENT_KEY_ALG", "RS256 or RS512 for an RSA key (default RS256), ES384 for a P-384 key", (*stringValue)(&c.ClientKeyAlg)},
		{"QTB_SCOPE", "scope requested for impersonation tokens", (*stringValue)(&c.Scope)},
		{"QTB_TENANTS_FILE", "YAML file listing the tenants (instead of QTB_TENANT_URL/QTB_CLIENT_*); reloaded on change and on SIGHUP", (*stringValue)(&c.TenantsFile)},
		{"QTB_TENANT_CLAIM", "session claim naming the tenant (required with several tenants)", (*stringValue)(&c.TenantClaim)},
		{"QTB_ADMIN_CLIENT_ID", "admin OAuth client (scope admin_classic) for email lookups in single-tenant mode", (*stringValue)(&c.AdminClientID)},
		{"QTB_ADMIN_CLIENT_SECRET", "its secret (prefer the _FILE form)", (*secretValue)(&c.AdminClientSecret)},
		{"QTB_ADMIN_CLIENT_SECRET_FILE", "file holding the admin client secret", (*stringValue)(&c.AdminClientSecretFile)},
		{"QTB_ADMIN_CLIENT_KEY_FILE", "PEM private key of the admin client, instead of its secret", (*stringValue)(&c.AdminClientKeyFile)},
		{"QTB_ADMIN_CLIENT_KEY_ID", "kid of the admin client's public key (default: its thumbprint)", (*stringValue)(&c.AdminClientKeyID)},
		{"QTB_ADMIN_CLIENT_KEY_ALG", "RS256, RS512 or ES384 for the admin client's key", (*stringValue)(&c.AdminClientKeyAlg)},
		{"QTB_CREATE_USERS", "with QTB_USER_LOOKUP=email, create unknown users just in time", (*boolValue)(&c.CreateUsers)},
		{"QTB_ADMIN_SCOPE", "scope of the admin client's token for the users API: admin_classic or admin.users", (*stringValue)(&c.AdminScope)},
		{"QTB_JIT_SUBJECT_PREFIX", "subject of a user created just in time: this prefix + the email; keep it apart from every IdP's subjects", (*stringValue)(&c.JITSubjectPrefix)},
		{"QTB_GROUPS_CLAIM", "session claim holding the user's group names (a JSON array); set, the broker keeps the user's Qlik custom groups in step with it before answering a token; needs the admin client (empty: off)", (*stringValue)(&c.GroupsClaim)},
		{"QTB_GROUPS_PREFIX", "only custom groups whose names start with this are created, added or removed; other claim names are left out (empty: every custom group)", (*stringValue)(&c.GroupsPrefix)},
		{"QTB_GROUPS_MAX", "most entries a groups claim may hold; more is a 401 bad_groups_claim", (*intValue)(&c.GroupsMax)},
		{"QTB_UPSTREAM_TIMEOUT", "timeout of one call to the tenant", (*durationValue)(&c.UpstreamTimeout)},
		{"QTB_UPSTREAM_CONCURRENCY", "most token calls in flight to the tenant from this replica; more wait", (*intValue)(&c.UpstreamConcurrency)},
		{"QTB_UPSTREAM_RATE", "token calls per minute this replica may make to the tenant (0: unlimited); Qlik allows about 100 per tenant", (*floatValue)(&c.UpstreamRatePerMinute)},
		{"QTB_UPSTREAM_BURST", "token calls that may go out at once under QTB_UPSTREAM_RATE (default: QTB_UPSTREAM_CONCURRENCY)", (*intValue)(&c.UpstreamBurst)},
		{"QTB_UPSTREAM_SHARED_RATE", "token calls per minute all replicas together may make to each tenant, counted in Redis (0: off; e.g. 90 under Qlik's 100); while Redis fails only the per-replica limits hold", (*floatValue)(&c.UpstreamSharedRatePerMinute)},
		{"QTB_UPSTREAM_SHARED_BURST", "token calls that may go out at once under QTB_UPSTREAM_SHARED_RATE; a tenant sees at most rate + burst calls in any minute", (*intValue)(&c.UpstreamSharedBurst)},
		{"QTB_UPSTREAM_RETRIES", "retries of a token call after a 5xx, timeout or connection failure (0: none)", (*intValue)(&c.UpstreamRetries)},
		{"QTB_UPSTREAM_BREAKER_FAILURES", "consecutive tenant failures that open its circuit breaker", (*intValue)(&c.UpstreamBreakerFailures)},
		{"QTB_UPSTREAM_BREAKER_OPEN", "how long an open breaker refuses calls before probing the tenant", (*durationValue)(&c.UpstreamBreakerOpen)},
		{"QTB_USER_RATE", "token requests per minute one identity may make (0: unlimited); beyond it 429", (*floatValue)(&c.UserRatePerMinute)},
		{"QTB_USER_BURST", "token requests one identity may make at once under QTB_USER_RATE", (*intValue)(&c.UserBurst)},
		{"QTB_REFUSAL_TTL", "remember the tenant refusing a user (unknown, disabled) this long and answer repeats without a token call (0: off); shared through Redis", (*durationValue)(&c.RefusalTTL)},
		{"QTB_SESSION_HMAC_SECRET", "HMAC key of session JWTs (prefer the _FILE form)", (*secretValue)(&c.SessionHMACSecret)},
		{"QTB_SESSION_HMAC_SECRET_FILE", "file holding the HMAC key of session JWTs", (*stringValue)(&c.SessionHMACSecretFile)},
		{"QTB_SESSION_PUBLIC_KEY_FILE", "PEM public key (RSA, ECDSA, Ed25519) or certificate verifying session JWTs", (*stringValue)(&c.SessionPublicKeyFile)},
		{"QTB_SESSION_JWKS_URL", "JWKS URL with the keys verifying session JWTs", (*stringValue)(&c.SessionJWKSURL)},
		{"QTB_SESSION_JWKS_REFRESH", "how often the JWKS is fetched in the background (session and service keys): a key the identity provider removed keeps verifying new tokens up to this long; SIGHUP fetches at once", (*durationValue)(&c.SessionJWKSRefresh)},
		{"QTB_SESSION_JWKS_UNKNOWN_KID_INTERVAL", "least time between JWKS fetches that a token with an unknown kid forces", (*durationValue)(&c.SessionJWKSUnknownKIDInterval)},
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
		{"QTB_L1_TTL", "longest time a token is served from the in-process cache without asking Redis again", (*durationValue)(&c.L1TTL)},
		{"QTB_L1_ENABLED", "keep tokens in the in-process cache in front of Redis (false only for measuring the Redis path)", (*boolValue)(&c.L1Enabled)},
		{"QTB_L1_MAX_ENTRIES", "maximum tokens kept in the in-process cache", (*intValue)(&c.L1MaxEntries)},
		{"QTB_CORS_ORIGINS", "browser origins allowed to call the API, comma separated, exact match", (*listValue)(&c.CORSOrigins)},
		{"QTB_CORS_ALLOW_HTTP", "allow http:// origins of hosts other than loopback in QTB_CORS_ORIGINS and tenants' allowedOrigins (tokens then cross the network in clear); a warning at start", (*boolValue)(&c.CORSAllowHTTP)},
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

// The flag.Value types behind settings.
type (
	stringValue   string
	secretValue   Secret
	durationValue time.Duration
	intValue      int
	boolValue     bool
	floatValue    float64
	listValue     []string
)

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }
func (v *secretValue) Set(s string) error { *v = secretValue(s); return nil }
func (v *secretValue) String() string     { return Secret(*v).String() }
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
