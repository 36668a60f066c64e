package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestServeSyncsGroups: `serve` wires the groups settings through: the
// session verifier reads the tenant's claim (QTB_GROUPS_CLAIM), the broker
// syncs within QTB_GROUPS_PREFIX with the admin client, and a claim over
// QTB_GROUPS_MAX is 401 bad_groups_claim; the log names no group.
func TestServeSyncsGroups(t *testing.T) {
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	admin := tn.AddAdminClient()
	p := startInProc(t, inProcOptions{tenant: tn, env: map[string]string{
		"QTB_ADMIN_CLIENT_ID": admin.ID, "QTB_ADMIN_CLIENT_SECRET": admin.Secret,
		"QTB_GROUPS_CLAIM": "roles", "QTB_GROUPS_PREFIX": "portal-", "QTB_GROUPS_MAX": "3",
	}})
	ada := tn.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Email: "ada@example.com", Status: "active"})
	session := func(roles []string) string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": ada.ID, "roles": roles,
			"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(p.hmacKey))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	resp, body := p.do(t, "GET", "/v1/token", session([]string{"portal-sales", "outside"}), nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("X-QTB-Groups") != "synced" {
		t.Fatalf("%d %q %s\n%s", resp.StatusCode, resp.Header.Get("X-QTB-Groups"), body, p.logs.String())
	}
	var names []string
	for _, g := range tn.UserGroups(ada.ID) {
		names = append(names, g.ProviderType+":"+g.Name)
	}
	if !slices.Equal(names, []string{"custom:portal-sales"}) {
		t.Fatalf("ada's groups = %q", names)
	}
	resp, body = p.do(t, "GET", "/v1/token", session([]string{"portal-a", "portal-b", "portal-c", "portal-d"}), nil, nil)
	if resp.StatusCode != 401 || !strings.Contains(string(body), "bad_groups_claim") {
		t.Fatalf("over QTB_GROUPS_MAX: %d %s", resp.StatusCode, body)
	}
	logs := p.logs.String()
	if !strings.Contains(logs, `"msg":"groups synced"`) || strings.Contains(logs, "portal-sales") {
		t.Fatalf("the sync's log line is missing, or names a group:\n%s", logs)
	}
	if m := p.scrape(t); !strings.Contains(m, `qlik_token_broker_groups_syncs_total{result="synced",tenant="default"} 1`) {
		t.Fatalf("metrics:\n%s", m)
	}
}
