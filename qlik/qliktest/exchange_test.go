package qliktest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/coder/websocket"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// exchangeBody is what @qlik/api 2.19 posts to trade an access token for a
// temporary one (exchangeAccessTokenForTemporaryToken).
func (h *harness) exchangeBody(subject, purpose string) map[string]any {
	return map[string]any{
		"subject_token":      subject,
		"subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
		"grant_type":         "urn:ietf:params:oauth:grant-type:token-exchange",
		"purpose":            purpose,
		"redirect_uri":       "https://app.example.com/page",
		"client_id":          h.client.ID,
	}
}

// TestTokenExchange: a valid access token is traded for a temporary one
// (JSON or form), counted by purpose and not as an issued token; refusals
// come as errors bodies; a temporary token is good for nothing but its
// purpose.
func TestTokenExchange(t *testing.T) {
	h := newHarness(t)
	access := h.issue()
	issued := h.tn.IssuedTokens()

	r := h.postJSON("/oauth/token", h.exchangeBody(access, qliktest.PurposeWebsocket))
	var got struct {
		tokenBody
		IssuedTokenType string `json:"issued_token_type"`
	}
	if r.status != http.StatusOK || json.Unmarshal(r.body, &got) != nil {
		t.Fatalf("exchange: %d %s", r.status, r.body)
	}
	if got.AccessToken == "" || got.AccessToken == access || got.IssuedTokenType != "urn:ietf:params:oauth:token-type:access_token" ||
		got.TokenType != "bearer" || got.ExpiresIn <= 0 || got.ExpiresIn > 300 {
		t.Errorf("exchange answer %+v", got)
	}
	form := url.Values{}
	for k, v := range h.exchangeBody(access, qliktest.PurposeWebresource) {
		form.Set(k, v.(string))
	}
	if r := h.postForm("/oauth/token", form); r.status != http.StatusOK {
		t.Errorf("form exchange: %d %s", r.status, r.body)
	}
	if ws, wr := h.tn.Exchanges(qliktest.PurposeWebsocket), h.tn.Exchanges(qliktest.PurposeWebresource); ws != 1 || wr != 1 {
		t.Errorf("Exchanges = %d websocket, %d webresource; want 1 and 1", ws, wr)
	}
	if n := h.tn.IssuedTokens(); n != issued {
		t.Errorf("IssuedTokens went from %d to %d over two exchanges", issued, n)
	}

	// A temporary token is no access token: not on REST, not as a subject.
	wantError(t, h.usersMe(got.AccessToken), http.StatusUnauthorized, "")
	wantError(t, h.postJSON("/oauth/token", h.exchangeBody(got.AccessToken, qliktest.PurposeWebsocket)), http.StatusUnauthorized, "")

	revoked := h.issue()
	h.tn.RevokeToken(revoked)
	for _, tc := range []struct {
		name   string
		change map[string]any
		status int
	}{
		{"revoked subject", map[string]any{"subject_token": revoked}, http.StatusUnauthorized},
		{"garbage subject", map[string]any{"subject_token": "not-a-jwt"}, http.StatusUnauthorized},
		{"no subject", map[string]any{"subject_token": ""}, http.StatusBadRequest},
		{"bad purpose", map[string]any{"purpose": "engine"}, http.StatusBadRequest},
		{"bad subject type", map[string]any{"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"}, http.StatusBadRequest},
		{"unknown client", map[string]any{"client_id": "nobody"}, http.StatusBadRequest},
		{"no client", map[string]any{"client_id": ""}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := h.exchangeBody(access, qliktest.PurposeWebsocket)
			for k, v := range tc.change {
				body[k] = v
			}
			wantError(t, h.postJSON("/oauth/token", body), tc.status, "")
		})
	}

	// Short-lived: gone after the tenant clock passes its expiry.
	h.clock.Advance(5 * time.Minute)
	if _, err := h.dialEngineQuery(t.Context(), "app-1", got.AccessToken); err == nil {
		t.Error("an expired temporary token opened the engine")
	}
}

// dialEngineQuery opens the engine websocket the browser's way, with
// ?accessToken=.
func (h *harness) dialEngineQuery(ctx context.Context, appID, token string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute) // bounds a hang only
	defer cancel()
	u := "ws" + strings.TrimPrefix(h.tn.URL(), "http") + "/app/" + appID + "?accessToken=" + url.QueryEscape(token)
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: h.hc})
	if err != nil {
		if resp != nil {
			return nil, &statusError{resp.StatusCode}
		}
		return nil, err
	}
	h.t.Cleanup(func() { c.CloseNow() })
	return c, nil
}

type statusError struct{ status int }

func (e *statusError) Error() string { return http.StatusText(e.status) }

// TestEngineAcceptsExchangedToken: /app/<id>?accessToken= takes a websocket
// temporary token and acts for its user; a webresource one, an access
// token in the URL and garbage are 401.
func TestEngineAcceptsExchangedToken(t *testing.T) {
	h := newHarness(t)
	access := h.issue()
	exchange := func(purpose string) string {
		return h.token(h.postJSON("/oauth/token", h.exchangeBody(access, purpose))).AccessToken
	}
	c, err := h.dialEngineQuery(t.Context(), "app-1", exchange(qliktest.PurposeWebsocket))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	_, raw, err := c.Read(ctx)
	var reply qliktest.EngineReply
	if err != nil || json.Unmarshal(raw, &reply) != nil || reply.UserID != h.user.ID || reply.AppID != "app-1" {
		t.Fatalf("reply %s (%v), want one for %s", raw, err, h.user.ID)
	}
	for name, tok := range map[string]string{
		"webresource token": exchange(qliktest.PurposeWebresource),
		"access token":      access,
		"garbage":           "x",
	} {
		if _, err := h.dialEngineQuery(t.Context(), "app-1", tok); err == nil || !strings.Contains(err.Error(), "Unauthorized") {
			t.Errorf("%s in ?accessToken=: %v, want 401", name, err)
		}
	}
}

// TestTenantCORS: a preflight from an origin some client allows is granted
// with credentials; from another origin it is 403; answers to an allowed
// origin carry the grant.
func TestTenantCORS(t *testing.T) {
	h := newHarness(t)
	h.tn.AddClient(qliktest.OAuthClient{ID: "spa", AllowedOrigins: []string{"https://app.example.com"}})
	pre := func(origin string) response {
		return h.mustDo(http.MethodOptions, "/oauth/token", "", "", http.Header{
			"Origin": {origin}, "Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"content-type"}})
	}
	r := pre("https://app.example.com")
	if r.status != http.StatusNoContent || r.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		r.header.Get("Access-Control-Allow-Credentials") != "true" || r.header.Get("Access-Control-Allow-Headers") != "content-type" {
		t.Errorf("allowed preflight: %d %v", r.status, r.header)
	}
	r = pre("https://evil.example.com")
	wantError(t, r, http.StatusForbidden, "")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("disallowed preflight granted %q", r.header.Get("Access-Control-Allow-Origin"))
	}
	r = h.mustDo(http.MethodGet, "/api/v1/users/me", "", "", http.Header{"Origin": {"https://app.example.com"}, "Authorization": {"Bearer " + h.issue()}})
	if r.status != http.StatusOK || r.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("GET from an allowed origin: %d %v", r.status, r.header)
	}
	if n := h.tn.Calls(qliktest.EndpointToken); n != 1 {
		t.Errorf("preflights were counted: %d token calls, want 1", n)
	}
}

// TestEmbedRuntime: the stand-in's main.js maps the runtime modules to
// @qlik/api's implementation chunks found in the package; other files are
// served only as JavaScript from the package; without ServeEmbedRuntime
// everything is 404.
func TestEmbedRuntime(t *testing.T) {
	h := newHarness(t)
	wantError(t, h.mustDo(http.MethodGet, "/qlik-embed/main.js", "", "", nil), http.StatusNotFound, "")
	pkg := fstest.MapFS{
		"chunks/public-runtime-modules-X1.js": {Data: []byte(`import("./auth-A1.js"); import("./qix-Q_1.js").then(n => n.t); import("./invoke-fetch-I-1.js")`)},
		"chunks/auth-A1.js":                   {Data: []byte("export const a = 1;")},
		"package.json":                        {Data: []byte("{}")},
	}
	if err := h.tn.ServeEmbedRuntime(pkg); err != nil {
		t.Fatal(err)
	}
	r := h.mustDo(http.MethodGet, "/qlik-embed/main.js", "", "", nil)
	for _, want := range []string{`"auth@v1":"qlik-api/chunks/auth-A1.js"`, `"qix@v1":"qlik-api/chunks/qix-Q_1.js"`,
		`"invoke-fetch@v1":"qlik-api/chunks/invoke-fetch-I-1.js"`, `"embed-vanilla@v1":"embed-vanilla.js"`, "window.QlikMain"} {
		if r.status != http.StatusOK || !strings.Contains(string(r.body), want) {
			t.Errorf("main.js lacks %s: %d\n%s", want, r.status, r.body)
		}
	}
	if r := h.mustDo(http.MethodGet, "/qlik-embed/qlik-api/chunks/auth-A1.js", "", "", nil); r.status != http.StatusOK ||
		!strings.HasPrefix(r.header.Get("Content-Type"), "text/javascript") {
		t.Errorf("chunk: %d %v", r.status, r.header)
	}
	for _, p := range []string{"/qlik-embed/qlik-api/package.json", "/qlik-embed/qlik-api/../exchange.go", "/qlik-embed/other.js"} {
		if r := h.mustDo(http.MethodGet, p, "", "", nil); r.status != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, r.status)
		}
	}
	if err := h.tn.ServeEmbedRuntime(fstest.MapFS{}); err == nil {
		t.Error("a package without runtime chunks was accepted")
	}
}
