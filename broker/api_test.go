package broker_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

func TestTokenIsCachedPerUser(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts func(t *testing.T) envOptions
	}{
		{"memory", func(t *testing.T) envOptions { return envOptions{} }},
		{"redis", func(t *testing.T) envOptions { return envOptions{shared: newRedisStore(t)} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts(t))
			ada, bob := e.addUser("Ada"), e.addUser("Bob")

			resp, body := e.do("GET", "/v1/token", e.session(ada.ID), nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			first := decodeTokenBody(t, body)
			if got := e.tokenUser(first.AccessToken); got != ada.ID {
				t.Fatalf("token acts for %s, want %s", got, ada.ID)
			}
			if first.TokenType != "bearer" || first.Scope != "user_default" {
				t.Errorf("token_type %q scope %q", first.TokenType, first.Scope)
			}
			if first.ExpiresIn != int64((6 * time.Hour).Seconds()) {
				t.Errorf("expires_in = %d, want 21600 (the injected clock does not move)", first.ExpiresIn)
			}
			if _, err := time.Parse(time.RFC3339, first.ExpiresAt); err != nil {
				t.Errorf("expires_at %q: %v", first.ExpiresAt, err)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q", cc)
			}

			for range 5 {
				resp, body = e.do("POST", "/v1/token", e.session(ada.ID), nil)
				if resp.StatusCode != 200 || decodeTokenBody(t, body).AccessToken != first.AccessToken {
					t.Fatalf("repeat request: status %d, same token %v", resp.StatusCode, decodeTokenBody(t, body).AccessToken == first.AccessToken)
				}
			}
			if n := e.tenant.UserTokenCalls(ada.ID); n != 1 {
				t.Fatalf("upstream calls for ada = %d, want 1", n)
			}
			hits := testutil.ToFloat64(e.metrics.CacheLookups.WithLabelValues(metrics.TierL1, metrics.ResultHit))
			if hits != 5 {
				t.Errorf("cache hits = %v, want 5", hits)
			}

			resp, body = e.do("GET", "/v1/token", e.session(bob.ID), map[string]string{"Accept": "text/plain"})
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
				t.Fatalf("text/plain: status %d type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if got := e.tokenUser(string(body)); got != bob.ID {
				t.Fatalf("bob's raw token acts for %s", got)
			}
			if n := e.tenant.Calls(qliktest.EndpointToken); n != 2 {
				t.Fatalf("token endpoint calls = %d, want 2", n)
			}
		})
	}
}

func TestConcurrentColdRequestsMakeOneUpstreamCall(t *testing.T) {
	// The latency keeps the first call in flight while the others arrive;
	// nothing asserts on time.
	e := newEnv(t, envOptions{tenantOpt: []qliktest.Option{qliktest.WithLatency(100 * time.Millisecond)}})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)

	const n = 200
	var wg sync.WaitGroup
	tokens := make([]string, n)
	statuses := make([]int, n)
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", e.srv.URL+"/v1/token", nil)
			req.Header.Set("Authorization", "Bearer "+sess)
			req.Header.Set("Accept", "text/plain")
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			tokens[i], statuses[i] = string(raw), resp.StatusCode
		})
	}
	wg.Wait()
	for i := range n {
		if statuses[i] != 200 || tokens[i] != tokens[0] {
			t.Fatalf("response %d: status %d, same token as the first: %v", i, statuses[i], tokens[i] == tokens[0])
		}
	}
	if got := e.tokenUser(tokens[0]); got != ada.ID {
		t.Fatalf("token acts for %s", got)
	}
	if calls := e.tenant.UserTokenCalls(ada.ID); calls != 1 {
		t.Fatalf("upstream calls = %d, want exactly 1", calls)
	}
}

func TestTokenNearExpiryIsReplaced(t *testing.T) {
	// A refresh-ahead window that opens after the point the test checks.
	e := newEnv(t, envOptions{tune: func(c *broker.Config) { c.RefreshAhead = 11 * time.Minute }})
	ada := e.addUser("Ada")
	_, body := e.do("GET", "/v1/token", e.session(ada.ID), nil)
	first := decodeTokenBody(t, body).AccessToken

	// 6h lifetime, 60s skew, 10m minimum TTL: the token is served until 5h49m.
	e.clock.Advance(5*time.Hour + 47*time.Minute)
	_, body = e.do("GET", "/v1/token", e.session(ada.ID), nil)
	if got := decodeTokenBody(t, body); got.AccessToken != first || got.ExpiresIn != 13*60 {
		t.Fatalf("within lifetime: same token %v, expires_in %d", got.AccessToken == first, got.ExpiresIn)
	}
	// Below the minimum it is not: a new one is fetched.
	e.clock.Advance(150 * time.Second)
	_, body = e.do("GET", "/v1/token", e.session(ada.ID), nil)
	second := decodeTokenBody(t, body)
	if second.AccessToken == first || second.ExpiresIn != 21600 {
		t.Fatalf("inside skew: got the old token %v, expires_in %d", second.AccessToken == first, second.ExpiresIn)
	}
	if calls := e.tenant.UserTokenCalls(ada.ID); calls != 2 {
		t.Fatalf("upstream calls = %d, want 2", calls)
	}
}

func TestLogoutEvictsAndRevokes(t *testing.T) {
	e := newEnv(t, envOptions{})
	ada := e.addUser("Ada")
	_, body := e.do("GET", "/v1/token", e.session(ada.ID), nil)
	first := decodeTokenBody(t, body).AccessToken

	resp, body := e.do("DELETE", "/v1/token", e.session(ada.ID), nil)
	if resp.StatusCode != http.StatusNoContent || len(body) != 0 {
		t.Fatalf("DELETE: status %d body %q", resp.StatusCode, body)
	}
	if _, err := e.tenant.TokenUser(first); err == nil {
		t.Fatal("the tenant still accepts the revoked token")
	}
	if n := e.tenant.Calls(qliktest.EndpointRevoke); n != 1 {
		t.Fatalf("revoke calls = %d", n)
	}
	_, body = e.do("GET", "/v1/token", e.session(ada.ID), nil)
	if second := decodeTokenBody(t, body).AccessToken; second == first || e.tokenUser(second) != ada.ID {
		t.Fatal("after logout the old token was served again")
	}
	// Logging out twice is fine and revokes the new token.
	resp, _ = e.do("DELETE", "/v1/token", e.session(ada.ID), nil)
	resp2, _ := e.do("DELETE", "/v1/token", e.session(ada.ID), nil)
	if resp.StatusCode != 204 || resp2.StatusCode != 204 {
		t.Fatalf("repeat DELETE: %d, %d", resp.StatusCode, resp2.StatusCode)
	}
	if n := e.tenant.Calls(qliktest.EndpointRevoke); n != 2 {
		t.Fatalf("revoke calls = %d, want 2 (nothing cached on the third DELETE)", n)
	}
}

// TestUpstreamFailures: each failure maps to a clear status and JSON body,
// nothing is cached, and the next request reaches the tenant again.
func TestUpstreamFailures(t *testing.T) {
	// A real tenant's answer to a bad client (qlik-api.md section 1).
	invalidClient := `{"errors":[{"title":"Invalid client_id","detail":"OAuth client is not authorized","code":"OAUTH-14","status":"400"}],"traceId":"0000000000000000d3a2403ffa24786d"}`
	for _, tc := range []struct {
		name       string
		fault      qliktest.Fault
		times      int // consecutive faults; 3 exhausts the 2 retries of 5xx
		status     int
		code       string
		retryAfter string
		calls      int // token calls including the successful one after
	}{
		{"rate limited", qliktest.Fault{Status: 429, RetryAfter: "13"}, 1, 503, "upstream_rate_limited", "13", 2},
		{"server error", qliktest.Fault{Status: 500}, 3, 502, "upstream_unavailable", "", 4},
		{"unavailable", qliktest.Fault{Status: 503}, 3, 502, "upstream_unavailable", "", 4},
		{"connection closed", qliktest.Fault{CloseConn: true}, 3, 502, "upstream_unavailable", "", 4},
		// A refusal does not say who was refused (codes are opaque): the
		// broker checks its credentials with a client_credentials call,
		// which the tenant refuses too, so the client is misconfigured.
		{"bad client", qliktest.Fault{Status: 400, Body: invalidClient}, 2, 502, "upstream_misconfigured", "", 3},
		{"bad client, 401 reading", qliktest.Fault{Status: 401, Body: invalidClient}, 2, 502, "upstream_misconfigured", "", 3},
		// The check finds the credentials good, so the user is unknown.
		{"unknown user", qliktest.Fault{Status: 401}, 1, 403, "unknown_user", "", 3},
		// A 400 with good credentials is a request the tenant will not
		// take for this user.
		{"bad request", qliktest.Fault{Status: 400}, 1, 502, "upstream_rejected", "", 3},
		{"user forbidden", qliktest.Fault{Status: 403}, 1, 403, "user_forbidden", "", 2},
		{"malformed json", qliktest.Fault{Status: 200, Body: `{"access_token":`}, 1, 502, "upstream_malformed", "", 2},
		{"no access token", qliktest.Fault{Status: 200, Body: `{"token_type":"bearer","expires_in":21600}`}, 1, 502, "upstream_malformed", "", 2},
		{"no expiry", qliktest.Fault{Status: 200, Body: `{"access_token":"x.y.z","token_type":"bearer"}`}, 1, 502, "upstream_malformed", "", 2},
		{"expired", qliktest.Fault{Status: 200, Body: `{"access_token":"x.y.z","token_type":"bearer","expires_at":"2020-01-01T00:00:00.000Z"}`}, 1, 502, "upstream_malformed", "", 2},
		{"oversized", qliktest.Fault{Status: 200, Body: `{"access_token":"` + strings.Repeat("x", 2<<20) + `","expires_in":21600}`}, 1, 502, "upstream_malformed", "", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{tune: func(c *broker.Config) { c.Upstream.RetryBase = time.Millisecond }})
			ada := e.addUser("Ada")
			for range tc.times {
				e.tenant.InjectFault(qliktest.EndpointToken, tc.fault)
			}
			resp, body := e.do("GET", "/v1/token", e.session(ada.ID), nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if eb := decodeErrorBody(t, body); eb.Error != tc.code {
				t.Errorf("error code %q, want %q", eb.Error, tc.code)
			}
			if got := resp.Header.Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
			}
			if strings.Contains(string(body), "secret-1") || strings.Contains(string(body), "x.y.z") {
				t.Errorf("error body leaks upstream detail: %s", body)
			}
			// Nothing was cached: the next request (after any cooldown)
			// reaches the tenant again.
			e.clock.Advance(time.Minute)
			resp, body = e.do("GET", "/v1/token", e.session(ada.ID), nil)
			if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != ada.ID {
				t.Fatalf("after the fault: status %d %s", resp.StatusCode, body)
			}
			if n := e.tenant.Calls(qliktest.EndpointToken); n != tc.calls {
				t.Errorf("token calls = %d, want %d", n, tc.calls)
			}
		})
	}
}

func TestOriginPolicy(t *testing.T) {
	e := newEnv(t, envOptions{origins: []string{"https://app.example.com"}})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)

	for _, origin := range []string{"https://evil.example.com", "https://app.example.com.evil.com", "null", "http://app.example.com"} {
		resp, body := e.do("GET", "/v1/token", sess, map[string]string{"Origin": origin})
		if resp.StatusCode != http.StatusForbidden || decodeErrorBody(t, body).Error != "origin_not_allowed" {
			t.Errorf("origin %q: status %d body %s", origin, resp.StatusCode, body)
		}
		if resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("origin %q got CORS headers", origin)
		}
		resp, _ = e.do("OPTIONS", "/v1/token", "", map[string]string{"Origin": origin, "Access-Control-Request-Method": "GET"})
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("preflight from %q: status %d", origin, resp.StatusCode)
		}
	}
	if n := e.tenant.Calls(qliktest.EndpointToken); n != 0 {
		t.Fatalf("disallowed origins caused %d upstream calls", n)
	}
	if got := testutil.ToFloat64(e.metrics.OriginRejections); got != 8 {
		t.Errorf("origin rejections = %v, want 8", got)
	}

	resp, body := e.do("GET", "/v1/token", sess, map[string]string{"Origin": "https://app.example.com"})
	if resp.StatusCode != 200 {
		t.Fatalf("allowed origin: %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		resp.Header.Get("Access-Control-Allow-Credentials") != "true" ||
		!strings.Contains(strings.Join(resp.Header.Values("Vary"), ","), "Origin") {
		t.Fatalf("allowed origin CORS headers: %v", resp.Header)
	}
	resp, _ = e.do("OPTIONS", "/v1/token", "", map[string]string{"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Fatalf("allowed preflight: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestSessionFromCookie(t *testing.T) {
	e := newEnv(t, envOptions{cookie: "app_session"})
	ada := e.addUser("Ada")
	resp, body := e.do("GET", "/v1/token", "", map[string]string{"Cookie": "app_session=" + e.session(ada.ID)})
	if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != ada.ID {
		t.Fatalf("cookie session: %d %s", resp.StatusCode, body)
	}
	// The query string is never a session source.
	resp, _ = e.do("GET", "/v1/token?access_token="+e.session(ada.ID), "", nil)
	if resp.StatusCode != 401 {
		t.Fatalf("query-string session: status %d, want 401", resp.StatusCode)
	}
}

func TestHTTPHygiene(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"PUT", "/v1/token", 405, "method_not_allowed"},
		{"GET", "/nope", 404, "not_found"},
		{"GET", "/v1/token", 401, "invalid_session"},
	} {
		resp, body := e.do(tc.method, tc.path, "", nil)
		if resp.StatusCode != tc.status || decodeErrorBody(t, body).Error != tc.code {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, resp.StatusCode, body)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s %s: security headers missing: %v", tc.method, tc.path, resp.Header)
		}
	}
	resp, _ := e.do("GET", "/v1/token", "", nil)
	if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("401 without WWW-Authenticate: Bearer: %v", resp.Header)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp, body := e.do("GET", p, "", nil); resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", p, resp.StatusCode, body)
		}
	}

	// Every metric the API touched passes the Prometheus linter.
	problems, err := testutil.GatherAndLint(e.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
	if got := testutil.ToFloat64(e.metrics.HTTPRequests.WithLabelValues("/v1/token", "PUT", strconv.Itoa(405))); got != 1 {
		t.Errorf("405 not counted under its route: %v", got)
	}
}
