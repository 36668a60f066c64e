package config

import (
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A groups claim needs the tenant's admin client: without one it is a
// configuration error, at start (single tenant or tenants file) and on a
// reload of the tenants file. The tenants get the claim, the prefix and the
// groups admin as the file and the settings say.
func TestGroupsNeedTheAdminClient(t *testing.T) {
	single := maps.Clone(base)
	single["QTB_GROUPS_CLAIM"] = "groups"
	if _, err := Load(nil, envFunc(single)); err == nil || !strings.Contains(err.Error(), "QTB_GROUPS_CLAIM: syncing groups needs the admin client") {
		t.Errorf("single tenant without an admin client: %v", err)
	}
	single["QTB_ADMIN_CLIENT_ID"], single["QTB_ADMIN_CLIENT_SECRET"] = "a", "admin-secret"
	single["QTB_GROUPS_PREFIX"] = "acme-"
	cfg, err := Load(nil, envFunc(single))
	if err != nil {
		t.Fatalf("single tenant with an admin client: %v", err)
	}
	ts, err := cfg.BrokerTenants(http.DefaultClient)
	if err != nil || ts[0].Groups == nil || ts[0].GroupsClaim != "groups" || ts[0].GroupsPrefix != "acme-" {
		t.Fatalf("single tenant: %+v, %v", ts, err)
	}
	if sc := cfg.SessionConfig(); sc.MaxGroups != 100 {
		t.Errorf("session MaxGroups = %d", sc.MaxGroups)
	}

	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("v"), 0o600); err != nil {
		t.Fatal(err)
	}
	entry := func(id, extra string) string {
		return "  - id: " + id + "\n    url: https://" + id + ".eu.qlikcloud.com\n    clientId: c\n    clientSecretFile: " + secret + "\n" + extra
	}
	admin := "    adminClientId: a\n    adminClientSecretFile: " + secret + "\n"
	file := filepath.Join(t.TempDir(), "tenants.yaml")
	for _, tc := range []struct {
		name, yaml, claim string
		refused           bool
	}{
		{"own claim, no admin", entry("acme", "    groupsClaim: groups\n"), "", true},
		{"global claim, no admin", entry("acme", ""), "groups", true},
		{"global claim, one without admin", entry("acme", admin) + entry("globex", ""), "groups", true},
		{"own claim with admin, other without", entry("acme", admin+"    groupsClaim: groups\n    groupsPrefix: acme-\n") + entry("globex", ""), "", false},
		{"no claim", entry("acme", ""), "", false},
	} {
		if err := os.WriteFile(file, []byte("tenants:\n"+tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"QTB_TENANTS_FILE": file, "QTB_TENANT_CLAIM": "tenant", "QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32)}
		if tc.claim != "" {
			env["QTB_GROUPS_CLAIM"] = tc.claim
		}
		cfg, err := Load(nil, envFunc(env))
		if refused := err != nil && strings.Contains(err.Error(), "syncing groups (groupsClaim or QTB_GROUPS_CLAIM) needs adminClientId"); refused != tc.refused {
			t.Errorf("%s: %v", tc.name, err)
		}
		ts, err := cfg.ReloadTenants([]byte("tenants:\n"+tc.yaml), http.DefaultClient)
		if (err != nil) != tc.refused {
			t.Errorf("%s: reload: %v", tc.name, err)
		}
		if tc.name == "own claim with admin, other without" && err == nil {
			if ts[0].Groups == nil || ts[0].GroupsClaim != "groups" || ts[0].GroupsPrefix != "acme-" || ts[1].Groups != nil || ts[1].GroupsClaim != "" {
				t.Errorf("%s: tenants %+v", tc.name, ts)
			}
		}
	}
}

func TestGroupsSettingsChecked(t *testing.T) {
	for _, tc := range []struct{ env, value, want string }{
		{"QTB_GROUPS_MAX", "0", "QTB_GROUPS_MAX: must be between 1 and 1000"},
		{"QTB_GROUPS_MAX", "1001", "QTB_GROUPS_MAX: must be between 1 and 1000"},
		{"QTB_GROUPS_PREFIX", strings.Repeat("x", 257), "QTB_GROUPS_PREFIX: must be at most 256 characters"},
		{"QTB_GROUPS_PREFIX", "a\tb", "QTB_GROUPS_PREFIX: must not contain control characters"},
		{"QTB_GROUPS_CLAIM", " groups", "QTB_GROUPS_CLAIM: has leading or trailing spaces"},
	} {
		env := maps.Clone(base)
		env[tc.env] = tc.value
		if _, err := Load(nil, envFunc(env)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%q: %v", tc.env, tc.value, err)
		}
	}
}

func TestGroupsWarnings(t *testing.T) {
	env := maps.Clone(base)
	env["QTB_GROUPS_CLAIM"], env["QTB_ADMIN_CLIENT_ID"], env["QTB_ADMIN_CLIENT_SECRET"] = "groups", "a", "s"
	cfg, err := Load(nil, envFunc(env))
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(cfg.Warnings(), "\n"); !strings.Contains(w, "QTB_GROUPS_PREFIX: is empty") || strings.Contains(w, "QTB_ADMIN_CLIENT_ID") {
		t.Errorf("warnings: %s", w)
	}
	env["QTB_GROUPS_PREFIX"] = "acme-"
	if cfg, err = Load(nil, envFunc(env)); err != nil || len(cfg.Warnings()) != 0 {
		t.Errorf("warnings with a prefix: %q, %v", cfg.Warnings(), err)
	}
}
