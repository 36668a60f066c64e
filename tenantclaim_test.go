package main

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestTenantClaimAnswers: what the README says of sessions and tenants,
// with several tenants: an unknown tenant is 403 unknown_tenant; no (or an
// empty) tenant claim is 401 invalid_session, reason bad_tenant_claim;
// neither reaches a tenant.
func TestTenantClaimAnswers(t *testing.T) {
	dir := t.TempDir()
	a, b := newFakeTenant(t, dir, "acme", ""), newFakeTenant(t, dir, "globex", "")
	path := filepath.Join(dir, "tenants.yaml")
	writeTenants(t, path, a, b)
	base := startServe(t, map[string]string{"QTB_TENANTS_FILE": path, "QTB_TENANT_CLAIM": "tenant", "QTB_SESSION_HMAC_SECRET": testHMAC})
	for _, tc := range []struct {
		claims  jwt.MapClaims
		status  int
		code    string
		message string
	}{
		{jwt.MapClaims{"sub": "x", "tenant": "umbrella"}, 403, "unknown_tenant", ""},
		{jwt.MapClaims{"sub": "x"}, 401, "invalid_session", "the session token was rejected (bad_tenant_claim)"},
		{jwt.MapClaims{"sub": "x", "tenant": ""}, 401, "invalid_session", "the session token was rejected (bad_tenant_claim)"},
	} {
		req, _ := http.NewRequest("GET", base+"/v1/token", nil)
		req.Header.Set("Authorization", "Bearer "+sessionFor(t, tc.claims))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var body struct{ Error, Message string }
		_ = json.Unmarshal(raw, &body)
		if resp.StatusCode != tc.status || body.Error != tc.code || (tc.message != "" && body.Message != tc.message) {
			t.Errorf("%v: %d %s, want %d %s %q", tc.claims, resp.StatusCode, raw, tc.status, tc.code, tc.message)
		}
	}
	if n := a.tn.Calls(qliktest.EndpointToken) + b.tn.Calls(qliktest.EndpointToken); n != 0 {
		t.Errorf("%d token calls reached a tenant", n)
	}
}
