package qliktest_test

import (
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

func TestTokenGrants(t *testing.T) {
	h := newHarness(t)
	lookupJSON := `{"field":"subject","value":"auth0|ada"}`
	form := func(kv ...string) url.Values {
		v := url.Values{"client_id": {h.client.ID}, "client_secret": {h.client.Secret}}
		for i := 0; i < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	tests := []struct {
		name     string
		send     func() response
		wantUser func() qliktest.User // nil: the client's bot user
	}{
		{"json userId", func() response { return h.postJSON("/oauth/token", h.impersonate(nil)) }, h.userFn},
		{"json subject", func() response {
			return h.postJSON("/oauth/token", h.impersonate(map[string]any{
				"user_lookup": map[string]string{"field": "subject", "value": "auth0|ada"}}))
		}, h.userFn},
		{"json user_lookup as string", func() response {
			return h.postJSON("/oauth/token", h.impersonate(map[string]any{"user_lookup": lookupJSON}))
		}, h.userFn},
		{"form user_lookup JSON", func() response {
			return h.postForm("/oauth/token", form("grant_type", impersonation, "user_lookup", lookupJSON))
		}, h.userFn},
		{"form user_lookup brackets", func() response {
			return h.postForm("/oauth/token", form("grant_type", impersonation,
				"user_lookup[field]", "userId", "user_lookup[value]", h.user.ID))
		}, h.userFn},
		{"json content type with charset", func() response {
			return h.mustDo(http.MethodPost, "/oauth/token", "application/json; charset=utf-8",
				`{"client_id":"broker","client_secret":"s3cret","grant_type":"`+impersonation+
					`","user_lookup":{"field":"userId","value":"`+h.user.ID+`"},"unknown":1}`, nil)
		}, h.userFn},
		{"json client_credentials", func() response {
			return h.postJSON("/oauth/token", map[string]string{
				"client_id": h.client.ID, "client_secret": h.client.Secret, "grant_type": "client_credentials"})
		}, nil},
		{"form client_credentials", func() response {
			return h.postForm("/oauth/token", form("grant_type", "client_credentials"))
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.send()
			tb := h.token(r)
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if tb.TokenType != "bearer" || tb.Scope != "user_default" ||
				tb.ExpiresAt != "2024-03-18T00:21:41.000Z" || tb.ExpiresIn != 21600 {
				t.Errorf("got %+v", tb)
			}
			u, err := h.tn.TokenUser(tb.AccessToken)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantUser == nil {
				if u.Subject != `qlikbot\broker` || u.Status != qliktest.StatusActive {
					t.Errorf("bot user = %+v", u)
				}
			} else if u != tt.wantUser() {
				t.Errorf("token user = %+v, want %+v", u, tt.wantUser())
			}
			me := h.usersMe(tb.AccessToken)
			if me.status != http.StatusOK || !strings.Contains(string(me.body), `"id":"`+u.ID+`"`) {
				t.Errorf("users/me = %d %s", me.status, me.body)
			}
		})
	}
}

func (h *harness) userFn() qliktest.User { return h.user }

func TestTokenIsES384JWTWithClaims(t *testing.T) {
	h := newHarness(t)
	tok := h.issue()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %d parts", len(parts))
	}
	// Header and claims are checked through TokenUser; here only the
	// algorithm, which clients treat as opaque but the contract names.
	if !strings.HasPrefix(tok, "eyJhbGciOiJFUzM4NCIs") {
		t.Errorf("token header does not start with ES384: %.30s", tok)
	}
	if h.issue() == tok {
		t.Error("two tokens are identical: jti is not random")
	}
}

func TestBotUserCreatedOnce(t *testing.T) {
	h := newHarness(t)
	body := map[string]string{"client_id": h.client.ID, "client_secret": h.client.Secret, "grant_type": "client_credentials"}
	u1, err := h.tn.TokenUser(h.token(h.postJSON("/oauth/token", body)).AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	u2, err := h.tn.TokenUser(h.token(h.postJSON("/oauth/token", body)).AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if u1.ID != u2.ID || !regexp.MustCompile(`^[0-9a-f]{24}$`).MatchString(u1.ID) {
		t.Errorf("bot users %q and %q", u1.ID, u2.ID)
	}
	// The bot user is a real user: it can be impersonated by subject.
	r := h.postJSON("/oauth/token", h.impersonate(map[string]any{
		"user_lookup": map[string]string{"field": "subject", "value": `qlikbot\broker`}}))
	if u, _ := h.tn.TokenUser(h.token(r).AccessToken); u.ID != u1.ID {
		t.Errorf("impersonating the bot gave %q, want %q", u.ID, u1.ID)
	}
}

func TestTokenErrors(t *testing.T) {
	h := newHarness(t)
	ccOnly := h.tn.AddClient(qliktest.OAuthClient{AllowedGrants: []string{"client_credentials"}})
	disabled := h.tn.AddUser(qliktest.User{Subject: "auth0|off", Status: qliktest.StatusDisabled})
	lookup := func(field, value string) map[string]any {
		return h.impersonate(map[string]any{"user_lookup": map[string]string{"field": field, "value": value}})
	}
	tests := []struct {
		name        string
		contentType string
		body        string
		json        map[string]any
		status      int
		code        string
	}{
		{name: "text/plain", contentType: "text/plain", body: "client_id=broker", status: 400, code: "OAUTH-1"},
		{name: "no content type", body: `{}`, status: 400, code: "OAUTH-1"},
		{name: "bad JSON", contentType: "application/json", body: `{"client_id":`, status: 400, code: "OAUTH-1"},
		{name: "JSON array", contentType: "application/json", body: `[]`, status: 400, code: "OAUTH-1"},
		{name: "oversized body", contentType: "application/json", body: `{"scope":"` + strings.Repeat("x", 65<<10) + `"}`, status: 400, code: "OAUTH-1"},
		{name: "wrong secret", json: h.impersonate(map[string]any{"client_secret": "nope"}), status: 400, code: "OAUTH-14"},
		{name: "unknown client", json: h.impersonate(map[string]any{"client_id": "nobody"}), status: 400, code: "OAUTH-14"},
		{name: "missing secret", json: h.impersonate(map[string]any{"client_secret": nil}), status: 400, code: "OAUTH-14"},
		{name: "missing grant", json: h.impersonate(map[string]any{"grant_type": nil}), status: 400, code: "OAUTH-1"},
		{name: "refresh_token grant", json: h.impersonate(map[string]any{"grant_type": "refresh_token"}), status: 400, code: "OAUTH-2"},
		{name: "grant not allowed", json: map[string]any{
			"client_id": ccOnly.ID, "client_secret": ccOnly.Secret, "grant_type": impersonation,
			"user_lookup": map[string]string{"field": "userId", "value": h.user.ID}}, status: 400, code: "OAUTH-4"},
		{name: "missing user_lookup", json: h.impersonate(map[string]any{"user_lookup": nil}), status: 400, code: "OAUTH-1"},
		{name: "user_lookup not an object", json: h.impersonate(map[string]any{"user_lookup": 42}), status: 400, code: "OAUTH-1"},
		{name: "lookup by email", json: lookup("email", "ada@example.com"), status: 400, code: "OAUTH-1"},
		{name: "lookup field case", json: lookup("userid", h.user.ID), status: 400, code: "OAUTH-1"},
		{name: "empty lookup value", json: lookup("userId", ""), status: 400, code: "OAUTH-1"},
		{name: "unknown user id", json: lookup("userId", "000000000000000000000000"), status: 401, code: "OAUTH-11"},
		{name: "unknown subject", json: lookup("subject", "auth0|nobody"), status: 401, code: "OAUTH-11"},
		{name: "disabled user", json: lookup("userId", disabled.ID), status: 403, code: "OAUTH-12"},
		{name: "scope not allowed", json: h.impersonate(map[string]any{"scope": "user_default admin_classic"}), status: 400, code: "OAUTH-3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r response
			if tt.json != nil {
				r = h.postJSON("/oauth/token", tt.json)
			} else {
				r = h.mustDo(http.MethodPost, "/oauth/token", tt.contentType, tt.body, nil)
			}
			wantError(t, r, tt.status, tt.code)
		})
	}
	if n := h.tn.IssuedTokens(); n != 0 {
		t.Errorf("IssuedTokens = %d after only failures", n)
	}
}

func TestScopeNarrowing(t *testing.T) {
	h := newHarness(t)
	h.client = h.tn.AddClient(qliktest.OAuthClient{ID: "admin", AllowedScopes: []string{"user_default", "admin_classic"}})
	tests := []struct{ requested, granted string }{
		{"", "user_default admin_classic"},
		{"user_default", "user_default"},
		{"admin_classic  user_default", "admin_classic user_default"},
		{"user_default user_default", "user_default"},
	}
	for _, tt := range tests {
		t.Run(tt.requested, func(t *testing.T) {
			tb := h.token(h.postJSON("/oauth/token", h.impersonate(map[string]any{"scope": tt.requested})))
			if tb.Scope != tt.granted {
				t.Errorf("scope %q, want %q", tb.Scope, tt.granted)
			}
		})
	}
}

func TestSetClientSecret(t *testing.T) {
	h := newHarness(t)
	old := h.impersonate(nil)
	h.tn.SetClientSecret(h.client.ID, "rotated")
	wantError(t, h.postJSON("/oauth/token", old), 400, "OAUTH-14")
	h.token(h.postJSON("/oauth/token", h.impersonate(map[string]any{"client_secret": "rotated"})))
	h.tn.SetClientSecret("nobody", "x") // ignored, no panic
}

func TestRevoke(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name   string
		revoke func(tok string) response
	}{
		{"json", func(tok string) response {
			return h.postJSON("/oauth/revoke", map[string]string{"token": tok, "token_type_hint": "access_token"})
		}},
		{"json with client credentials", func(tok string) response {
			return h.postJSON("/oauth/revoke", map[string]string{"token": tok, "token_type_hint": "access_token",
				"client_id": h.client.ID, "client_secret": h.client.Secret})
		}},
		{"form", func(tok string) response {
			return h.postForm("/oauth/revoke", url.Values{"token": {tok}, "token_type_hint": {"access_token"}})
		}},
		{"RevokeToken", func(tok string) response {
			h.tn.RevokeToken(tok)
			return response{status: http.StatusOK}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := h.issue()
			other := h.issue()
			if r := h.usersMe(tok); r.status != http.StatusOK {
				t.Fatalf("before revoke: %d", r.status)
			}
			r := tt.revoke(tok)
			if r.status != http.StatusOK || len(r.body) != 0 {
				t.Fatalf("revoke = %d %q", r.status, r.body)
			}
			wantError(t, h.usersMe(tok), 401, "")
			if _, err := h.tn.TokenUser(tok); !errors.Is(err, qliktest.ErrInvalidToken) {
				t.Errorf("TokenUser after revoke: %v", err)
			}
			if r := h.usersMe(other); r.status != http.StatusOK {
				t.Errorf("revoking one token broke another: %d", r.status)
			}
		})
	}
}

func TestRevokeErrors(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name        string
		contentType string
		body        string
		status      int
	}{
		{"garbage token", "application/json", `{"token":"not-a-jwt"}`, 200},
		{"expired-looking token", "application/x-www-form-urlencoded", "token=eyJhbGciOiJub25lIn0.e30.", 200},
		{"missing token", "application/json", `{"token_type_hint":"access_token"}`, 400},
		{"wrong client secret", "application/json", `{"token":"x","client_id":"broker","client_secret":"nope"}`, 400},
		{"client id without secret", "application/json", `{"token":"x","client_id":"broker"}`, 400},
		{"bad content type", "text/plain", "token=x", 400},
		{"bad JSON", "application/json", `{`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.mustDo(http.MethodPost, "/oauth/revoke", tt.contentType, tt.body, nil)
			if tt.status == 200 {
				if r.status != 200 || len(r.body) != 0 {
					t.Errorf("got %d %q, want 200 with empty body", r.status, r.body)
				}
				return
			}
			wantError(t, r, tt.status, "")
		})
	}
}

func TestUsersMe(t *testing.T) {
	h := newHarness(t)
	foreign := newHarness(t).issue() // signed by another tenant's key
	tests := []struct {
		name   string
		auth   func() string
		before func()
		status int
	}{
		{"valid", func() string { return "Bearer " + h.issue() }, nil, 200},
		{"lower-case scheme", func() string { return "bearer " + h.issue() }, nil, 200},
		{"no header", func() string { return "" }, nil, 401},
		{"basic", func() string { return "Basic YTpi" }, nil, 401},
		{"garbage", func() string { return "Bearer abc.def.ghi" }, nil, 401},
		{"other tenant", func() string { return "Bearer " + foreign }, nil, 401},
		{"oversized", func() string { return "Bearer " + strings.Repeat("a", 9000) }, nil, 401},
		{"disabled after issue", func() string {
			tok := h.issue()
			h.tn.SetUserStatus(h.user.ID, qliktest.StatusDisabled)
			return "Bearer " + tok
		}, func() { t.Cleanup(func() { h.tn.SetUserStatus(h.user.ID, qliktest.StatusActive) }) }, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			hdr := http.Header{}
			if a := tt.auth(); a != "" {
				hdr.Set("Authorization", a)
			}
			r := h.mustDo(http.MethodGet, "/api/v1/users/me", "", "", hdr)
			if tt.status != 200 {
				wantError(t, r, tt.status, "")
				return
			}
			if r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			want := `{"id":"` + h.user.ID + `","subject":"auth0|ada","email":"ada@example.com","name":"Ada","status":"active"}`
			if strings.TrimSpace(string(r.body)) != want {
				t.Errorf("body %s, want %s", r.body, want)
			}
		})
	}
}

func TestTokenExpiryOnTenantClock(t *testing.T) {
	h := newHarness(t, qliktest.WithTokenLifetime(time.Hour))
	tb := h.token(h.postJSON("/oauth/token", h.impersonate(nil)))
	if tb.ExpiresIn != 3600 || tb.ExpiresAt != "2024-03-17T19:21:41.000Z" {
		t.Fatalf("got %+v", tb)
	}
	h.clock.Advance(time.Hour - time.Millisecond)
	if r := h.usersMe(tb.AccessToken); r.status != 200 {
		t.Fatalf("1ms before expiry: %d", r.status)
	}
	h.clock.Advance(time.Millisecond)
	wantError(t, h.usersMe(tb.AccessToken), 401, "HTTP-401")
	if _, err := h.tn.TokenUser(tb.AccessToken); !errors.Is(err, qliktest.ErrInvalidToken) {
		t.Errorf("TokenUser at expiry: %v", err)
	}
}

func TestSubSecondClockKeepsExpiryConsistent(t *testing.T) {
	h := newHarness(t, qliktest.WithTokenLifetime(time.Second))
	h.clock.Advance(700 * time.Millisecond)
	tb := h.token(h.postJSON("/oauth/token", h.impersonate(nil)))
	exp, err := time.Parse(time.RFC3339, tb.ExpiresAt)
	if err != nil {
		t.Fatal(err)
	}
	if !exp.After(h.clock.Now()) || tb.ExpiresIn != 1 {
		t.Fatalf("expires_at %s, expires_in %d at %s", tb.ExpiresAt, tb.ExpiresIn, h.clock.Now())
	}
	h.clock.Advance(exp.Sub(h.clock.Now()) - time.Millisecond)
	if r := h.usersMe(tb.AccessToken); r.status != 200 {
		t.Fatalf("before expires_at: %d", r.status)
	}
	h.clock.Advance(time.Millisecond)
	if r := h.usersMe(tb.AccessToken); r.status != 401 {
		t.Fatalf("at expires_at: %d", r.status)
	}
}

func TestRouting(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{http.MethodGet, "/nope", 404, ""},
		{http.MethodPost, "/oauth/token/", 404, ""},
		{http.MethodGet, "/api/v1/users/me/x", 404, ""},
		{http.MethodGet, "/oauth/token", 405, "POST"},
		{http.MethodPut, "/oauth/revoke", 405, "POST"},
		{http.MethodPost, "/api/v1/users/me", 405, "GET"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := h.mustDo(tt.method, tt.path, "application/json", "{}", nil)
			wantError(t, r, tt.status, "")
			if got := r.header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
	if n := h.tn.Calls(qliktest.EndpointToken); n != 0 {
		t.Errorf("Calls(token) = %d; wrong-method requests must not count", n)
	}
}

func TestCounters(t *testing.T) {
	h := newHarness(t)
	other := h.tn.AddUser(qliktest.User{Subject: "auth0|bob"})
	bySubject := h.impersonate(map[string]any{"user_lookup": map[string]string{"field": "subject", "value": "auth0|ada"}})
	h.issue()
	h.token(h.postJSON("/oauth/token", bySubject))
	wantError(t, h.postJSON("/oauth/token", h.impersonate(map[string]any{"scope": "nope"})), 400, "OAUTH-3")
	wantError(t, h.postJSON("/oauth/token", h.impersonate(map[string]any{"client_secret": "x"})), 400, "OAUTH-14")
	h.postJSON("/oauth/revoke", map[string]string{"token": "x"})
	h.usersMe("x")

	checks := []struct {
		name      string
		got, want int
	}{
		{"Calls(token)", h.tn.Calls(qliktest.EndpointToken), 4},
		{"Calls(revoke)", h.tn.Calls(qliktest.EndpointRevoke), 1},
		{"Calls(users_me)", h.tn.Calls(qliktest.EndpointUsersMe), 1},
		{"UserTokenCalls(ada)", h.tn.UserTokenCalls(h.user.ID), 3}, // bad scope counts, bad client does not
		{"UserTokenCalls(bob)", h.tn.UserTokenCalls(other.ID), 0},
		{"IssuedTokens", h.tn.IssuedTokens(), 2},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	h.tn.ResetCounters()
	if h.tn.Calls(qliktest.EndpointToken)+h.tn.UserTokenCalls(h.user.ID)+h.tn.IssuedTokens() != 0 {
		t.Error("ResetCounters left counts")
	}
	h.issue() // state survives a reset
}

func TestConcurrentIssue(t *testing.T) {
	h := newHarness(t)
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := h.do(t.Context(), http.MethodPost, "/oauth/token", "application/json",
				`{"client_id":"broker","client_secret":"s3cret","grant_type":"`+impersonation+
					`","user_lookup":{"field":"subject","value":"auth0|ada"}}`, nil)
			if err == nil && r.status != 200 {
				err = errors.New(string(r.body))
			}
			errs <- err
		}()
		go h.tn.AddUser(qliktest.User{})
		go h.tn.PendingFaults(qliktest.EndpointToken)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := h.tn.IssuedTokens(); got != n {
		t.Errorf("IssuedTokens = %d, want %d", got, n)
	}
	if got := h.tn.UserTokenCalls(h.user.ID); got != n {
		t.Errorf("UserTokenCalls = %d, want %d", got, n)
	}
}

func TestDefaults(t *testing.T) {
	h := newHarness(t)
	c := h.tn.AddClient(qliktest.OAuthClient{})
	if len(c.ID) != 32 || c.Secret == "" || c.AppType != "web" || c.ConsentMethod != "trusted" ||
		strings.Join(c.AllowedGrants, ",") != "client_credentials,"+impersonation ||
		strings.Join(c.AllowedScopes, ",") != "user_default" {
		t.Errorf("client defaults: %+v", c)
	}
	c.AllowedScopes[0] = "mutated" // the tenant keeps its own copy
	r := h.postJSON("/oauth/token", map[string]string{"client_id": c.ID, "client_secret": c.Secret, "grant_type": "client_credentials"})
	if tb := h.token(r); tb.Scope != "user_default" {
		t.Errorf("scope %q: caller mutation leaked into the tenant", tb.Scope)
	}
	u := h.tn.AddUser(qliktest.User{})
	if !regexp.MustCompile(`^[0-9a-f]{24}$`).MatchString(u.ID) || u.Status != qliktest.StatusActive {
		t.Errorf("user defaults: %+v", u)
	}
	h.tn.SetUserStatus("nobody", qliktest.StatusDisabled) // ignored, no panic
}
