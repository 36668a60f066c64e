package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigRefusesWhatCannotWork: several tenants without a tenant claim,
// and http:// origins of hosts other than loopback unless allowed, are
// errors naming their variable; the allowance and plain redis:// to a
// remote host are warnings instead.
func TestConfigRefusesWhatCannotWork(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	twoTenants := filepath.Join(dir, "tenants.yaml")
	entry := func(id, origin string) string {
		return "  - id: " + id + "\n    url: https://" + id + ".eu.qlikcloud.com\n    clientId: c\n    clientSecretFile: " + secret +
			"\n    allowedOrigins: [" + origin + "]\n"
	}
	if err := os.WriteFile(twoTenants, []byte("tenants:\n"+entry("acme", "https://acme.example.com")+entry("globex", "http://globex.example.com")), 0o600); err != nil {
		t.Fatal(err)
	}
	fileEnv := map[string]string{"QTB_TENANTS_FILE": twoTenants, "QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32)}
	for _, tc := range []struct {
		name     string
		env      map[string]string
		errs     []string // each must appear
		warnings []string
	}{
		{"two tenants, no claim", fileEnv, []string{"QTB_TENANT_CLAIM: required with several tenants", `allowedOrigins "http://globex.example.com"`}, nil},
		{"two tenants, a claim, http allowed", with(with(fileEnv, "QTB_TENANT_CLAIM", "org"), "QTB_CORS_ALLOW_HTTP", "true"), nil,
			[]string{`tenant "globex": origin "http://globex.example.com" is plain http`}},
		{"http origin", with(base, "QTB_CORS_ORIGINS", "https://a.example.com,http://b.example.com"), []string{`QTB_CORS_ORIGINS: origin "http://b.example.com": http:// is allowed only for loopback`}, nil},
		{"http loopback origin", with(base, "QTB_CORS_ORIGINS", "http://localhost:3000,http://127.0.0.1:8080"), nil, nil},
		{"http origin allowed", with(with(base, "QTB_CORS_ORIGINS", "http://b.example.com"), "QTB_CORS_ALLOW_HTTP", "true"), nil,
			[]string{`origin "http://b.example.com" is plain http`}},
		{"plain redis to a remote host", with(base, "QTB_REDIS_URL", "redis://redis.internal:6379/0"), nil, []string{"QTB_REDIS_URL: redis:// to a host other than loopback"}},
		{"plain redis on loopback", with(base, "QTB_REDIS_URL", "redis://127.0.0.1:6379/0"), nil, nil},
		{"rediss", with(base, "QTB_REDIS_URL", "rediss://redis.internal:6380/0"), nil, nil},
		{"refusal ttl", with(base, "QTB_REFUSAL_TTL", "1h"), []string{"QTB_REFUSAL_TTL: must be between 0 (off) and 10m"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(nil, envFunc(tc.env)) // Load validates
			if err == nil {
				err = cfg.Validate()
			}
			switch {
			case len(tc.errs) == 0 && err != nil:
				t.Fatalf("Validate: %v", err)
			case len(tc.errs) > 0 && err == nil:
				t.Fatalf("Validate passed, want %q", tc.errs)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Validate = %v, want %q", err, want)
				}
			}
			if err != nil {
				return
			}
			warnings := strings.Join(cfg.Warnings(), "\n")
			if len(tc.warnings) == 0 && warnings != "" {
				t.Errorf("warnings %q, want none", warnings)
			}
			for _, want := range tc.warnings {
				if !strings.Contains(warnings, want) {
					t.Errorf("warnings %q, want %q", warnings, want)
				}
			}
			if strings.Contains(warnings, "redis.internal") {
				t.Error("a warning quotes the Redis URL")
			}
		})
	}
}

// TestReloadRefusesTenantsWithoutClaim: a reload that brings a second
// tenant without QTB_TENANT_CLAIM is refused; the current tenants stay.
func TestReloadRefusesTenantsWithoutClaim(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	raw := "tenants:\n"
	for _, id := range []string{"acme", "globex"} {
		raw += "  - id: " + id + "\n    url: https://" + id + ".eu.qlikcloud.com\n    clientId: c\n    clientSecretFile: " + secret + "\n"
	}
	if _, err := (Config{}).ReloadTenants([]byte(raw), nil); err == nil || !strings.Contains(err.Error(), "QTB_TENANT_CLAIM") {
		t.Fatalf("reload without a claim = %v", err)
	}
	if _, err := (Config{TenantClaim: "org"}).ReloadTenants([]byte(raw), nil); err != nil {
		t.Fatalf("reload with a claim: %v", err)
	}
}
