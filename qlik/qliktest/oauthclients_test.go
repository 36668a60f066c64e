package qliktest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// clientJSON is a client as the API shows it.
type clientJSON struct {
	ClientID           string   `json:"clientId"`
	ClientName         string   `json:"clientName"`
	Description        string   `json:"description"`
	AppType            string   `json:"appType"`
	AllowedScopes      []string `json:"allowedScopes"`
	AllowedGrantTypes  []string `json:"allowedGrantTypes"`
	AllowedOrigins     []string `json:"allowedOrigins"`
	AllowedAuthMethods []string `json:"allowedAuthMethods"`
	RedirectURIs       []string `json:"redirectUris"`
	ClientURI          string   `json:"clientUri"`
	LogoURI            string   `json:"logoUri"`
	JWKSURI            string   `json:"jwksUri"`
	PublicKeys         []any    `json:"publicKeys"`
	OwnerID            string   `json:"ownerId"`
	CreatedAt          string   `json:"createdAt"`
	UpdatedAt          string   `json:"updatedAt"`
	ClientSecret       *string  `json:"clientSecret"`
	ClientSecretHint   string   `json:"clientSecretHint"`
	ClientSecrets      []struct {
		Hint, CreatedAt, CreatedBy string
	} `json:"clientSecrets"`
	ConnectionConfig struct {
		ConsentMethod string `json:"consentMethod"`
	} `json:"connectionConfig"`
}

type clientList struct {
	Data  []clientJSON `json:"data"`
	Links struct {
		Self struct{ Href string }
		Next *struct{ Href string }
	} `json:"links"`
}

const m2m = `{"appType":"web","clientName":"broker m2m","description":"d",
	"allowedGrantTypes":["client_credentials","urn:qlik:oauth:user-impersonation"],
	"allowedScopes":["user_default"],"allowedOrigins":["https://app.example.com"],
	"redirectUris":["https://app.example.com/cb"],"clientUri":"https://app.example.com","logoUri":"https://app.example.com/l.png"}`

func (h *adminHarness) createClient(body string) clientJSON {
	h.t.Helper()
	return decodeAs[clientJSON](h.t, h.api(http.MethodPost, "/api/v1/oauth-clients", h.bearer, body, nil), 201)
}

func (h *adminHarness) getClient(id string) clientJSON {
	h.t.Helper()
	return decodeAs[clientJSON](h.t, h.api(http.MethodGet, "/api/v1/oauth-clients/"+id, h.bearer, nil, nil), 200)
}

// impersonateWith asks /oauth/token for h.user through client id/secret.
func (h *harness) impersonateWith(id, secret string) response {
	h.t.Helper()
	return h.postJSON("/oauth/token", h.impersonate(map[string]any{"client_id": id, "client_secret": secret}))
}

func TestCreateClient(t *testing.T) {
	h := newAdminHarness(t)
	c := h.createClient(m2m)
	bot, _ := h.tn.TokenUser(h.bearer)
	if len(c.ClientID) != 32 || c.ClientSecret == nil || len(*c.ClientSecret) < 32 || c.ClientSecretHint == "" ||
		!strings.HasSuffix(*c.ClientSecret, c.ClientSecretHint) || c.AppType != "web" || c.ClientName != "broker m2m" ||
		c.Description != "d" || c.OwnerID != bot.ID || c.CreatedAt != "2024-03-17T18:21:41.000Z" ||
		c.ConnectionConfig.ConsentMethod != "required" || len(c.ClientSecrets) != 1 ||
		!slices.Equal(c.AllowedAuthMethods, []string{"client_secret"}) ||
		!slices.Equal(c.AllowedOrigins, []string{"https://app.example.com"}) {
		t.Fatalf("created %+v", c)
	}
	secret := *c.ClientSecret

	got := h.getClient(c.ClientID)
	if got.ClientSecret != nil || got.ClientName != c.ClientName || !slices.Equal(got.AllowedGrantTypes, c.AllowedGrantTypes) {
		t.Errorf("GET shows %+v", got)
	}
	stored, ok := h.tn.OAuthClientByName("broker m2m")
	if !ok || stored.ID != c.ClientID || stored.Secret != secret || stored.ConsentMethod != "required" || stored.OwnerID != bot.ID {
		t.Errorf("OAuthClientByName = %+v, %v", stored, ok)
	}

	// Usable at /oauth/token at once: client credentials yes; impersonation
	// only once consent is trusted.
	h.token(h.postJSON("/oauth/token", map[string]string{
		"client_id": c.ClientID, "client_secret": secret, "grant_type": "client_credentials"}))
	wantError(t, h.impersonateWith(c.ClientID, secret), 400, "OAUTH-5")
	if r := h.api(http.MethodPatch, "/api/v1/oauth-clients/"+c.ClientID+"/connection-configs/me", h.bearer,
		`[{"op":"replace","path":"/consentMethod","value":"trusted"}]`, nil); r.status != 204 || len(r.body) != 0 {
		t.Fatalf("consent patch: %d %s", r.status, r.body)
	}
	tok := h.token(h.impersonateWith(c.ClientID, secret)).AccessToken
	if u, err := h.tn.TokenUser(tok); err != nil || u.ID != h.user.ID {
		t.Errorf("impersonation acts for %+v, %v", u, err)
	}

	// Trusted at creation, as connectionConfig allows; spa gets no secret.
	trusted := h.createClient(`{"appType":"web","clientName":"t","allowedGrantTypes":["urn:qlik:oauth:user-impersonation"],"connectionConfig":{"consentMethod":"trusted"}}`)
	h.token(h.impersonateWith(trusted.ClientID, *trusted.ClientSecret))
	spa := h.createClient(`{"appType":"spa","clientName":"s","redirectUris":["http://localhost:3000/cb"]}`)
	if spa.ClientSecret != nil || len(spa.ClientSecrets) != 0 || len(spa.AllowedAuthMethods) != 0 {
		t.Errorf("spa client %+v", spa)
	}
	jwt := h.createClient(`{"appType":"web","clientName":"j","allowedAuthMethods":["private_key_jwt"],"jwksUri":"https://app.example.com/jwks","publicKeys":[{"kid":"k","kty":"EC","alg":"ES384","use":"sig"}]}`)
	if jwt.ClientSecret != nil || jwt.JWKSURI == "" || len(jwt.PublicKeys) != 1 {
		t.Errorf("private_key_jwt client %+v", jwt)
	}
	if n := h.tn.WriteCalls(); n != 5 {
		t.Errorf("WriteCalls = %d, want 5", n)
	}
}

func TestCreateClientValidation(t *testing.T) {
	h := newAdminHarness(t)
	tests := []struct{ name, body string }{
		{"no appType", `{"clientName":"x"}`},
		{"bad appType", `{"appType":"desktop","clientName":"x"}`},
		{"no clientName", `{"appType":"web"}`},
		{"blank clientName", `{"appType":"web","clientName":"  "}`},
		{"long clientName", `{"appType":"web","clientName":"` + strings.Repeat("n", 257) + `"}`},
		{"grants on spa", `{"appType":"spa","clientName":"x","allowedGrantTypes":["client_credentials"]}`},
		{"grants on native", `{"appType":"native","clientName":"x","allowedGrantTypes":["urn:qlik:oauth:user-impersonation"]}`},
		{"unknown grant", `{"appType":"web","clientName":"x","allowedGrantTypes":["password"]}`},
		{"unknown scope", `{"appType":"web","clientName":"x","allowedScopes":["user_defualt"]}`},
		{"unknown auth method", `{"appType":"web","clientName":"x","allowedAuthMethods":["none"]}`},
		{"origin with path", `{"appType":"web","clientName":"x","allowedOrigins":["https://app.example.com/"]}`},
		{"origin without scheme", `{"appType":"web","clientName":"x","allowedOrigins":["app.example.com"]}`},
		{"relative redirect", `{"appType":"web","clientName":"x","redirectUris":["/cb"]}`},
		{"bad clientUri", `{"appType":"web","clientName":"x","clientUri":"javascript:alert(1)"}`},
		{"bad consent", `{"appType":"web","clientName":"x","connectionConfig":{"consentMethod":"always"}}`},
		{"publicKeys not array", `{"appType":"web","clientName":"x","publicKeys":{"kid":"k"}}`},
		{"unknown field", `{"appType":"web","clientName":"x","redirectURIs":["https://a.example.com"]}`},
		{"scopes not array", `{"appType":"web","clientName":"x","allowedScopes":"user_default"}`},
		{"not JSON", `appType=web`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, h.api(http.MethodPost, "/api/v1/oauth-clients", h.bearer, tt.body, nil), 400, "HTTP-400")
		})
	}
	if _, ok := h.tn.OAuthClientByName("x"); ok {
		t.Error("a refused create stored a client")
	}
}

func TestListClients(t *testing.T) {
	h := newAdminHarness(t)
	var made []string
	for i := range 7 {
		made = append(made, h.createClient(fmt.Sprintf(`{"appType":"web","clientName":"batch %d"}`, i)).ClientID)
	}
	spa := h.createClient(`{"appType":"spa","clientName":"Batch spa"}`)
	odd := h.createClient(`{"appType":"native","clientName":"a\"b\\c"}`)

	list := func(kv ...string) clientList {
		t.Helper()
		q := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return decodeAs[clientList](t, h.api(http.MethodGet, "/api/v1/oauth-clients?"+q.Encode(), h.bearer, nil, nil), 200)
	}
	names := func(l clientList) []string {
		var n []string
		for _, c := range l.Data {
			n = append(n, c.ClientName)
			if c.ClientSecret != nil {
				t.Errorf("list shows the secret of %s", c.ClientName)
			}
		}
		return n
	}

	// Default page is 10, in creation order: broker, admin, then ours.
	first := list()
	if len(first.Data) != 10 || first.Data[0].ClientID != h.client.ID || first.Data[1].ClientID != h.admin.ID ||
		first.Data[2].ClientID != made[0] || first.Links.Next == nil {
		t.Fatalf("first page %q next %v", names(first), first.Links.Next)
	}
	u, _ := url.Parse(first.Links.Next.Href)
	rest := decodeAs[clientList](t, h.api(http.MethodGet, u.RequestURI(), h.bearer, nil, nil), 200)
	if got := names(rest); !slices.Equal(got, []string{"a\"b\\c"}) || rest.Links.Next != nil {
		t.Errorf("second page %q", got)
	}

	tests := []struct {
		filter, sort string
		want         []string
	}{
		{`clientName co "batch"`, "", []string{"batch 0", "batch 1", "batch 2", "batch 3", "batch 4", "batch 5", "batch 6", "Batch spa"}},
		{`clientName co "batch" and appType eq "spa"`, "", []string{"Batch spa"}},
		{`appType eq "SPA"`, "", []string{"Batch spa"}},
		{`clientName eq "batch 3" or clientId eq "` + made[5] + `"`, "", []string{"batch 3", "batch 5"}},
		{`clientName eq "a\"b\\c"`, "", []string{"a\"b\\c"}},
		{`clientId eq "` + odd.ClientID + `"`, "", []string{"a\"b\\c"}},
		{`clientName sw "batch" and not (appType eq "web")`, "", []string{"Batch spa"}},
		{`clientName co "batch"`, "-clientName", []string{"Batch spa", "batch 6", "batch 5", "batch 4", "batch 3", "batch 2", "batch 1", "batch 0"}},
		{`appType ne "web"`, "+appType", []string{"a\"b\\c", "Batch spa"}},
		{`appType ne "web"`, "-createdAt", []string{"a\"b\\c", "Batch spa"}},
		{`clientName eq "nope"`, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.filter+" "+tt.sort, func(t *testing.T) {
			if got := names(list("filter", tt.filter, "sort", tt.sort, "limit", "100")); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}

	// limit 3 over the 8 batch clients: 3 pages, every one once.
	var seen []string
	path := "/api/v1/oauth-clients?" + url.Values{"filter": {`clientName co "batch"`}, "limit": {"3"}}.Encode()
	pages := 0
	for path != "" {
		l := decodeAs[clientList](t, h.api(http.MethodGet, path, h.bearer, nil, nil), 200)
		pages++
		seen = append(seen, names(l)...)
		path = ""
		if l.Links.Next != nil {
			u, _ := url.Parse(l.Links.Next.Href)
			path = u.RequestURI()
		}
	}
	if pages != 3 || len(seen) != 8 || seen[7] != spa.ClientName {
		t.Errorf("%d pages: %q", pages, seen)
	}

	for _, q := range []string{"filter=description+eq+%22x%22", "filter=clientName+eq", "sort=description", "limit=101", "next=%25%25"} {
		t.Run("bad "+q, func(t *testing.T) {
			wantError(t, h.api(http.MethodGet, "/api/v1/oauth-clients?"+q, h.bearer, nil, nil), 400, "HTTP-400")
		})
	}
}

func TestPatchClient(t *testing.T) {
	h := newAdminHarness(t)
	c := h.createClient(m2m)
	path := "/api/v1/oauth-clients/" + c.ClientID
	patch := func(ops string) response { return h.api(http.MethodPatch, path, h.bearer, ops, nil) }

	ok := []struct {
		name, ops string
		check     func(clientJSON) bool
	}{
		{"replace name", `[{"op":"replace","path":"/clientName","value":"renamed"}]`,
			func(c clientJSON) bool { return c.ClientName == "renamed" }},
		{"add origin appends", `[{"op":"add","path":"/allowedOrigins","value":"https://b.example.com"}]`,
			func(c clientJSON) bool {
				return slices.Equal(c.AllowedOrigins, []string{"https://app.example.com", "https://b.example.com"})
			}},
		{"replace origins", `[{"op":"replace","path":"/allowedOrigins","value":["https://c.example.com"]}]`,
			func(c clientJSON) bool { return slices.Equal(c.AllowedOrigins, []string{"https://c.example.com"}) }},
		{"add scopes array sets", `[{"op":"add","path":"/allowedScopes","value":["user_default","admin.apps"]}]`,
			func(c clientJSON) bool { return slices.Equal(c.AllowedScopes, []string{"user_default", "admin.apps"}) }},
		{"remove description", `[{"op":"remove","path":"/description"}]`,
			func(c clientJSON) bool { return c.Description == "" }},
		{"several ops", `[{"op":"replace","path":"/description","value":"x"},{"op":"remove","path":"/redirectUris"},{"op":"replace","path":"/logoUri","value":"https://l.example.com/x.png"}]`,
			func(c clientJSON) bool {
				return c.Description == "x" && len(c.RedirectURIs) == 0 && c.LogoURI == "https://l.example.com/x.png"
			}},
		{"drop a grant", `[{"op":"replace","path":"/allowedGrantTypes","value":["client_credentials"]}]`,
			func(c clientJSON) bool { return slices.Equal(c.AllowedGrantTypes, []string{"client_credentials"}) }},
		{"publicKeys and jwksUri", `[{"op":"add","path":"/publicKeys","value":[{"kid":"k","kty":"EC"}]},{"op":"add","path":"/jwksUri","value":"https://j.example.com"}]`,
			func(c clientJSON) bool { return len(c.PublicKeys) == 1 && c.JWKSURI == "https://j.example.com" }},
		{"client_secret already allowed: 204", `[{"op":"replace","path":"/allowedAuthMethods","value":["client_secret","private_key_jwt"]}]`,
			func(c clientJSON) bool { return len(c.ClientSecrets) == 1 }},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			if r := patch(tt.ops); r.status != 204 || len(r.body) != 0 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if got := h.getClient(c.ClientID); !tt.check(got) {
				t.Errorf("after patch: %+v", got)
			}
		})
	}
	// The dropped grant is enforced at once.
	h.tn.SetConsentMethod(c.ClientID, "trusted")
	wantError(t, h.impersonateWith(c.ClientID, *c.ClientSecret), 400, "OAUTH-4")

	before := h.getClient(c.ClientID)
	bad := []struct{ name, ops string }{
		{"appType immutable", `[{"op":"replace","path":"/appType","value":"spa"}]`},
		{"unknown path", `[{"op":"replace","path":"/ownerId","value":"x"}]`},
		{"element path", `[{"op":"add","path":"/allowedOrigins/-","value":"https://d.example.com"}]`},
		{"move", `[{"op":"move","from":"/description","path":"/clientUri"}]`},
		{"test", `[{"op":"test","path":"/clientName","value":"renamed"}]`},
		{"remove required name", `[{"op":"remove","path":"/clientName"}]`},
		{"missing value", `[{"op":"replace","path":"/description"}]`},
		{"null value", `[{"op":"replace","path":"/description","value":null}]`},
		{"string path given array", `[{"op":"replace","path":"/description","value":["x"]}]`},
		{"array path given number", `[{"op":"replace","path":"/allowedOrigins","value":5}]`},
		{"replace array with string", `[{"op":"replace","path":"/allowedOrigins","value":"https://d.example.com"}]`},
		{"invalid result", `[{"op":"add","path":"/allowedScopes","value":"nope"}]`},
		{"atomic", `[{"op":"replace","path":"/description","value":"changed"},{"op":"replace","path":"/appType","value":"spa"}]`},
		{"not an array", `{"op":"replace","path":"/description","value":"x"}`},
		{"unknown member", `[{"op":"replace","path":"/description","value":"x","extra":1}]`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) { wantError(t, patch(tt.ops), 400, "HTTP-400") })
	}
	if after := h.getClient(c.ClientID); after.Description != before.Description || after.UpdatedAt != before.UpdatedAt {
		t.Errorf("refused patches changed the client: %+v", after)
	}
	wantError(t, h.api(http.MethodPatch, "/api/v1/oauth-clients/nope", h.bearer, `[{"op":"remove","path":"/description"}]`, nil), 404, "HTTP-404")
	r := h.mustDo(http.MethodPatch, path, "application/json-patch+json", `[{"op":"replace","path":"/description","value":"jp"}]`,
		http.Header{"Authorization": {"Bearer " + h.bearer}})
	if r.status != 204 || h.getClient(c.ClientID).Description != "jp" {
		t.Errorf("application/json-patch+json: %d %s", r.status, r.body)
	}
}

// A patch that adds client_secret to a web client without it makes a secret
// and answers 202 with it: the trigger @qlik/api documents.
func TestPatchClientMakesSecret(t *testing.T) {
	h := newAdminHarness(t)
	c := h.createClient(`{"appType":"web","clientName":"keyed","allowedGrantTypes":["client_credentials"],"allowedAuthMethods":["private_key_jwt"]}`)
	if c.ClientSecret != nil {
		t.Fatal("private_key_jwt client got a secret")
	}
	r := h.api(http.MethodPatch, "/api/v1/oauth-clients/"+c.ClientID, h.bearer,
		`[{"op":"add","path":"/allowedAuthMethods","value":"client_secret"}]`, nil)
	got := decodeAs[struct{ ClientSecret string }](t, r, 202)
	if len(got.ClientSecret) < 32 {
		t.Fatalf("202 body %s", r.body)
	}
	h.token(h.postJSON("/oauth/token", map[string]string{
		"client_id": c.ClientID, "client_secret": got.ClientSecret, "grant_type": "client_credentials"}))
	// Removing client_secret again stops the secret authenticating.
	if r := h.api(http.MethodPatch, "/api/v1/oauth-clients/"+c.ClientID, h.bearer,
		`[{"op":"replace","path":"/allowedAuthMethods","value":["private_key_jwt"]}]`, nil); r.status != 204 {
		t.Fatalf("status %d", r.status)
	}
	wantError(t, h.postJSON("/oauth/token", map[string]string{
		"client_id": c.ClientID, "client_secret": got.ClientSecret, "grant_type": "client_credentials"}), 400, "OAUTH-14")
}

func TestDeleteClient(t *testing.T) {
	h := newAdminHarness(t)
	c := h.createClient(m2m)
	path := "/api/v1/oauth-clients/" + c.ClientID
	for _, hdr := range []http.Header{nil, {"Qlik-Confirm-Delete": {"other"}}, {"Qlik-Confirm-Delete": {strings.ToUpper(c.ClientID)}}} {
		wantError(t, h.api(http.MethodDelete, path, h.bearer, nil, hdr), 400, "HTTP-400")
	}
	if _, ok := h.tn.OAuthClient(c.ClientID); !ok {
		t.Fatal("deleted without confirmation")
	}
	if r := h.api(http.MethodDelete, path, h.bearer, nil, http.Header{"qlik-confirm-delete": {c.ClientID}}); r.status != 204 || len(r.body) != 0 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	wantError(t, h.api(http.MethodGet, path, h.bearer, nil, nil), 404, "HTTP-404")
	wantError(t, h.api(http.MethodDelete, path, h.bearer, nil, http.Header{"qlik-confirm-delete": {c.ClientID}}), 404, "HTTP-404")
	wantError(t, h.postJSON("/oauth/token", map[string]string{
		"client_id": c.ClientID, "client_secret": *c.ClientSecret, "grant_type": "client_credentials"}), 400, "OAUTH-14")
}

func TestClientSecrets(t *testing.T) {
	h := newAdminHarness(t)
	c := h.createClient(m2m)
	base := "/api/v1/oauth-clients/" + c.ClientID + "/client-secrets"
	type secretJSON struct{ ClientID, ClientSecret, Hint, CreatedAt, CreatedBy string }
	var made []secretJSON
	for range 4 {
		s := decodeAs[secretJSON](t, h.api(http.MethodPost, base, h.bearer, nil, nil), 201)
		if s.ClientID != c.ClientID || len(s.ClientSecret) < 32 || s.Hint == "" || s.CreatedAt == "" {
			t.Fatalf("secret %+v", s)
		}
		made = append(made, s)
	}
	wantError(t, h.api(http.MethodPost, base, h.bearer, nil, nil), 409, "HTTP-409")
	got := h.getClient(c.ClientID)
	if len(got.ClientSecrets) != 5 || got.ClientSecretHint != made[3].Hint {
		t.Errorf("client shows %+v", got.ClientSecrets)
	}
	cc := func(secret string) response {
		return h.postJSON("/oauth/token", map[string]string{"client_id": c.ClientID, "client_secret": secret, "grant_type": "client_credentials"})
	}
	// Every secret authenticates until deleted.
	h.token(cc(*c.ClientSecret))
	h.token(cc(made[2].ClientSecret))
	if r := h.api(http.MethodDelete, base+"/"+made[2].Hint, h.bearer, nil, nil); r.status != 204 || len(r.body) != 0 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	wantError(t, cc(made[2].ClientSecret), 400, "OAUTH-14")
	h.token(cc(made[1].ClientSecret))
	wantError(t, h.api(http.MethodDelete, base+"/"+made[2].Hint, h.bearer, nil, nil), 404, "HTTP-404")
	wantError(t, h.api(http.MethodDelete, base+"/nohint", h.bearer, nil, nil), 404, "HTTP-404")
	wantError(t, h.api(http.MethodPost, "/api/v1/oauth-clients/nope/client-secrets", h.bearer, nil, nil), 404, "HTTP-404")
	decodeAs[secretJSON](t, h.api(http.MethodPost, base, h.bearer, nil, nil), 201) // room again
	spa := h.createClient(`{"appType":"spa","clientName":"s"}`)
	wantError(t, h.api(http.MethodPost, "/api/v1/oauth-clients/"+spa.ClientID+"/client-secrets", h.bearer, nil, nil), 400, "HTTP-400")
}

func TestConsent(t *testing.T) {
	h := newAdminHarness(t)
	c := h.createClient(m2m)
	path := "/api/v1/oauth-clients/" + c.ClientID + "/connection-configs/me"
	get := func() string {
		return decodeAs[struct{ ConsentMethod string }](t, h.api(http.MethodGet, path, h.bearer, nil, nil), 200).ConsentMethod
	}
	if m := get(); m != "required" {
		t.Fatalf("initial consent %q", m)
	}
	for _, m := range []string{"trusted", "required", "trusted"} {
		r := h.api(http.MethodPatch, path, h.bearer, `[{"op":"replace","path":"/consentMethod","value":"`+m+`"}]`, nil)
		if r.status != 204 || len(r.body) != 0 || get() != m {
			t.Fatalf("set %s: %d %s", m, r.status, r.body)
		}
	}
	bad := []string{
		`[]`,
		`[{"op":"replace","path":"/consentMethod","value":"always"}]`,
		`[{"op":"add","path":"/consentMethod","value":"trusted"}]`,
		`[{"op":"replace","path":"/status","value":"trusted"}]`,
		`[{"op":"replace","path":"/consentMethod","value":true}]`,
		`{"consentMethod":"trusted"}`,
	}
	for _, b := range bad {
		t.Run(b, func(t *testing.T) { wantError(t, h.api(http.MethodPatch, path, h.bearer, b, nil), 400, "HTTP-400") })
	}
	if m := get(); m != "trusted" {
		t.Errorf("refused patches changed consent to %q", m)
	}
	wantError(t, h.api(http.MethodGet, "/api/v1/oauth-clients/nope/connection-configs/me", h.bearer, nil, nil), 404, "HTTP-404")
	wantError(t, h.api(http.MethodPatch, "/api/v1/oauth-clients/nope/connection-configs/me", h.bearer,
		`[{"op":"replace","path":"/consentMethod","value":"trusted"}]`, nil), 404, "HTTP-404")
	// AddClient clients stay trusted by default, so existing setups impersonate.
	h.token(h.postJSON("/oauth/token", h.impersonate(nil)))
	h.tn.SetConsentMethod(h.client.ID, "required")
	wantError(t, h.postJSON("/oauth/token", h.impersonate(nil)), 400, "OAUTH-5")
}

func TestAdminCounters(t *testing.T) {
	h := newAdminHarness(t)
	h.tn.ResetCounters()
	c := h.createClient(m2m)
	h.getClient(c.ClientID)
	h.api(http.MethodGet, "/api/v1/oauth-clients", h.bearer, nil, nil)
	h.api(http.MethodPatch, "/api/v1/oauth-clients/"+c.ClientID, h.bearer, `[{"op":"remove","path":"/description"}]`, nil)
	h.api(http.MethodPost, "/api/v1/oauth-clients/"+c.ClientID+"/client-secrets", h.bearer, nil, nil)
	h.api(http.MethodGet, "/api/v1/oauth-clients/"+c.ClientID+"/connection-configs/me", h.bearer, nil, nil)
	h.api(http.MethodGet, "/api/v1/users", h.bearer, nil, nil)
	h.api(http.MethodPost, "/api/v1/users", "", `{"subject":"x"}`, nil) // refused: still a write call
	h.api(http.MethodDelete, "/api/v1/oauth-clients/"+c.ClientID, h.bearer, nil, nil)
	checks := []struct {
		name      string
		got, want int
	}{
		{"WriteCalls", h.tn.WriteCalls(), 5},
		{"Calls(oauth_clients)", h.tn.Calls(qliktest.EndpointOAuthClients), 5},
		{"Calls(client_secrets)", h.tn.Calls(qliktest.EndpointClientSecrets), 1},
		{"Calls(connection_config)", h.tn.Calls(qliktest.EndpointConnectionConfig), 1},
		{"Calls(users)", h.tn.Calls(qliktest.EndpointUsers), 2},
		{"Calls(token)", h.tn.Calls(qliktest.EndpointToken), 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	h.tn.ResetCounters()
	if h.tn.WriteCalls() != 0 || h.tn.Calls(qliktest.EndpointOAuthClients) != 0 {
		t.Error("ResetCounters left admin counts")
	}
}

func TestAdminRoutingAndFaults(t *testing.T) {
	h := newAdminHarness(t)
	c := h.createClient(m2m)
	for _, tt := range []struct {
		method, path, allow string
	}{
		{http.MethodPut, "/api/v1/oauth-clients/" + c.ClientID, "DELETE, GET, PATCH"},
		{http.MethodDelete, "/api/v1/oauth-clients", "GET, POST"},
		{http.MethodGet, "/api/v1/oauth-clients/" + c.ClientID + "/client-secrets", "POST"},
		{http.MethodDelete, "/api/v1/users", "GET, POST"},
	} {
		r := h.api(tt.method, tt.path, h.bearer, nil, nil)
		wantError(t, r, 405, "HTTP-405")
		if got := r.header.Get("Allow"); got != tt.allow {
			t.Errorf("%s %s: Allow %q, want %q", tt.method, tt.path, got, tt.allow)
		}
	}
	// Escaped slashes stay inside the id.
	wantError(t, h.api(http.MethodGet, "/api/v1/oauth-clients/"+c.ClientID+"%2Fclient-secrets", h.bearer, nil, nil), 404, "HTTP-404")
	wantError(t, h.api(http.MethodGet, "/api/v1/oauth-clients/"+c.ClientID+"/other", h.bearer, nil, nil), 404, "HTTP-404")

	h.tn.InjectFault(qliktest.EndpointOAuthClients, qliktest.Fault{Status: 503})
	wantError(t, h.api(http.MethodGet, "/api/v1/oauth-clients", h.bearer, nil, nil), 503, "HTTP-503")
	h.tn.InjectFault(qliktest.EndpointUsers, qliktest.Fault{Status: 200, Body: `{"data":[]`})
	if r := h.api(http.MethodGet, "/api/v1/users", h.bearer, nil, nil); r.status != 200 || json.Valid(r.body) {
		t.Errorf("malformed fault: %d %s", r.status, r.body)
	}

	r := h.api(http.MethodGet, "/resources/autogenerated/product-info.json", "", nil, nil)
	var info struct {
		Composition struct{ DeploymentType string }
	}
	if r.status != 200 || json.Unmarshal(r.body, &info) != nil || info.Composition.DeploymentType == "" {
		t.Errorf("product-info: %d %s", r.status, r.body)
	}
}
