package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
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

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// tenantFront is a real HTTP server in front of the fake tenant that can
// answer some paths itself and records the headers that reached it.
type tenantFront struct {
	mu      sync.Mutex
	headers []http.Header
	srv     *httptest.Server
}

func newTenantFront(t *testing.T, tenantURL string) *tenantFront {
	target, _ := url.Parse(tenantURL)
	rp := httputil.NewSingleHostReverseProxy(target)
	f := &tenantFront{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.headers = append(f.headers, r.Header.Clone())
		f.mu.Unlock()
		switch r.URL.Path {
		case "/api/v1/always-401":
			http.Error(w, `{"errors":[{"code":"HTTP-401","title":"Unauthorized"}]}`, http.StatusUnauthorized)
			return
		case "/api/v1/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		if strings.HasPrefix(r.URL.Path, "/api/") {
			w.Header().Set("Access-Control-Allow-Origin", "*")
			w.Header().Set("Access-Control-Allow-Credentials", "true")
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *tenantFront) seen() []http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]http.Header(nil), f.headers...)
}

// TestBudgetCoversLogoutAndProxy: with QTB_USER_RATE=1/min and burst 1, a
// loop of DELETE /v1/token + a proxied GET over 20 s (of the broker's
// clock) costs at most burst + rate*elapsed + 1 token calls; over budget
// the proxy answers 429 with Retry-After and a JSON error; another user's
// cold request is still served.
func TestBudgetCoversLogoutAndProxy(t *testing.T) {
	e := newEnv(t, envOptions{userRate: 1.0 / 60, userBurst: 1})
	ada, bob := e.addUser("Ada"), e.addUser("Bob")
	sess := e.session(ada.ID)
	const step = 500 * time.Millisecond
	start := e.clock.Now()
	limited := 0
	for range 40 { // 40 x 500ms = 20s
		if resp, body := e.do("DELETE", "/v1/token", sess, nil); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("logout: %d %s", resp.StatusCode, body)
		}
		resp, body := e.proxyGet("/v1/qlik/api/v1/users/me", sess, nil)
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusTooManyRequests:
			limited++
			if resp.Header.Get("Retry-After") == "" || decodeErrorBody(t, body).Error != "rate_limited" {
				t.Fatalf("over budget: %v %s", resp.Header, body)
			}
		default:
			t.Fatalf("proxied GET: %d %s", resp.StatusCode, body)
		}
		e.clock.Advance(step)
	}
	elapsed := e.clock.Now().Sub(start)
	calls := e.tenant.UserTokenCalls(ada.ID)
	bound := 1 + int(elapsed.Minutes()*1) + 1
	t.Logf("20s loop of DELETE + proxied GET: %d token calls for the identity (bound %d), %d answers 429, %d revokes", calls, bound, limited, e.tenant.Calls(qliktest.EndpointRevoke))
	if calls > bound {
		t.Fatalf("%d token calls in %s, want at most %d", calls, elapsed, bound)
	}
	if resp, body := e.do("GET", "/v1/token", e.session(bob.ID), nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("another user's cold request: %d %s", resp.StatusCode, body)
	}
}

// TestBudgetCoversServiceTokens: a service credential's token calls spend
// its own budget and the impersonated user's.
func TestBudgetCoversServiceTokens(t *testing.T) {
	svcKey := []byte("another-secret-for-service-creds-0123456789")
	e := newEnv(t, envOptions{userRate: 1.0 / 60, userBurst: 1,
		service: &session.Config{HMACSecret: svcKey, Audience: "qtb-service", ListClaim: "tenants"}})
	ada, bob := e.addUser("Ada"), e.addUser("Bob")
	cred, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "nightly", "aud": "qtb-service", "tenants": []string{"acme"}, "exp": e.clock.Now().Add(time.Hour).Unix(),
	}).SignedString(svcKey)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(user string) (*http.Response, []byte) {
		req, _ := http.NewRequest("POST", e.srv.URL+"/v1/service/token",
			strings.NewReader(`{"tenant":"acme","user_lookup":{"field":"userId","value":"`+user+`"}}`))
		req.Header.Set("Authorization", "Bearer "+cred)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}
	if resp, body := ask(ada.ID); resp.StatusCode != 200 {
		t.Fatalf("first: %d %s", resp.StatusCode, body)
	}
	// Cached: free.
	if resp, body := ask(ada.ID); resp.StatusCode != 200 {
		t.Fatalf("cached: %d %s", resp.StatusCode, body)
	}
	// Bob is cold, and the service's bucket is spent.
	resp, body := ask(bob.ID)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("service over budget: %d %s", resp.StatusCode, body)
	}
	if n := e.tenant.UserTokenCalls(bob.ID); n != 0 {
		t.Fatalf("%d token calls for Bob over budget", n)
	}
}

// TestRefusalsRemembered: 10 proxied requests for a disabled user cost at
// most 1 token call, and a logout forgets the refusal.
func TestRefusalsRemembered(t *testing.T) {
	e := newEnv(t, envOptions{})
	ada := e.addUser("Ada")
	e.tenant.SetUserStatus(ada.ID, "disabled")
	sess := e.session(ada.ID)
	for i := range 10 {
		resp, body := e.proxyGet("/v1/qlik/api/v1/users/me", sess, nil)
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	calls := e.tenant.UserTokenCalls(ada.ID)
	t.Logf("10 proxied requests for a disabled user: %d token calls", calls)
	if calls > 1 {
		t.Fatalf("%d token calls, want at most 1", calls)
	}
	e.tenant.SetUserStatus(ada.ID, "active")
	if resp, body := e.do("DELETE", "/v1/token", sess, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d %s", resp.StatusCode, body)
	}
	if resp, body := e.proxyGet("/v1/qlik/api/v1/users/me", sess, nil); resp.StatusCode != 200 {
		t.Fatalf("after logout the refusal is forgotten: %d %s", resp.StatusCode, body)
	}

	// An unknown user: the refusal is remembered too.
	ghost := e.session("no-such-user")
	before := e.tenant.Calls(qliktest.EndpointToken)
	for range 10 {
		if resp, body := e.do("GET", "/v1/token", ghost, nil); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("unknown user: %d %s", resp.StatusCode, body)
		}
	}
	if n := e.tenant.Calls(qliktest.EndpointToken) - before; n > 2 {
		t.Fatalf("10 requests for an unknown user made %d token calls, want at most 2 (one, and the credentials check)", n)
	}
}

// TestRefusalsSharedThroughRedis: a refusal one replica met is answered by
// another without a token call.
func TestRefusalsSharedThroughRedis(t *testing.T) {
	d := newDeployment(t, 2, nil)
	ada := d.tenant.AddUser(qliktest.User{Name: "Ada", Subject: "idp|Ada", Status: "active"})
	d.tenant.SetUserStatus(ada.ID, "disabled")
	for i, r := range d.replicas {
		if resp, body := r.do("GET", "/v1/token", r.session(ada.ID), nil); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("replica %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if n := d.tenant.UserTokenCalls(ada.ID); n != 1 {
		t.Fatalf("%d token calls across two replicas, want 1", n)
	}
}

// TestProxyUnauthorizedPathBounded: 10 proxied requests to a path where
// the tenant answers 401 whatever the token cost at most 2 token calls
// (the first token and one reissue); the 401 reaches the caller.
func TestProxyUnauthorizedPathBounded(t *testing.T) {
	var f *tenantFront
	e := newEnv(t, envOptions{proxyURL: func(u string) string { f = newTenantFront(t, u); return f.srv.URL }})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	for i := range 10 {
		if resp, body := e.proxyGet("/v1/qlik/api/v1/always-401", sess, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	calls := e.tenant.UserTokenCalls(ada.ID)
	t.Logf("10 proxied requests to a path answering 401: %d token calls", calls)
	if calls > 2 {
		t.Fatalf("%d token calls, want at most 2", calls)
	}
}

// TestProxyOneHeaderWebsocketTrick: a request that names websocket in
// Upgrade but is not a handshake is 403 before any token work and the
// tenant sees nothing; a real websocket still connects.
func TestProxyOneHeaderWebsocketTrick(t *testing.T) {
	var rec *recorder
	e := newEnv(t, envOptions{
		proxy:    broker.ProxyConfig{Websocket: true},
		proxyURL: func(u string) string { rec = newRecorder(t, u); return rec.srv.URL },
	})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	for _, tc := range []struct {
		name, method string
		header       map[string]string
	}{
		{"POST with Upgrade only", "POST", map[string]string{"Upgrade": "websocket"}},
		{"GET with Upgrade only", "GET", map[string]string{"Upgrade": "websocket"}},
		{"no key", "GET", map[string]string{"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}},
		{"POST handshake", "POST", map[string]string{"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}},
	} {
		resp, body := e.do(tc.method, "/v1/qlik/app/abc", sess, tc.header)
		if resp.StatusCode != http.StatusForbidden || decodeErrorBody(t, body).Error != "websocket_not_allowed" {
			t.Errorf("%s: %d %s, want 403 websocket_not_allowed", tc.name, resp.StatusCode, body)
		}
	}
	if n := len(rec.seen()); n != 0 {
		t.Fatalf("%d requests reached the tenant", n)
	}
	if n := e.tenant.UserTokenCalls(ada.ID); n != 0 {
		t.Fatalf("%d token calls for refused requests", n)
	}
	ctx := wsCtx(t)
	c, resp, err := e.dialWS(ctx, "/v1/qlik/app/abc", bearer(sess))
	if err != nil {
		t.Fatalf("a real websocket: %v %v", err, resp)
	}
	defer c.CloseNow()
	if got := exchange(t, ctx, c, "hi"); got.UserID != ada.ID {
		t.Fatalf("reply %+v", got)
	}
}

// TestProxyHeaderHygiene: the tenant's CORS headers never reach the
// caller (one Access-Control-Allow-Origin, the broker's), and no
// client-IP header reaches the tenant.
func TestProxyHeaderHygiene(t *testing.T) {
	var f *tenantFront
	const origin = "https://app.example.com"
	e := newEnv(t, envOptions{origins: []string{origin}, proxyURL: func(u string) string { f = newTenantFront(t, u); return f.srv.URL }})
	ada := e.addUser("Ada")
	ipHeaders := map[string]string{
		"X-Real-IP": "10.0.0.1", "X-Forwarded-For": "10.0.0.2", "X-Forwarded-Host": "evil", "X-Forwarded-Proto": "http",
		"X-Forwarded-Port": "1", "Forwarded": "for=10.0.0.3", "True-Client-IP": "10.0.0.4", "CF-Connecting-IP": "10.0.0.5",
		"X-Client-IP": "10.0.0.6", "X-Cluster-Client-IP": "10.0.0.7", "Fastly-Client-IP": "10.0.0.8",
		"Origin": origin,
	}
	resp, body := e.proxyGet("/v1/qlik/api/v1/users/me", e.session(ada.ID), ipHeaders)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != origin {
		t.Fatalf("Access-Control-Allow-Origin %q, want exactly [%s]", got, origin)
	}
	if got := resp.Header.Values("Access-Control-Allow-Credentials"); len(got) != 1 {
		t.Fatalf("Access-Control-Allow-Credentials %q", got)
	}
	seen := f.seen()
	h := seen[len(seen)-1]
	for name := range ipHeaders {
		if name != "Origin" && h.Get(name) != "" {
			t.Errorf("%s reached the tenant: %q", name, h.Get(name))
		}
	}
}

// TestProxyTimeoutIs504: a tenant slower than QTB_PROXY_TIMEOUT gets the
// caller a 504 with the JSON error, not a reset connection.
func TestProxyTimeoutIs504(t *testing.T) {
	var f *tenantFront
	e := newEnv(t, envOptions{proxy: broker.ProxyConfig{Timeout: 300 * time.Millisecond}, proxyURL: func(u string) string { f = newTenantFront(t, u); return f.srv.URL }})
	ada := e.addUser("Ada")
	resp, body := e.proxyGet("/v1/qlik/api/v1/slow", e.session(ada.ID), nil)
	var eb errorBody
	if resp.StatusCode != http.StatusGatewayTimeout || json.Unmarshal(body, &eb) != nil || eb.Error != "upstream_timeout" {
		t.Fatalf("%d %s, want 504 upstream_timeout", resp.StatusCode, body)
	}
}

// mintRecorder wraps the tenant's Issuer and records every token minted.
type mintRecorder struct {
	broker.Issuer
	mu     sync.Mutex
	minted []string
}

func (m *mintRecorder) ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error) {
	tok, err := m.Issuer.ImpersonationToken(ctx, creds, user, scope)
	if err == nil {
		m.mu.Lock()
		m.minted = append(m.minted, tok.AccessToken)
		m.mu.Unlock()
	}
	return tok, err
}

func (m *mintRecorder) all() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.minted...)
}

// TestLogoutDuringSlowFill: a logout while the tenant is still minting the
// user's token answers 204 at once; the token in flight is revoked and
// never served, the request that waited for it is told to ask again
// (409 logged_out), and the next request gets a new token.
func TestLogoutDuringSlowFill(t *testing.T) {
	for _, withRedis := range []bool{false, true} {
		t.Run(map[bool]string{false: "L1", true: "Redis"}[withRedis], func(t *testing.T) {
			rec := &mintRecorder{}
			o := envOptions{
				tenantOpt: []qliktest.Option{qliktest.WithLatency(600 * time.Millisecond)},
				issuer:    func(i broker.Issuer) broker.Issuer { rec.Issuer = i; return rec },
			}
			if withRedis {
				o.shared = newRedisStore(t)
			}
			e := newEnv(t, o)
			ada := e.addUser("Ada")
			sess := e.session(ada.ID)
			type answer struct {
				status int
				body   []byte
			}
			first := make(chan answer, 1)
			go func() {
				req, _ := http.NewRequest("GET", e.srv.URL+"/v1/token", nil)
				req.Header.Set("Authorization", "Bearer "+sess)
				resp, err := e.srv.Client().Do(req)
				if err != nil {
					first <- answer{}
					return
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				first <- answer{resp.StatusCode, body}
			}()
			time.Sleep(200 * time.Millisecond) // the fill is at the tenant
			if resp, body := e.do("DELETE", "/v1/token", sess, nil); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("logout: %d %s", resp.StatusCode, body)
			}
			got := <-first
			minted := rec.all()
			if len(minted) != 1 {
				t.Fatalf("%d tokens minted, want 1", len(minted))
			}
			inFlight := minted[0]
			if got.status == 200 && decodeTokenBody(t, got.body).AccessToken == inFlight {
				t.Fatal("the token in flight was served after the logout")
			}
			if got.status != http.StatusConflict || decodeErrorBody(t, got.body).Error != "logged_out" {
				t.Fatalf("the waiting request: %d %s, want 409 logged_out", got.status, got.body)
			}
			if _, err := e.tenant.TokenUser(inFlight); err == nil {
				t.Fatal("the token in flight was not revoked")
			}
			resp, body := e.do("GET", "/v1/token", sess, nil)
			if resp.StatusCode != 200 || decodeTokenBody(t, body).AccessToken == inFlight {
				t.Fatalf("after the logout: %d %s", resp.StatusCode, body)
			}
		})
	}
}

// orderRecorder wraps the tenant's Issuer and records whom each token call
// was for, in the order they reached the tenant.
type orderRecorder struct {
	broker.Issuer
	mu    sync.Mutex
	order []string
}

func (o *orderRecorder) ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error) {
	o.mu.Lock()
	o.order = append(o.order, user.Value)
	o.mu.Unlock()
	return o.Issuer.ImpersonationToken(ctx, creds, user, scope)
}

func (o *orderRecorder) calls() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.order...)
}

// TestColdStormBeforeRefreshes: under the shared limit (10 calls a second,
// burst 2), a storm of cold requests with background refreshes falling due
// in the middle of it: every waiting request reaches the tenant before any
// refresh does; the refreshes happen once the storm is over.
func TestColdStormBeforeRefreshes(t *testing.T) {
	rec := &orderRecorder{}
	d := sharedRateDeployment(t, 0, 600, 2, func(c *broker.Config) { c.FetchTimeout = 20 * time.Second })
	d.tune = func(next func(*broker.Config)) func(*broker.Config) {
		return func(c *broker.Config) {
			next(c)
			inner := c.Tenants[0].Issuer
			rec.Issuer = inner
			c.Tenants[0].Issuer = rec
		}
	}(d.tune)
	r := d.add(d.keyring)
	const warm, cold = 4, 12
	warmIDs := make([]string, warm)
	for i := range warm {
		warmIDs[i] = r.addUser(fmt.Sprintf("warm%d", i)).ID
		if code, tok := getToken(r.srv.Client(), r.srv.URL, r.session(warmIDs[i])); code != 200 {
			t.Fatalf("warm user %d: %d %s", i, code, tok)
		}
	}
	// Every warm token is now due for its refresh.
	d.clock.Advance(5*time.Hour + 30*time.Minute)
	coldIDs := make(map[string]bool, cold)
	sessions := make([]string, cold)
	for i := range cold {
		id := r.addUser(fmt.Sprintf("cold%02d", i)).ID
		coldIDs[id] = true
		sessions[i] = r.session(id)
	}
	skip := len(rec.calls())
	var wg sync.WaitGroup
	for _, sess := range sessions {
		wg.Go(func() {
			if resp, body := r.do("GET", "/v1/token", sess, nil); resp.StatusCode != 200 {
				t.Errorf("cold request: %d %s", resp.StatusCode, body)
			}
		})
	}
	// While the storm waits for the shared limit, the warm users ask: each
	// is served its cached token and starts a background refresh.
	for deadline := time.Now().Add(5 * time.Second); len(rec.calls())-skip < 3 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond) // until the storm is under way
	}
	for _, id := range warmIDs {
		if code, _ := getToken(r.srv.Client(), r.srv.URL, r.session(id)); code != 200 {
			t.Fatalf("warm user in the refresh window: %d", code)
		}
	}
	wg.Wait()
	d.waitBackground()

	// Once the storm is over, the refreshes go (after their short deferral).
	refreshed := func() int {
		n := 0
		for _, u := range rec.calls()[skip:] {
			if !coldIDs[u] {
				n++
			}
		}
		return n
	}
	for i := 0; refreshed() == 0 && i < 50; i++ {
		d.clock.Advance(6 * time.Second)
		time.Sleep(100 * time.Millisecond) // the shared limit refills in real time
		for _, id := range warmIDs {
			getToken(r.srv.Client(), r.srv.URL, r.session(id))
		}
		d.waitBackground()
	}
	order := rec.calls()[skip:]
	lastCold, firstRefresh := -1, -1
	for i, u := range order {
		if coldIDs[u] {
			lastCold = i
		} else if firstRefresh < 0 {
			firstRefresh = i
		}
	}
	t.Logf("token calls in order (c = cold request, r = refresh): %s", orderString(order, coldIDs))
	if firstRefresh < 0 {
		t.Fatal("no refresh ever ran")
	}
	if firstRefresh < lastCold {
		t.Fatalf("a refresh (call %d) went before a waiting request (call %d)", firstRefresh, lastCold)
	}
}

func orderString(order []string, cold map[string]bool) string {
	var b strings.Builder
	for _, u := range order {
		if cold[u] {
			b.WriteByte('c')
		} else {
			b.WriteByte('r')
		}
	}
	return b.String()
}

// TestLogoutDuringFillAtAnotherReplica: the fill runs at one replica, the
// logout arrives at another: the tombstone in Redis makes the fill revoke
// its token instead of caching or serving it.
func TestLogoutDuringFillAtAnotherReplica(t *testing.T) {
	rec := &mintRecorder{}
	d := newDeployment(t, 0, nil, qliktest.WithLatency(600*time.Millisecond))
	d.tune = func(c *broker.Config) {
		if rec.Issuer == nil { // the first replica: the one that fills
			rec.Issuer = c.Tenants[0].Issuer
			c.Tenants[0].Issuer = rec
		}
	}
	filler, other := d.add(nil), d.add(nil)
	ada := d.tenant.AddUser(qliktest.User{Name: "Ada", Subject: "idp|Ada", Status: "active"})
	sess := filler.session(ada.ID)
	done := make(chan int, 1)
	go func() {
		resp, _ := filler.do("GET", "/v1/token", sess, nil)
		done <- resp.StatusCode
	}()
	for deadline := time.Now().Add(5 * time.Second); d.tenant.Calls(qliktest.EndpointToken) == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond) // until the fill is at the tenant
	}
	if resp, body := other.do("DELETE", "/v1/token", sess, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout at the other replica: %d %s", resp.StatusCode, body)
	}
	if status := <-done; status != http.StatusConflict {
		t.Fatalf("the request waiting for the fill: %d, want 409", status)
	}
	minted := rec.all()
	if len(minted) != 1 {
		t.Fatalf("%d tokens minted by the filling replica, want 1", len(minted))
	}
	if _, err := d.tenant.TokenUser(minted[0]); err == nil {
		t.Fatal("the token in flight was not revoked")
	}
	for _, r := range []*env{filler, other} {
		if code, tok := getToken(r.srv.Client(), r.srv.URL, sess); code != 200 || tok == minted[0] {
			t.Fatalf("after the logout: %d, the in-flight token %v", code, tok == minted[0])
		}
	}
}
