package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
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

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// tokenRecorder is a reverse proxy in front of the fake tenant that keeps
// every access token the tenant hands the broker, including ones the broker
// never serves (refreshes, tokens it refuses).
type tokenRecorder struct {
	srv    *httptest.Server
	mu     sync.Mutex
	tokens []string
}

func newTokenRecorder(t *testing.T, tenantURL string) *tokenRecorder {
	t.Helper()
	target, err := url.Parse(tenantURL)
	if err != nil {
		t.Fatal(err)
	}
	r := &tokenRecorder{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	// Pass a dropped connection on as one, not as a 502.
	proxy.ErrorHandler = func(http.ResponseWriter, *http.Request, error) { panic(http.ErrAbortHandler) }
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path != "/oauth/token" {
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		var tb struct {
			AccessToken string `json:"access_token"`
		}
		if json.Unmarshal(b, &tb) == nil && tb.AccessToken != "" {
			r.mu.Lock()
			r.tokens = append(r.tokens, tb.AccessToken)
			r.mu.Unlock()
		}
		return nil
	}
	r.srv = httptest.NewServer(proxy)
	t.Cleanup(r.srv.Close)
	return r
}

func (r *tokenRecorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.tokens...)
}

// exchange is one request the leak test made and what came back.
type exchange struct {
	name   string
	status int
	header http.Header
	body   string
	// ownToken is the access token this response legitimately carries in
	// its body (the token endpoint's answer), else "".
	ownToken string
}

func sentinel(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + "-SENTINEL-" + hex.EncodeToString(b)
}

// TestNoSecretLeaks drives every path of the broker (started with run(), at
// debug level) and checks that no secret - client secret, session HMAC key,
// session tokens, access tokens the tenant issued, junk tokens an upstream
// sent - appears in the logs, in error bodies, in response headers or in
// /metrics. The one place an access token may appear is the body of the
// token response that hands it to its own user.
func TestNoSecretLeaks(t *testing.T) {
	for _, tc := range []struct {
		name, format string
		redis        bool
	}{{"json", "json", false}, {"text", "text", false}, {"json with sealed Redis", "json", true}} {
		t.Run(tc.name, func(t *testing.T) { testNoSecretLeaks(t, tc.format, tc.redis) })
	}
}

func testNoSecretLeaks(t *testing.T, logFormat string, withRedis bool) {
	clientSecret := sentinel("client")
	hmacKey := sentinel("hmac-key-of-at-least-32-bytes")
	junkToken := sentinel("upstream-junk-token")
	upstreamDetail := sentinel("upstream-detail") // may be logged, never returned
	extraSecrets := map[string]string{}
	extraEnv := map[string]string{}
	if withRedis {
		redisPassword := sentinel("redis-password")
		cacheKey := make([]byte, 32)
		_, _ = rand.Read(cacheKey)
		cacheKeyB64 := base64.StdEncoding.EncodeToString(cacheKey)
		rs := redistest.Start(t, "--requirepass", redisPassword)
		extraEnv["QTB_REDIS_URL"] = "redis://:" + redisPassword + "@" + rs.Addr() + "/0"
		extraEnv["QTB_CACHE_KEY"] = "k1:" + cacheKeyB64
		extraSecrets["Redis password"] = redisPassword
		extraSecrets["cache key"] = cacheKeyB64
		extraSecrets["cache key (hex)"] = hex.EncodeToString(cacheKey)
	}

	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	rec := newTokenRecorder(t, tn.URL())
	const origin = "https://app.example.com"
	env := map[string]string{
		"QTB_LOG_LEVEL":      "debug",
		"QTB_LOG_FORMAT":     logFormat,
		"QTB_SESSION_COOKIE": "app_session",
		"QTB_CORS_ORIGINS":   origin,
		"QTB_SESSION_LEEWAY": "0s",
		// Every injected fault must reach the caller, not be retried
		// away or short-circuited by the breaker.
		"QTB_UPSTREAM_TIMEOUT":          "2s",
		"QTB_UPSTREAM_RETRIES":          "0",
		"QTB_UPSTREAM_BREAKER_FAILURES": "1000",
	}
	for k, v := range extraEnv {
		env[k] = v
	}
	p := startInProc(t, inProcOptions{tenant: tn, tenantURL: rec.srv.URL, clientSecret: clientSecret, hmacKey: hmacKey, env: env})

	users := map[string]qliktest.User{}
	user := func(name string) qliktest.User {
		u := tn.AddUser(qliktest.User{Name: name, Subject: "idp|" + name, Status: "active"})
		users[name] = u
		return u
	}
	mint := func(key string, claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(key))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	now := time.Now()
	sessionFor := func(u qliktest.User) string {
		return mint(hmacKey, jwt.MapClaims{"sub": u.ID, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	}
	// Session tokens signed with the real key are credentials too.
	var sessions []string
	session := func(u qliktest.User) string {
		s := sessionFor(u)
		sessions = append(sessions, s)
		return s
	}

	var log []exchange
	send := func(name, method, path string, header map[string]string, body io.Reader) exchange {
		t.Helper()
		resp, b := p.do(t, method, path, "", header, body)
		x := exchange{name: name, status: resp.StatusCode, header: resp.Header, body: string(b)}
		if resp.StatusCode == 200 && path == "/v1/token" {
			if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
				x.ownToken = string(b)
			} else {
				var tb struct {
					AccessToken string `json:"access_token"`
				}
				if err := json.Unmarshal(b, &tb); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				x.ownToken = tb.AccessToken
			}
		}
		log = append(log, x)
		return x
	}
	bearer := func(s string) map[string]string { return map[string]string{"Authorization": "Bearer " + s} }
	with := func(h map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range h {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	want := func(x exchange, status int) {
		t.Helper()
		if x.status != status {
			t.Errorf("%s: status %d, want %d: %s", x.name, x.status, status, x.body)
		}
	}

	// Success, every way a token is asked for.
	ada, bob := user("ada"), user("bob")
	adaS, bobS := session(ada), session(bob)
	want(send("GET json", "GET", "/v1/token", bearer(adaS), nil), 200)
	want(send("GET text", "GET", "/v1/token", with(bearer(adaS), "Accept", "text/plain"), nil), 200)
	want(send("POST cookie", "POST", "/v1/token", map[string]string{"Cookie": "app_session=" + bobS, "Origin": origin}, nil), 200)
	want(send("preflight", "OPTIONS", "/v1/token", map[string]string{"Origin": origin, "Access-Control-Request-Method": "POST"}, nil), 204)

	// Refused sessions, including real-key ones.
	expired := mint(hmacKey, jwt.MapClaims{"sub": ada.ID, "iat": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()})
	noSub := mint(hmacKey, jwt.MapClaims{"exp": now.Add(time.Hour).Unix()})
	sessions = append(sessions, expired, noSub)
	for name, s := range map[string]string{
		"expired": expired, "no user claim": noSub,
		"wrong key":  mint("another-key-of-at-least-32-bytes-long!!", jwt.MapClaims{"sub": ada.ID, "exp": now.Add(time.Hour).Unix()}),
		"alg none":   base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + strings.Split(adaS, ".")[1] + ".",
		"truncated":  adaS[:len(adaS)-5],
		"garbage":    "not-a-jwt",
		"oversized":  strings.Repeat("A", 9000),
		"as cookie":  "",
		"two tokens": adaS + " " + bobS,
	} {
		h := bearer(s)
		if name == "as cookie" {
			h = map[string]string{"Cookie": "app_session=" + expired}
		}
		want(send("bad session: "+name, "GET", "/v1/token", h, nil), 401)
	}
	want(send("no session", "GET", "/v1/token", nil, nil), 401)
	want(send("session in the query", "GET", "/v1/token?access_token="+adaS, nil, nil), 401)

	// Origins.
	want(send("origin refused", "GET", "/v1/token", with(bearer(adaS), "Origin", "https://evil.example.com"), nil), 403)
	want(send("preflight refused", "OPTIONS", "/v1/token", map[string]string{"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}, nil), 403)

	// Upstream failures: each on a cold user so it reaches the tenant, each
	// followed by a success so no breaker opens.
	detailBody := fmt.Sprintf(`{"errors":[{"code":"OAUTH-1","title":"Bad things.","detail":%q}],"traceId":"t"}`, upstreamDetail)
	faults := []struct {
		name  string
		fault qliktest.Fault
	}{
		{"400 with detail", qliktest.Fault{Status: 400, Body: detailBody}},
		{"401", qliktest.Fault{Status: 401}},
		{"403 with detail", qliktest.Fault{Status: 403, Body: detailBody}},
		{"404", qliktest.Fault{Status: 404}},
		{"500 with detail", qliktest.Fault{Status: 500, Body: detailBody}},
		{"502", qliktest.Fault{Status: 502}},
		{"503", qliktest.Fault{Status: 503, RetryAfter: "1"}},
		{"200 with a junk token and no expiry", qliktest.Fault{Status: 200, Body: `{"access_token":"` + junkToken + `","token_type":"bearer"}`}},
		{"200 with a junk token already expired", qliktest.Fault{Status: 200, Body: `{"access_token":"` + junkToken + `","token_type":"bearer","expires_in":1}`}},
		{"200 not JSON, quoting the token", qliktest.Fault{Status: 200, Body: `access_token=` + junkToken}},
		{"200 empty", qliktest.Fault{Status: 200}},
		{"connection dropped", qliktest.Fault{CloseConn: true}},
		{"hang past the upstream timeout", qliktest.Fault{Hang: true}},
	}
	for i, f := range faults {
		u := user(fmt.Sprintf("fault%02d", i))
		tn.InjectFault(qliktest.EndpointToken, f.fault)
		x := send("upstream "+f.name, "GET", "/v1/token", bearer(session(u)), nil)
		if x.status < 400 {
			t.Errorf("upstream %s: status %d, want an error", f.name, x.status)
		}
		if n := tn.PendingFaults(qliktest.EndpointToken); n != 0 {
			t.Fatalf("upstream %s: the fault never reached the tenant (status %d %s)", f.name, x.status, x.body)
		}
		want(send("success after "+f.name, "GET", "/v1/token", bearer(session(user(fmt.Sprintf("ok%02d", i)))), nil), 200)
	}

	// Logout, with and without a revoke failure.
	want(send("logout", "DELETE", "/v1/token", bearer(adaS), nil), 204)
	want(send("logout again", "DELETE", "/v1/token", bearer(adaS), nil), 204)
	tn.InjectFault(qliktest.EndpointRevoke, qliktest.Fault{Status: 500, Body: detailBody})
	x := send("logout, revoke fails", "DELETE", "/v1/token", with(bearer(bobS), "Origin", origin), nil)
	if n := tn.PendingFaults(qliktest.EndpointRevoke); n != 0 {
		t.Errorf("the revoke fault was not used (logout answered %d)", x.status)
	}
	tn.InjectFault(qliktest.EndpointRevoke, qliktest.Fault{CloseConn: true})
	carol := user("carol")
	carolS := session(carol)
	want(send("carol", "GET", "/v1/token", bearer(carolS), nil), 200)
	send("logout, revoke connection dropped", "DELETE", "/v1/token", bearer(carolS), nil)

	// Routing and limits.
	want(send("unknown route", "GET", "/v1/token/"+adaS, bearer(adaS), nil), 404)
	want(send("405", "PUT", "/v1/token", bearer(adaS), nil), 405)
	want(send("413", "POST", "/v1/token", bearer(adaS), bytes.NewReader(make([]byte, 64<<10+1))), 413)
	want(send("healthz", "GET", "/healthz", nil, nil), 200)
	want(send("readyz", "GET", "/readyz", nil, nil), 200)

	// Rate limited last: a 429 may make the broker hold off the tenant.
	tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 429, RetryAfter: "1", Body: detailBody})
	if x := send("upstream 429", "GET", "/v1/token", bearer(session(user("limited"))), nil); x.status < 400 {
		t.Errorf("upstream 429: status %d", x.status)
	}

	metricsText := p.scrape(t)
	issued := rec.all()
	if len(issued) < 3 {
		t.Fatalf("the recorder saw %d issued tokens", len(issued))
	}

	// The sentinels, with the parts of JWTs a log line might quote alone.
	secrets := map[string]string{
		"client secret":                 clientSecret,
		"HMAC key":                      hmacKey,
		"HMAC key (base64)":             base64.StdEncoding.EncodeToString([]byte(hmacKey)),
		"upstream junk token":           junkToken,
		"client secret (form-encoded)":  url.QueryEscape(clientSecret),
		"client secret in Basic auth":   base64.StdEncoding.EncodeToString([]byte(p.client.ID + ":" + clientSecret)),
		"client secret in Basic auth 2": base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(p.client.ID) + ":" + url.QueryEscape(clientSecret))),
	}
	for name, v := range extraSecrets {
		secrets[name] = v
	}
	addJWT := func(kind string, i int, tok string) {
		secrets[fmt.Sprintf("%s %d", kind, i)] = tok
		parts := strings.Split(tok, ".")
		if len(parts) == 3 && len(parts[2]) >= 16 {
			secrets[fmt.Sprintf("%s %d signature", kind, i)] = parts[2]
		}
	}
	for i, tok := range issued {
		addJWT("access token", i, tok)
	}
	for i, s := range sessions {
		addJWT("session token", i, s)
	}

	logs := p.logs.String()
	if !strings.Contains(logs, "debug") && !strings.Contains(logs, "DEBUG") {
		t.Errorf("no debug line in the logs: the test does not look where it should")
	}
	check := func(where, text string, allowed string) {
		t.Helper()
		for name, s := range secrets {
			if allowed != "" && strings.Contains(allowed, s) {
				continue // the token itself, or a part of it
			}
			if strings.Contains(text, s) {
				t.Errorf("%s contains the %s", where, name)
			}
		}
	}
	check("the logs", logs, "")
	check("/metrics", metricsText, "")
	for _, u := range users {
		if strings.Contains(metricsText, u.ID) || strings.Contains(metricsText, u.Subject) {
			t.Errorf("/metrics names user %s", u.Name)
		}
	}
	served := 0
	for _, x := range log {
		var hdr strings.Builder
		for k, vs := range x.header {
			fmt.Fprintf(&hdr, "%s: %s\n", k, strings.Join(vs, ", "))
		}
		check(x.name+" response headers", hdr.String(), "")
		check(x.name+" response body", x.body, x.ownToken)
		if strings.Contains(x.body, upstreamDetail) || strings.Contains(hdr.String(), upstreamDetail) {
			t.Errorf("%s: the upstream's error detail is echoed to the caller", x.name)
		}
		if x.ownToken != "" {
			served++
		}
		if x.status >= 400 {
			var eb struct{ Error, Message string }
			if x.body != "" && (json.Unmarshal([]byte(x.body), &eb) != nil || eb.Error == "") {
				t.Errorf("%s: error body %q is not {error, message}", x.name, x.body)
			}
		}
	}
	if served < len(faults)+3 {
		t.Errorf("only %d successful token responses", served)
	}
	t.Logf("%d exchanges, %d tokens issued, %d sentinel strings, %d bytes of %s logs", len(log), len(issued), len(secrets), len(logs), logFormat)
}
