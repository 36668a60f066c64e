package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTenantsFileErrorsSpeakYAML: a tenants file that does not decode is
// reported with its path, the line and field, as YAML, never in
// encoding/json's words.
func TestTenantsFileErrorsSpeakYAML(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want []string
	}{
		{"tenants:\n  - id: a\n    url: https://x\n    scopes: x\n", []string{`YAML line 4: unknown field "scopes"`, "scope, userLookup"}},
		{"tenants:\n  - id: a\n    createUsers: maybe\n", []string{"YAML line 3: tenants.createUsers: want true or false, got a string"}},
		{"tenants:\n  - id: a\n   url: x\n", []string{"not valid YAML: line 2"}},
		{"tenants:\n  - id: a\n    proxyPaths: /api/\n", []string{"YAML line 3: tenants.proxyPaths: want a list"}},
	} {
		file := filepath.Join(t.TempDir(), "tenants.yaml")
		if err := os.WriteFile(file, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(nil, envFunc(map[string]string{"QTB_TENANTS_FILE": file, "QTB_TENANT_CLAIM": "t", "QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32)}))
		if err == nil {
			t.Fatalf("%q accepted", tc.yaml)
		}
		for _, w := range append(tc.want, "QTB_TENANTS_FILE: "+file+": ") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error lacks %q:\n%v", tc.yaml, w, err)
			}
		}
		if strings.Contains(err.Error(), "JSON") || strings.Contains(err.Error(), "json:") {
			t.Errorf("%q: the error speaks of JSON:\n%v", tc.yaml, err)
		}
	}
}
