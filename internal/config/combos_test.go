package config

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInertSettings: settings that would do nothing in the combination
// given are refused where the intent is clear, and warned about otherwise,
// each by its variable; a plain configuration has no warning.
func TestInertSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want string // an error line; "" when the configuration loads
		warn string // a warning; "" when none
	}{
		{"plain", nil, "", ""},
		{"create users without email", []string{"QTB_CREATE_USERS", "true"}, "QTB_CREATE_USERS: creates users only for email lookups", ""},
		{"create users with email", []string{"QTB_CREATE_USERS", "true", "QTB_USER_LOOKUP", "email", "QTB_ADMIN_CLIENT_ID", "a", "QTB_ADMIN_CLIENT_SECRET", "s"}, "", ""},
		{"redis password without redis", []string{"QTB_REDIS_PASSWORD", "pw"}, "", "QTB_REDIS_PASSWORD: has no effect without QTB_REDIS_URL"},
		{"cache key without redis", []string{"QTB_CACHE_KEY", "k1:" + strings.Repeat("A", 43) + "="}, "", "QTB_CACHE_KEY: has no effect"},
		{"redis mode without redis", []string{"QTB_REDIS_MODE", "cluster"}, "", "QTB_REDIS_MODE: has no effect"},
		{"L1 settings with L1 off", []string{"QTB_REDIS_URL", "redis://r:6379", "QTB_L1_ENABLED", "false", "QTB_L1_TTL", "1m"}, "", "QTB_L1_TTL: has no effect with QTB_L1_ENABLED=false"},
		{"burst without rate", []string{"QTB_UPSTREAM_BURST", "3"}, "", "QTB_UPSTREAM_BURST: has no effect without QTB_UPSTREAM_RATE"},
		{"shared burst without shared rate", []string{"QTB_UPSTREAM_SHARED_BURST", "9"}, "", "QTB_UPSTREAM_SHARED_BURST: has no effect"},
		{"user burst without user rate", []string{"QTB_USER_BURST", "3"}, "", "QTB_USER_BURST: has no effect"},
		{"service audience without key", []string{"QTB_SERVICE_AUDIENCE", "jobs"}, "", "QTB_SERVICE_AUDIENCE: has no effect without a service credential key"},
		{"admin client without email", []string{"QTB_ADMIN_CLIENT_ID", "a", "QTB_ADMIN_CLIENT_SECRET", "s"}, "", "QTB_ADMIN_CLIENT_ID: is used only for email lookups"},
		{"jwks timing without jwks", []string{"QTB_SESSION_JWKS_REFRESH", "1m"}, "", "QTB_SESSION_JWKS_REFRESH: has no effect without a JWKS URL"},
		{"jwks refresh out of range", []string{"QTB_SESSION_HMAC_SECRET", "", "QTB_SESSION_JWKS_URL", "https://idp.example.com/jwks", "QTB_SESSION_JWKS_REFRESH", "0s"}, "QTB_SESSION_JWKS_REFRESH: must be between 1s and 24h0m0s", ""},
		{"unknown kid interval out of range", []string{"QTB_SESSION_HMAC_SECRET", "", "QTB_SESSION_JWKS_URL", "https://idp.example.com/jwks", "QTB_SESSION_JWKS_UNKNOWN_KID_INTERVAL", "2h"}, "QTB_SESSION_JWKS_UNKNOWN_KID_INTERVAL: must be between 1s and 1h0m0s", ""},
		{"short service secret", []string{"QTB_SERVICE_HMAC_SECRET", "short", "QTB_SERVICE_AUDIENCE", "jobs"}, "QTB_SERVICE_HMAC_SECRET: must be at least 32 bytes", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(nil, envFunc(with(base, tc.env...)))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want a line %q", err, tc.want)
			}
			warnings := strings.Join(cfg.Warnings(), "\n")
			switch {
			case tc.warn == "" && warnings != "":
				t.Errorf("unexpected warnings:\n%s", warnings)
			case tc.warn != "" && !strings.Contains(warnings, tc.warn):
				t.Errorf("warnings %q, want %q", warnings, tc.warn)
			}
		})
	}
}

// TestKeyProblemsByVariable: a PEM file that holds no usable key is named
// by its variable, the session package's field names never show.
func TestKeyProblemsByVariable(t *testing.T) {
	pem := writeSecretFile(t, "key.pem", "not a key")
	_, err := Load(nil, envFunc(with(base, "QTB_SESSION_HMAC_SECRET", "", "QTB_SESSION_PUBLIC_KEY_FILE", pem, "QTB_SESSION_ALGORITHMS", "HS256")))
	if err == nil {
		t.Fatal("accepted")
	}
	if !strings.Contains(err.Error(), `QTB_SESSION_PUBLIC_KEY_FILE: no "PUBLIC KEY"`) {
		t.Errorf("the PEM problem is not named by its variable:\n%v", err)
	}
	for _, field := range []string{"PublicKeyPEM", "HMACSecret", "invalid config"} {
		if strings.Contains(err.Error(), field) {
			t.Errorf("the error speaks of %s:\n%v", field, err)
		}
	}
	hmacFile := writeSecretFile(t, "hmac", "short")
	_, err = Load(nil, envFunc(with(base, "QTB_SESSION_HMAC_SECRET", "", "QTB_SESSION_HMAC_SECRET_FILE", hmacFile)))
	if err == nil || !strings.Contains(err.Error(), "QTB_SESSION_HMAC_SECRET_FILE: must be at least 32 bytes") {
		t.Errorf("a short secret from a file: %v", err)
	}
}

// TestInertTenantSettings: a tenants-file entry asking to create users
// for a lookup that is not by email is refused, at start and on reload.
func TestInertTenantSettings(t *testing.T) {
	secret := writeSecretFile(t, "s", "v")
	entry := func(extra string) string {
		return "tenants:\n  - id: acme\n    url: https://acme.eu.qlikcloud.com\n    clientId: c\n    clientSecretFile: " + secret +
			"\n    adminClientId: a\n    adminClientSecretFile: " + secret + "\n" + extra
	}
	file := filepath.Join(t.TempDir(), "tenants.yaml")
	for _, tc := range []struct {
		yaml, lookup string
		refused      bool
	}{
		{entry("    createUsers: true\n"), "", true},
		{entry("    createUsers: true\n    userLookup: subject\n"), "email", true},
		{entry("    createUsers: true\n    userLookup: email\n"), "", false},
		{entry("    createUsers: true\n"), "email", false},
	} {
		if err := os.WriteFile(file, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"QTB_TENANTS_FILE": file, "QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32)}
		if tc.lookup != "" {
			env["QTB_USER_LOOKUP"] = tc.lookup
		}
		cfg, err := Load(nil, envFunc(env))
		if refused := err != nil && strings.Contains(err.Error(), "QTB_TENANTS_FILE: tenant acme: createUsers creates users only for email lookups"); refused != tc.refused {
			t.Errorf("%q with QTB_USER_LOOKUP=%q: %v", tc.yaml, tc.lookup, err)
		}
		if _, err := cfg.ReloadTenants([]byte(tc.yaml), http.DefaultClient); (err != nil) != tc.refused {
			t.Errorf("reload of %q with QTB_USER_LOOKUP=%q: %v", tc.yaml, tc.lookup, err)
		}
	}
}
