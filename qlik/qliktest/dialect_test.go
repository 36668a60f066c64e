package qliktest_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestErrorDialect: errors carry a traceId, fresh per answer; status is a
// string on /oauth/* and a number on the users API.
func TestErrorDialect(t *testing.T) {
	h := newAdminHarness(t)
	bad := h.impersonate(map[string]any{"client_secret": "wrong"})
	r1, r2 := h.postJSON("/oauth/token", bad), h.postJSON("/oauth/token", bad)
	wantError(t, r1, 400, "OAUTH-14")
	wantError(t, r2, 400, "OAUTH-14")
	var e1, e2 errorsBody
	_ = json.Unmarshal(r1.body, &e1)
	_ = json.Unmarshal(r2.body, &e2)
	if e1.TraceID == e2.TraceID || e1.Errors[0].Title != "Invalid client_id" || e1.Errors[0].Detail != "OAuth client is not authorized" {
		t.Errorf("the public report's answer, a fresh traceId each: %s / %s", r1.body, r2.body)
	}
	if string(e1.Errors[0].Status) != `"400"` {
		t.Errorf("OAuth status %s, want a string", e1.Errors[0].Status)
	}
	users := h.api(http.MethodGet, usersQuery("filter", `email sw "a"`), h.bearer, nil, nil)
	wantError(t, users, 400, "USERS-1")
	var eu errorsBody
	_ = json.Unmarshal(users.body, &eu)
	if string(eu.Errors[0].Status) != "400" {
		t.Errorf("users status %s, want a number", eu.Errors[0].Status)
	}
	// Rate limits are HTTP-429 with Retry-After.
	h.tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 429, RetryAfter: "13"})
	wantError(t, h.postJSON("/oauth/token", h.impersonate(nil)), 429, "HTTP-429")
}

// TestClientAuthFailureStatus: the schema's other reading, 401, on request.
func TestClientAuthFailureStatus(t *testing.T) {
	h := newHarness(t, qliktest.WithClientAuthFailureStatus(401))
	wantError(t, h.postJSON("/oauth/token", h.impersonate(map[string]any{"client_secret": "wrong"})), 401, "OAUTH-14")
	wantError(t, h.postJSON("/oauth/token", h.impersonate(map[string]any{"client_id": "nobody"})), 401, "OAUTH-14")
	h.issue() // the right secret still works
}

// TestUsersMeRedirects: /users/me is a 301 to the token's own user, whose
// page any valid token may read.
func TestUsersMeRedirects(t *testing.T) {
	h := newHarness(t)
	tok := h.issue()
	noFollow := &http.Client{Transport: h.hc.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, h.tn.URL()+"/api/v1/users/me", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := resp.Location()
	if resp.StatusCode != http.StatusMovedPermanently || loc == nil || loc.Path != "/api/v1/users/"+h.user.ID {
		t.Fatalf("users/me: %d Location %v", resp.StatusCode, loc)
	}
	r := h.usersMe(tok) // follows
	var u qliktest.User
	if r.status != 200 || json.Unmarshal(r.body, &u) != nil || u != h.user || r.path != "/api/v1/users/"+h.user.ID {
		t.Fatalf("followed: %d %s at %s", r.status, r.body, r.path)
	}
	wantError(t, h.api(http.MethodGet, "/api/v1/users/000000000000000000000000", tok, nil, nil), 404, "USERS-4")
	wantError(t, h.api(http.MethodGet, "/api/v1/users/"+h.user.ID, "garbage", nil, nil), 401, "HTTP-401")
}

// TestFiveStatuses: only active users are impersonated; each status can be
// filtered on.
func TestFiveStatuses(t *testing.T) {
	h := newAdminHarness(t)
	for _, st := range []string{qliktest.StatusDisabled, qliktest.StatusInvited, qliktest.StatusDeleted, qliktest.StatusProvisioned} {
		u := h.tn.AddUser(qliktest.User{Subject: "s|" + st, Email: "shared@example.com", Status: st})
		wantError(t, h.postJSON("/oauth/token", h.impersonate(map[string]any{
			"user_lookup": map[string]string{"field": "userId", "value": u.ID}})), 403, "OAUTH-12")
		l := decodeAs[userList](t, h.api(http.MethodGet, usersQuery("filter", `email eq "shared@example.com" and (status eq "`+st+`")`), h.bearer, nil, nil), 200)
		if got := l.subjects(); len(got) != 1 || got[0] != "s|"+st {
			t.Errorf("%s: %q", st, got)
		}
	}
	active := h.tn.AddUser(qliktest.User{Subject: "s|active", Email: "shared@example.com"})
	l := decodeAs[userList](t, h.api(http.MethodGet, usersQuery("filter", `email eq "SHARED@example.com" and (status eq "active")`), h.bearer, nil, nil), 200)
	if len(l.Data) != 1 || l.Data[0].ID != active.ID {
		t.Errorf("active only: %+v", l.Data)
	}
	// A deleted user's subject is still taken.
	r := h.api(http.MethodPost, "/api/v1/users", h.bearer, `{"subject":"s|deleted","email":"x@example.com"}`, nil)
	wantError(t, r, 409, "USERS-9")
}

// TestCORS: an OAuth client's allowed origin may call the tenant from a
// page; other origins get no CORS headers.
func TestCORS(t *testing.T) {
	h := newHarness(t)
	h.tn.AddClient(qliktest.OAuthClient{AllowedOrigins: []string{"https://app.example"}})
	preflight := func(origin, path string) response {
		return h.mustDo(http.MethodOptions, path, "", "", http.Header{
			"Origin": {origin}, "Access-Control-Request-Method": {"POST"},
			"Access-Control-Request-Headers": {"content-type, authorization"}})
	}
	for _, path := range []string{"/oauth/token", "/api/v1/users/me"} {
		r := preflight("https://app.example", path)
		hd := r.header
		if r.status != 204 || hd.Get("Access-Control-Allow-Origin") != "https://app.example" || hd.Get("Access-Control-Allow-Credentials") != "true" ||
			!strings.Contains(hd.Get("Access-Control-Allow-Methods"), "POST") || hd.Get("Access-Control-Allow-Headers") != "content-type, authorization" {
			t.Errorf("preflight %s from an allowed origin: %d %v", path, r.status, hd)
		}
		r = preflight("https://evil.example", path)
		if r.status != 403 || r.header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("preflight %s from another origin: %d %v", path, r.status, r.header)
		}
	}
	if n := h.tn.Calls(qliktest.EndpointToken); n != 0 {
		t.Errorf("preflights counted as token calls: %d", n)
	}
	b, _ := json.Marshal(h.impersonate(nil))
	r := h.mustDo(http.MethodPost, "/oauth/token", "application/json", string(b), http.Header{"Origin": {"https://app.example"}})
	if r.status != 200 || r.header.Get("Access-Control-Allow-Origin") != "https://app.example" || !strings.Contains(r.header.Get("Vary"), "Origin") {
		t.Errorf("token from an allowed origin: %d %v", r.status, r.header)
	}
	r = h.mustDo(http.MethodPost, "/oauth/token", "application/json", string(b), http.Header{"Origin": {"https://evil.example"}})
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("token from another origin got %q", r.header.Get("Access-Control-Allow-Origin"))
	}
}
