package broker_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// TestBadTokensThroughHTTP sends a few representative hostile session
// tokens through the whole API. The full corpus (over 200 rows, every key
// type, the JWKS and the cookie) is session/badtoken_test.go, which proves
// each is refused for its reason by the Verifier and the session
// middleware; here each must also get 401 invalid_session naming the reason
// with WWW-Authenticate, be counted under exactly that reason, and cost no
// call to the tenant.
func TestBadTokensThroughHTTP(t *testing.T) {
	const iss, aud = "https://app.example.com", "qtb"
	e := newEnv(t, envOptions{session: session.Config{Issuer: iss, Audience: aud}})
	user := e.addUser("Ada").ID
	claims := func(overrides map[string]any) jwt.MapClaims {
		now := e.clock.Now()
		c := jwt.MapClaims{"sub": user, "iss": iss, "aud": aud, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		for k, v := range overrides {
			c[k] = v
		}
		return c
	}
	hs256 := func(key []byte, c jwt.MapClaims) string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	b64JSON := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}

	// The setup works: a good token gets a token, so each rejection below
	// is caused by the one thing the row changes.
	valid := hs256(hmacKey, claims(nil))
	resp, body := btDo(t, e, valid, nil)
	if resp.StatusCode != http.StatusOK || e.tokenUser(decodeTokenBody(t, body).AccessToken) != user {
		t.Fatalf("good token: %d %s", resp.StatusCode, body)
	}
	e.tenant.ResetCounters()

	for _, r := range []struct {
		name   string
		token  string
		header map[string]string // more headers (Add, so they can repeat Authorization)
		reason session.Reason
	}{
		{name: "alg none", token: b64JSON(map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64JSON(claims(nil)) + ".", reason: session.ReasonAlgorithm},
		{name: "bad signature", token: hs256([]byte("another-secret-of-at-least-32-bytes!!"), claims(nil)), reason: session.ReasonSignature},
		{name: "expired", token: hs256(hmacKey, claims(map[string]any{"exp": e.clock.Now().Add(-time.Hour).Unix()})), reason: session.ReasonExpired},
		{name: "wrong audience", token: hs256(hmacKey, claims(map[string]any{"aud": "other"})), reason: session.ReasonAudience},
		{name: "9 KB token", token: hs256(hmacKey, claims(map[string]any{"pad": strings.Repeat("p", 9<<10)})), reason: session.ReasonTooLarge},
		{name: "two Authorization headers", token: valid, header: map[string]string{"Authorization": "Bearer " + valid}, reason: session.ReasonMalformed},
	} {
		rejected := func() (total float64, reason float64) {
			for _, rs := range session.Reasons() {
				n := testutil.ToFloat64(e.metrics.SessionRejections.WithLabelValues(string(rs)))
				total += n
				if rs == r.reason {
					reason = n
				}
			}
			return total, reason
		}
		totalBefore, before := rejected()
		resp, body := btDo(t, e, r.token, r.header)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401 (body %s)", r.name, resp.StatusCode, body)
			continue
		}
		eb := decodeErrorBody(t, body)
		if eb.Error != "invalid_session" || !strings.Contains(eb.Message, "("+string(r.reason)+")") {
			t.Errorf("%s: body %s, want invalid_session (%s)", r.name, body, r.reason)
		}
		if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: no WWW-Authenticate: Bearer", r.name)
		}
		if totalAfter, after := rejected(); after != before+1 || totalAfter != totalBefore+1 {
			t.Errorf("%s: rejections{reason=%q} went %v -> %v, all reasons %v -> %v", r.name, r.reason, before, after, totalBefore, totalAfter)
		}
		if n := e.tenant.Calls(qliktest.EndpointToken); n != 0 {
			t.Fatalf("%s: %d upstream token calls", r.name, n)
		}
	}
}

// btDo sends GET /v1/token with the token as a Bearer token (unless empty)
// and the headers added, so that they can repeat Authorization.
func btDo(t *testing.T, e *env, token string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.srv.URL+"/v1/token", nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Add(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}
