// Package config is the configuration of `serve`: the settings table (each
// QTB_* variable is also a flag), Load, which reads the environment, the
// flags and every file the settings name exactly once, and Validate, which
// checks the result without any I/O and reports every problem at once,
// each by its variable's name (the OTEL_* variables of tracing included).
// It also owns the tenants-file schema, the one rule for tenant ids, and
// the Secret type that never prints a credential.
//
// The service packages know nothing of it: Config turns itself into
// their configurations (broker.Config, session.Config, cache.RedisOptions).
package config

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// Config is every setting of `serve`, and the contents of the files they
// name. Rates are per minute, as the variables give them.
type Config struct {
	Listen        string
	MetricsListen string

	TenantURL             string
	ClientID              string
	ClientSecret          Secret
	ClientSecretFile      string
	Scope                 string
	TenantsFile           string
	TenantClaim           string
	AdminClientID         string
	AdminClientSecret     Secret
	AdminClientSecretFile string
	CreateUsers           bool
	// AdminScope and JITSubjectPrefix tune every tenant's users directory
	// (a tenants-file entry may override them).
	AdminScope       string
	JITSubjectPrefix string
	// The session's groups synced to Qlik custom groups (groups.go): the
	// claim (empty: off), the prefix of the groups the broker manages, and
	// the most names a claim may hold. Tenants-file entries may override
	// the claim and the prefix.
	GroupsClaim  string
	GroupsPrefix string
	GroupsMax    int
	// Private Key JWT instead of a secret: the key files, kids, algorithms
	// and the keys Load read from them.
	ClientKeyFile, ClientKeyID, ClientKeyAlg                string
	AdminClientKeyFile, AdminClientKeyID, AdminClientKeyAlg string
	ClientKey, AdminClientKey                               *qlik.SigningKey
	// Tenants are the tenants file's entries, with their secrets.
	Tenants                     []Tenant
	UpstreamTimeout             time.Duration
	UpstreamConcurrency         int
	UpstreamRatePerMinute       float64
	UpstreamBurst               int
	UpstreamSharedRatePerMinute float64
	UpstreamSharedBurst         int
	UpstreamRetries             int
	UpstreamBreakerFailures     int
	UpstreamBreakerOpen         time.Duration
	UserRatePerMinute           float64
	UserBurst                   int
	RefusalTTL                  time.Duration

	SessionHMACSecret     Secret
	SessionHMACSecretFile string
	SessionPublicKeyFile  string
	SessionPublicKeyPEM   []byte // the file's content
	SessionJWKSURL        string
	SessionAlgorithms     []string
	SessionIssuer         string
	SessionAudience       string
	SessionLeeway         time.Duration
	SessionCookie         string
	SessionCacheTTL       time.Duration
	UserClaim             string
	UserLookup            string

	// How often the JWKS (session's and service credentials') is fetched
	// in the background, and the least time between fetches an unknown
	// kid forces.
	SessionJWKSRefresh            time.Duration
	SessionJWKSUnknownKIDInterval time.Duration

	RedisURL          Secret // may carry a password
	RedisMode         string
	RedisAddrs        []string
	RedisMasterName   string
	RedisCAFile       string
	RedisCA           []byte // the CA file's content
	RedisPassword     Secret
	RedisPasswordFile string
	// The sentinels' own credentials, when they differ from the master's.
	RedisSentinelUsername     string
	RedisSentinelPassword     Secret
	RedisSentinelPasswordFile string
	CacheKey                  Secret
	CacheKeyFile              string
	TokenSkew                 time.Duration
	MinTokenTTL               time.Duration
	RefreshAhead              time.Duration
	L1TTL                     time.Duration
	L1Enabled                 bool
	L1MaxEntries              int

	CORSOrigins   []string
	CORSAllowHTTP bool

	ServiceHMACSecret     Secret
	ServiceHMACSecretFile string
	ServicePublicKeyFile  string
	ServicePublicKeyPEM   []byte // the file's content
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

	// Tracing comes from the OTEL_* variables, not from a setting.
	Tracing Tracing

	// problems are what Load could not parse or read; Validate reports
	// them with the rest.
	problems []error
}

// Default returns the configuration before any variable or flag is read.
func Default() Config {
	return Config{
		Listen:                  ":8080",
		MetricsListen:           ":9090",
		Scope:                   "user_default",
		AdminScope:              broker.DefaultAdminScope,
		JITSubjectPrefix:        broker.DefaultJITSubjectPrefix,
		GroupsMax:               session.DefaultMaxGroups,
		UpstreamTimeout:         10 * time.Second,
		UpstreamConcurrency:     8,
		UpstreamSharedBurst:     5,
		UpstreamRetries:         2,
		UpstreamBreakerFailures: 5,
		UpstreamBreakerOpen:     30 * time.Second,
		UserBurst:               10,
		RefusalTTL:              30 * time.Second,
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

		SessionJWKSRefresh:            session.DefaultJWKSRefreshInterval,
		SessionJWKSUnknownKIDInterval: session.DefaultJWKSUnknownKIDMinWait,
	}
}

// Load builds the configuration of `serve`: the defaults, then the
// environment (through getenv only), then the flags in args; then it reads
// every file the settings name, once: secrets (*_FILE), public keys, the
// Redis CA, the tenants file and the secrets it names, and the OTLP
// exporter's certificates. It returns Validate's list of every problem,
// those it met reading values and files included. A flag that does not
// parse (or -h, as flag.ErrHelp) stops it at once.
func Load(args []string, getenv func(string) string) (Config, error) {
	c := Default()
	var problems []error
	settings := c.settings()
	for _, s := range settings {
		if v := getenv(s.env); v != "" {
			if err := s.value.Set(v); err != nil {
				problems = append(problems, fmt.Errorf("%s: %w", s.env, err))
			}
		}
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	for _, s := range settings {
		fs.Var(s.value, s.flagName(), s.usage+" ("+s.env+")")
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	for _, fsec := range c.fileSecrets() {
		if *fsec.path == "" {
			continue
		}
		if *fsec.dst != "" {
			problems = append(problems, fmt.Errorf("%s and %s: set one, not both", fsec.env, fsec.fileEnv))
			continue
		}
		v, err := ReadSecretFile(*fsec.path)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", fsec.fileEnv, err))
			continue
		}
		*fsec.dst = v
	}
	for _, f := range []struct {
		env, path string
		dst       *[]byte
	}{
		{"QTB_SESSION_PUBLIC_KEY_FILE", c.SessionPublicKeyFile, &c.SessionPublicKeyPEM},
		{"QTB_SERVICE_PUBLIC_KEY_FILE", c.ServicePublicKeyFile, &c.ServicePublicKeyPEM},
		{"QTB_REDIS_CA_FILE", c.RedisCAFile, &c.RedisCA},
	} {
		if f.path == "" {
			continue
		}
		raw, err := readFile(f.path)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", f.env, err))
			continue
		}
		*f.dst = raw
	}
	problems = append(problems, c.loadClientKeys()...)
	if c.TenantsFile != "" {
		raw, err := os.ReadFile(c.TenantsFile)
		if err == nil {
			c.Tenants, err = ReadTenants(raw)
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("QTB_TENANTS_FILE: %s: %w", c.TenantsFile, err))
		}
	}
	var tracingProblems []error
	c.Tracing, tracingProblems = tracingFromEnv(getenv, readFile)
	c.problems = append(problems, tracingProblems...)
	return c, c.Validate()
}

// fileSecrets maps a *_FILE variable to the secret it fills. A value given
// both directly and as a file is a configuration error.
func (c *Config) fileSecrets() []struct {
	fileEnv, env string
	path         *string
	dst          *Secret
} {
	return []struct {
		fileEnv, env string
		path         *string
		dst          *Secret
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

// readFile reads a file a setting names; an empty one is an error, as it
// would otherwise pass for an unset setting.
func readFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("file %s is empty", path)
	}
	return raw, nil
}
