package broker_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// recorder is a real HTTP server in front of the fake tenant that records
// what reached it, so tests can see exactly what the broker sent.
type recorder struct {
	mu       sync.Mutex
	requests []*http.Request
	srv      *httptest.Server
}

func newRecorder(t *testing.T, tenantURL string) *recorder {
	target, _ := url.Parse(tenantURL)
	rp := httputil.NewSingleHostReverseProxy(target)
	r := &recorder{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests = append(r.requests, req.Clone(req.Context()))
		r.mu.Unlock()
		if req.URL.Path == "/api/v1/echo-cookie" {
			http.SetCookie(w, &http.Cookie{Name: "qlik_session", Value: "from-qlik"})
			w.WriteHeader(200)
			return
		}
		rp.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) seen() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.requests...)
}

func (e *env) proxyGet(path, session string, header map[string]string) (*http.Response, []byte) {
	return e.do("GET", path, session, header)
}

// TestProxyAsTheUser: GET /v1/qlik/api/v1/users/me answers with the
// session's user; the tenant saw the impersonation token and none of the
// caller's credentials or cookies; Qlik's cookies do not reach the caller.
func TestProxyAsTheUser(t *testing.T) {
	var rec *recorder
	e := newEnv(t, envOptions{proxyURL: func(u string) string { rec = newRecorder(t, u); return rec.srv.URL }})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	resp, body := e.proxyGet("/v1/qlik/api/v1/users/me?x=1", sess, map[string]string{
		"Cookie": "app_session=caller-cookie", "X-Custom": "kept",
	})
	var me struct{ ID string }
	if resp.StatusCode != 200 || json.Unmarshal(body, &me) != nil || me.ID != ada.ID {
		t.Fatalf("users/me through the proxy: %d %s", resp.StatusCode, body)
	}
	reqs := rec.seen()
	var got *http.Request
	for _, r := range reqs {
		if r.URL.Path == "/api/v1/users/me" {
			got = r
		}
	}
	if got == nil {
		t.Fatalf("the tenant never saw users/me: %v", reqs)
	}
	auth := got.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") || e.tokenUser(strings.TrimPrefix(auth, "Bearer ")) != ada.ID {
		t.Fatalf("the tenant got Authorization %.20q..., not the user's impersonation token", auth)
	}
	if strings.Contains(auth, sess) || got.Header.Get("Cookie") != "" || got.URL.RawQuery != "x=1" || got.Header.Get("X-Custom") != "kept" {
		t.Fatalf("forwarded headers: %v query %q", got.Header, got.URL.RawQuery)
	}
	resp, _ = e.proxyGet("/v1/qlik/api/v1/echo-cookie", sess, nil)
	if resp.StatusCode != 200 || len(resp.Cookies()) != 0 {
		t.Fatalf("Qlik's Set-Cookie reached the caller: %v", resp.Header)
	}
}

// TestProxyPathAllowList: paths outside /api/v1/ get 403 and nothing is sent
// upstream, however they are spelled.
func TestProxyPathAllowList(t *testing.T) {
	var rec *recorder
	e := newEnv(t, envOptions{proxyURL: func(u string) string { rec = newRecorder(t, u); return rec.srv.URL }})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	for _, p := range []string{
		"/v1/qlik/oauth/token",
		"/v1/qlik/api/v1/../../oauth/token",
		"/v1/qlik/api/v1/%2e%2e/%2e%2e/oauth/revoke",
		"/v1/qlik/api/v1%2f..%2f..%2foauth/token",
		"/v1/qlik/api/v2/users",
		"/v1/qlik/",
		"/v1/qlik/api/v1",
	} {
		resp, body := e.proxyGet(p, sess, nil)
		if resp.StatusCode != 403 && resp.StatusCode != 404 {
			t.Errorf("%s: %d %s", p, resp.StatusCode, body)
		}
	}
	if n := len(rec.seen()); n != 0 {
		t.Fatalf("%d requests reached the tenant through disallowed paths", n)
	}
	// Without a session nothing goes anywhere either.
	if resp, _ := e.proxyGet("/v1/qlik/api/v1/users/me", "", nil); resp.StatusCode != 401 {
		t.Fatalf("no session: %d", resp.StatusCode)
	}
}

// TestProxyRetriesWithFreshToken: after the token is revoked at the tenant,
// the next proxied call still succeeds (one retry with a fresh token) and
// the cache holds the new token.
func TestProxyRetriesWithFreshToken(t *testing.T) {
	e := newEnv(t, envOptions{})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	_, body := e.do("GET", "/v1/token", sess, nil)
	old := decodeTokenBody(t, body).AccessToken
	e.tenant.RevokeToken(old)

	resp, body := e.proxyGet("/v1/qlik/api/v1/users/me", sess, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("after revocation: %d %s", resp.StatusCode, body)
	}
	_, body = e.do("GET", "/v1/token", sess, nil)
	if fresh := decodeTokenBody(t, body).AccessToken; fresh == old || e.tokenUser(fresh) != ada.ID {
		t.Fatal("the cache still holds the revoked token")
	}
	if n := e.tenant.UserTokenCalls(ada.ID); n != 2 {
		t.Fatalf("token calls %d, want 2 (the first and one fresh after the 401)", n)
	}
}

// TestServiceTokens: a service credential gets a token for a user of a
// tenant it is scoped to, 403 for any other tenant; a user session cannot
// use the endpoint; every call is audited without the token.
func TestServiceTokens(t *testing.T) {
	serviceKey := []byte("a-different-key-for-service-credentials!")
	var logs bytes.Buffer
	var mu sync.Mutex
	e := newEnv(t, envOptions{
		service: &session.Config{HMACSecret: serviceKey, Audience: "qtb-service", ListClaim: "tenants"},
		logs:    &lockedWriter{w: &logs, mu: &mu},
	})
	ada := e.addUser("Ada")
	mint := func(tenants any) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": "nightly-export", "aud": "qtb-service", "tenants": tenants, "exp": e.clock.Now().Add(time.Hour).Unix(),
		}).SignedString(serviceKey)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	call := func(cred, tenant string) (*http.Response, []byte) {
		req, _ := http.NewRequest("POST", e.srv.URL+"/v1/service/token",
			strings.NewReader(`{"tenant":"`+tenant+`","user_lookup":{"field":"userId","value":"`+ada.ID+`"}}`))
		req.Header.Set("Authorization", "Bearer "+cred)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}

	resp, body := call(mint([]string{"acme"}), "acme")
	if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != ada.ID {
		t.Fatalf("scoped service credential: %d %s", resp.StatusCode, body)
	}
	tok := decodeTokenBody(t, body).AccessToken
	if resp, body := call(mint([]string{"globex"}), "acme"); resp.StatusCode != 403 || decodeErrorBody(t, body).Error != "tenant_not_allowed" {
		t.Fatalf("other tenant: %d %s", resp.StatusCode, body)
	}
	if resp, _ := call(e.session(ada.ID), "acme"); resp.StatusCode != 401 {
		t.Fatalf("a user session on the service endpoint: %d", resp.StatusCode)
	}
	mu.Lock()
	audit := logs.String()
	mu.Unlock()
	if strings.Count(audit, "audit: service token request") != 2 || !strings.Contains(audit, `"service":"nightly-export"`) ||
		!strings.Contains(audit, `"tenant":"acme"`) || !strings.Contains(audit, ada.ID) {
		t.Fatalf("audit lines missing:\n%s", audit)
	}
	if strings.Contains(audit, tok) {
		t.Fatal("the audit log holds the token")
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
