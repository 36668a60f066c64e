package config

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// keyProblems runs the session package's own checks of the two verifier
// configurations (minimum HMAC length, algorithms that fit the key, a PEM
// key that parses, a usable JWKS URL, ...) and names each problem by its
// variable, so they come in Validate's one list instead of failing
// NewVerifier after everything else was fixed. Fields Validate checks
// itself, and the problem of no or several keys, are left to it.
func (c Config) keyProblems() []error {
	var errs []error
	hmacEnv := func(prefix string, file string) string {
		if file != "" {
			return prefix + "_HMAC_SECRET_FILE"
		}
		return prefix + "_HMAC_SECRET"
	}
	for _, v := range []struct {
		on    bool
		cfg   session.Config
		names map[string]string
	}{
		{true, c.SessionConfig(), map[string]string{
			"HMACSecret":   hmacEnv("QTB_SESSION", c.SessionHMACSecretFile),
			"PublicKeyPEM": "QTB_SESSION_PUBLIC_KEY_FILE",
			"JWKSURL":      "QTB_SESSION_JWKS_URL",
			"Algorithms":   "QTB_SESSION_ALGORITHMS",
			"UserClaim":    "QTB_USER_CLAIM",
			"TenantClaim":  "QTB_TENANT_CLAIM",
		}},
		{c.ServiceEnabled(), c.ServiceConfig(), map[string]string{
			"HMACSecret":   hmacEnv("QTB_SERVICE", c.ServiceHMACSecretFile),
			"PublicKeyPEM": "QTB_SERVICE_PUBLIC_KEY_FILE",
			"JWKSURL":      "QTB_SERVICE_JWKS_URL",
		}},
	} {
		if !v.on {
			continue // no service credentials
		}
		for _, p := range v.cfg.Problems() {
			if env, ok := v.names[p.Field]; ok {
				errs = append(errs, fmt.Errorf("%s: %s", env, p.Problem))
			}
		}
	}
	return errs
}

// inertProblems refuses settings that would silently do nothing in the
// combination given, where the operator surely meant something else.
func (c Config) inertProblems() []error {
	var errs []error
	add := func(env, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{env}, a...)...))
	}
	if c.CreateUsers {
		switch {
		case c.TenantsFile != "":
			add("QTB_CREATE_USERS", "has no effect with QTB_TENANTS_FILE: set createUsers on the tenants-file entries")
		case c.UserLookup != session.LookupEmail:
			add("QTB_CREATE_USERS", "creates users only for email lookups: needs QTB_USER_LOOKUP=email, got %q", c.UserLookup)
		}
	}
	if c.TenantsFile != "" {
		if err := inertTenantSettings(c.Tenants, c.UserLookup); err != nil {
			add("QTB_TENANTS_FILE", "%v", err)
		}
	}
	d := Default()
	for _, j := range []struct {
		env      string
		got, def time.Duration
		max      time.Duration
	}{
		{"QTB_SESSION_JWKS_REFRESH", c.SessionJWKSRefresh, d.SessionJWKSRefresh, 24 * time.Hour},
		{"QTB_SESSION_JWKS_UNKNOWN_KID_INTERVAL", c.SessionJWKSUnknownKIDInterval, d.SessionJWKSUnknownKIDInterval, time.Hour},
	} {
		if j.got < time.Second || j.got > j.max {
			add(j.env, "must be between 1s and %s, got %s", j.max, j.got)
		}
	}
	return errs
}

// Warnings lists settings that do nothing in the combination given, and
// combinations that work but are risky (plain http origins, plain redis://
// across the network), each naming its variable; serve logs them at start.
// They are not errors: a chart or an environment may set them for a mode
// that is off.
func (c Config) Warnings() []string {
	out := c.riskWarnings()
	warn := func(env, format string, a ...any) {
		out = append(out, fmt.Sprintf("%s: "+format, append([]any{env}, a...)...))
	}
	d := Default()
	if !c.RedisEnabled() {
		for _, s := range []struct {
			env string
			set bool
		}{
			{"QTB_REDIS_MODE", c.RedisMode != d.RedisMode},
			{"QTB_REDIS_MASTER_NAME", c.RedisMasterName != ""},
			{"QTB_REDIS_CA_FILE", c.RedisCAFile != ""},
			{"QTB_REDIS_PASSWORD", c.RedisPassword != ""},
			{"QTB_CACHE_KEY", c.CacheKey != ""},
		} {
			if s.set {
				warn(s.env, "has no effect without QTB_REDIS_URL (or QTB_REDIS_ADDRS): tokens stay in process memory")
			}
		}
	}
	if !c.L1Enabled {
		if c.L1TTL != d.L1TTL {
			warn("QTB_L1_TTL", "has no effect with QTB_L1_ENABLED=false")
		}
		if c.L1MaxEntries != d.L1MaxEntries {
			warn("QTB_L1_MAX_ENTRIES", "has no effect with QTB_L1_ENABLED=false")
		}
	}
	if c.UpstreamBurst != 0 && c.UpstreamRatePerMinute == 0 {
		warn("QTB_UPSTREAM_BURST", "has no effect without QTB_UPSTREAM_RATE")
	}
	if c.UpstreamSharedBurst != d.UpstreamSharedBurst && c.UpstreamSharedRatePerMinute == 0 {
		warn("QTB_UPSTREAM_SHARED_BURST", "has no effect without QTB_UPSTREAM_SHARED_RATE")
	}
	if c.UserBurst != d.UserBurst && c.UserRatePerMinute == 0 {
		warn("QTB_USER_BURST", "has no effect without QTB_USER_RATE")
	}
	if !c.ServiceEnabled() {
		for _, s := range []struct {
			env string
			set bool
		}{
			{"QTB_SERVICE_ISSUER", c.ServiceIssuer != ""},
			{"QTB_SERVICE_AUDIENCE", c.ServiceAudience != ""},
			{"QTB_SERVICE_TENANTS_CLAIM", c.ServiceTenantsClaim != d.ServiceTenantsClaim},
		} {
			if s.set {
				warn(s.env, "has no effect without a service credential key (QTB_SERVICE_HMAC_SECRET(_FILE), QTB_SERVICE_PUBLIC_KEY_FILE or QTB_SERVICE_JWKS_URL): POST /v1/service/token is off")
			}
		}
	}
	if c.TenantsFile == "" && c.AdminClientID != "" && c.UserLookup != session.LookupEmail && c.GroupsClaim == "" {
		warn("QTB_ADMIN_CLIENT_ID", "is used only for email lookups (QTB_USER_LOOKUP=email) and the groups sync (QTB_GROUPS_CLAIM)")
	}
	out = append(out, c.groupsWarnings()...)
	if c.SessionJWKSURL == "" && c.ServiceJWKSURL == "" {
		for _, s := range []struct {
			env string
			set bool
		}{
			{"QTB_SESSION_JWKS_REFRESH", c.SessionJWKSRefresh != d.SessionJWKSRefresh},
			{"QTB_SESSION_JWKS_UNKNOWN_KID_INTERVAL", c.SessionJWKSUnknownKIDInterval != d.SessionJWKSUnknownKIDInterval},
		} {
			if s.set {
				warn(s.env, "has no effect without a JWKS URL (QTB_SESSION_JWKS_URL or QTB_SERVICE_JWKS_URL)")
			}
		}
	}
	return out
}

// inertTenantSettings refuses tenants-file entries with settings that
// would do nothing: createUsers where the tenant's lookup (its own
// userLookup, or QTB_USER_LOOKUP) is not by email.
func inertTenantSettings(tenants []Tenant, defaultLookup string) error {
	var errs []error
	for _, t := range tenants {
		lookup := cmp.Or(t.UserLookup, defaultLookup)
		if t.CreateUsers && lookup != session.LookupEmail {
			errs = append(errs, fmt.Errorf("tenant %s: createUsers creates users only for email lookups: set userLookup: email (the lookup is %q)", t.ID, lookup))
		}
	}
	return errors.Join(errs...)
}
