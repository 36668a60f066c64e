package qliktest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// testKey is a key pair with its JWK, as a client would register it.
type testKey struct {
	kid, alg string
	priv     crypto.Signer
	jwk      map[string]string
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func newRSAKey(t *testing.T, kid, alg string, bits int) testKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{kid, alg, k, map[string]string{"kid": kid, "kty": "RSA", "alg": alg, "use": "sig",
		"n": b64u(k.N.Bytes()), "e": b64u(big.NewInt(int64(k.E)).Bytes())}}
}

func newECKey(t *testing.T, kid string) testKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return testKey{kid, "ES384", k, map[string]string{"kid": kid, "kty": "EC", "alg": "ES384", "use": "sig",
		"crv": "P-384", "x": b64u(raw[1:49]), "y": b64u(raw[49:])}}
}

func keysJSON(t *testing.T, keys ...testKey) json.RawMessage {
	t.Helper()
	var jwks []map[string]string
	for _, k := range keys {
		jwks = append(jwks, k.jwk)
	}
	raw, err := json.Marshal(jwks)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// sign makes an assertion with k under alg (usually k.alg), with claims.
func (k testKey) sign(t *testing.T, alg string, claims jwt.MapClaims, header map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	tok.Header["kid"] = k.kid
	for h, v := range header {
		if v == nil {
			delete(tok.Header, h)
		} else {
			tok.Header[h] = v
		}
	}
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAssertionChecks runs each check of the tenant on an assertion that
// differs from a good one in one way only. A refused assertion is answered
// like any failed client authentication: OAUTH-14 with the tenant's status
// (400 by default, 401 with WithClientAuthFailureStatus); the reason shows
// only in AssertionRefusals.
func TestAssertionChecks(t *testing.T) {
	for _, status := range []int{http.StatusBadRequest, http.StatusUnauthorized} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			testAssertionChecks(t, status, qliktest.WithClientAuthFailureStatus(status))
		})
	}
}

func testAssertionChecks(t *testing.T, refused int, opts ...qliktest.Option) {
	h := newHarness(t, opts...)
	rs256 := newRSAKey(t, "rs256", "RS256", 2048)
	rs512 := newRSAKey(t, "rs512", "RS512", 2048)
	es384 := newECKey(t, "es384")
	other := newRSAKey(t, "rs256", "RS256", 2048) // same kid, another key
	c := h.tn.AddClient(qliktest.OAuthClient{ID: "keyed", AllowedAuthMethods: []string{"private_key_jwt"},
		PublicKeys: keysJSON(t, rs256, rs512, es384)})
	aud := h.tn.URL() + "/oauth/token"
	now := h.clock.Now()
	jti := 0
	good := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		jti++
		cl := jwt.MapClaims{"iss": c.ID, "sub": c.ID, "aud": aud, "jti": "j" + string(rune('a'+jti%26)) + time.Duration(jti).String(),
			"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
		if mod != nil {
			mod(cl)
		}
		return cl
	}
	post := func(assertion string, extra url.Values) response {
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {c.ID},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
		for k, v := range extra {
			form[k] = v
		}
		return h.postForm("/oauth/token", form)
	}

	for _, k := range []testKey{rs256, rs512, es384} {
		if r := post(k.sign(t, k.alg, good(nil), nil), nil); r.status != http.StatusOK {
			t.Fatalf("%s: good assertion refused: %d %s", k.alg, r.status, r.body)
		}
		if n := h.tn.AssertionKeyUses(k.kid); n != 1 {
			t.Errorf("%s: %d uses, want 1", k.kid, n)
		}
	}
	// JSON bodies carry the same fields.
	if r := h.postJSON("/oauth/token", map[string]any{"grant_type": "client_credentials", "client_id": c.ID,
		"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
		"client_assertion":      rs256.sign(t, "RS256", good(nil), nil)}); r.status != http.StatusOK {
		t.Fatalf("JSON body: %d %s", r.status, r.body)
	}

	replayed := rs256.sign(t, "RS256", good(nil), nil)
	if r := post(replayed, nil); r.status != http.StatusOK {
		t.Fatalf("first use: %d %s", r.status, r.body)
	}
	tests := []struct {
		name      string
		assertion string
		extra     url.Values
		want      string
	}{
		{"wrong key", other.sign(t, "RS256", good(nil), nil), nil, qliktest.RefusedSignature},
		{"unknown kid", rs256.sign(t, "RS256", good(nil), map[string]any{"kid": "nope"}), nil, qliktest.RefusedKey},
		{"no kid", rs256.sign(t, "RS256", good(nil), map[string]any{"kid": nil}), nil, qliktest.RefusedKey},
		{"alg not the key's", rs256.sign(t, "RS512", good(nil), nil), nil, qliktest.RefusedAlg},
		{"aud with a trailing slash", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) { c["aud"] = aud + "/" }), nil), nil, qliktest.RefusedAudience},
		{"aud of another host", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) {
			c["aud"] = strings.Replace(aud, "127.0.0.1", "localhost", 1)
		}), nil), nil, qliktest.RefusedAudience},
		{"aud the tenant, not the endpoint", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) { c["aud"] = h.tn.URL() }), nil), nil, qliktest.RefusedAudience},
		{"aud as an array", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) { c["aud"] = []string{aud} }), nil), nil, qliktest.RefusedAudience},
		{"wrong iss", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) { c["iss"] = "someone" }), nil), nil, qliktest.RefusedClient},
		{"wrong sub", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) { c["sub"] = "someone" }), nil), nil, qliktest.RefusedClient},
		{"exp too far", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) { c["exp"] = now.Add(301 * time.Second).Unix() }), nil), nil, qliktest.RefusedLifetime},
		{"expired", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) {
			c["iat"], c["exp"] = now.Add(-6*time.Minute).Unix(), now.Add(-time.Minute).Unix()
		}), nil), nil, qliktest.RefusedExpired},
		{"issued in the future", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) {
			c["iat"], c["exp"] = now.Add(2*time.Minute).Unix(), now.Add(4*time.Minute).Unix()
		}), nil), nil, qliktest.RefusedNotYet},
		{"no jti", rs256.sign(t, "RS256", good(func(c jwt.MapClaims) { delete(c, "jti") }), nil), nil, qliktest.RefusedMalformed},
		{"replayed jti", replayed, nil, qliktest.RefusedReplay},
		{"secret beside the assertion", rs256.sign(t, "RS256", good(nil), nil), url.Values{"client_secret": {"x"}}, qliktest.RefusedBoth},
		{"wrong assertion type", rs256.sign(t, "RS256", good(nil), nil), url.Values{"client_assertion_type": {"jwt"}}, qliktest.RefusedAssertionType},
		{"another client's id", rs256.sign(t, "RS256", good(nil), nil), url.Values{"client_id": {h.client.ID}}, qliktest.RefusedClient},
		{"tampered payload", func() string {
			p := strings.Split(rs256.sign(t, "RS256", good(nil), nil), ".")
			claims := good(nil)
			raw, _ := json.Marshal(claims)
			return p[0] + "." + b64u(raw) + "." + p[2]
		}(), nil, qliktest.RefusedSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(h.tn.AssertionRefusals())
			r := post(tt.assertion, tt.extra)
			// Answered like any refused client authentication.
			wantError(t, r, refused, "OAUTH-14")
			got := h.tn.AssertionRefusals()
			if len(got) != before+1 || got[len(got)-1] != tt.want {
				t.Errorf("refusals %q, want %q last", got[before:], tt.want)
			}
		})
	}

	// A client without private_key_jwt cannot use assertions, even with a
	// registered key; one with only private_key_jwt cannot use its secret.
	h.tn.SetPublicKeys(h.client.ID, keysJSON(t, rs256))
	r := h.postForm("/oauth/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {h.client.ID},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {rs256.sign(t, "RS256", good(func(cl jwt.MapClaims) { cl["iss"], cl["sub"] = h.client.ID, h.client.ID }), nil)}})
	wantError(t, r, refused, "OAUTH-14")
	r = h.postForm("/oauth/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {c.ID}, "client_secret": {c.Secret}})
	wantError(t, r, refused, "OAUTH-14")
}

// TestAssertionKeysThroughTheAPI registers keys with create and PATCH and
// reads them back with get; rotation is replace [old, new] then [new].
func TestAssertionKeysThroughTheAPI(t *testing.T) {
	h := newHarness(t)
	old, next := newRSAKey(t, "old", "RS256", 2048), newECKey(t, "new")
	admin := h.ccToken(h.tn.AddAdminClient(), "")
	call := func(method, path, body string) response {
		return h.mustDo(method, path, "application/json", body, http.Header{"Authorization": {"Bearer " + admin}})
	}
	r := call(http.MethodPost, "/api/v1/oauth-clients", `{"appType":"web","clientName":"k","allowedGrantTypes":["client_credentials"],`+
		`"allowedAuthMethods":["private_key_jwt"],"publicKeys":`+string(keysJSON(t, old))+`}`)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var created struct {
		ClientID           string              `json:"clientId"`
		ClientSecret       string              `json:"clientSecret"`
		AllowedAuthMethods []string            `json:"allowedAuthMethods"`
		PublicKeys         []map[string]string `json:"publicKeys"`
	}
	if err := json.Unmarshal(r.body, &created); err != nil || created.ClientSecret != "" ||
		!slices.Equal(created.AllowedAuthMethods, []string{"private_key_jwt"}) || len(created.PublicKeys) != 1 || created.PublicKeys[0]["kid"] != "old" {
		t.Fatalf("created %+v, %v", created, err)
	}
	kids := func() []string {
		var got struct {
			PublicKeys []map[string]string `json:"publicKeys"`
		}
		r := call(http.MethodGet, "/api/v1/oauth-clients/"+created.ClientID, "")
		if err := json.Unmarshal(r.body, &got); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range got.PublicKeys {
			out = append(out, k["kid"])
		}
		return out
	}
	assert := func(k testKey) int {
		now := h.clock.Now()
		a := k.sign(t, k.alg, jwt.MapClaims{"iss": created.ClientID, "sub": created.ClientID, "aud": h.tn.URL() + "/oauth/token",
			"jti": time.Now().String() + k.kid, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}, nil)
		return h.postForm("/oauth/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {created.ClientID},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {a}}).status
	}
	// A refused assertion is the tenant's client-auth failure: 400 by default.
	const refused = http.StatusBadRequest
	if assert(old) != 200 || assert(next) != refused {
		t.Fatal("before rotation: want old accepted, new refused")
	}
	if r := call(http.MethodPatch, "/api/v1/oauth-clients/"+created.ClientID,
		`[{"op":"replace","path":"/publicKeys","value":`+string(keysJSON(t, old, next))+`}]`); r.status != http.StatusNoContent {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	if got := kids(); !slices.Equal(got, []string{"old", "new"}) || assert(old) != 200 || assert(next) != 200 {
		t.Fatalf("during rotation: kids %v; want both accepted", got)
	}
	call(http.MethodPatch, "/api/v1/oauth-clients/"+created.ClientID, `[{"op":"replace","path":"/publicKeys","value":`+string(keysJSON(t, next))+`}]`)
	if got := kids(); !slices.Equal(got, []string{"new"}) || assert(old) != refused || assert(next) != 200 {
		t.Fatalf("after rotation: kids %v; want only new accepted", got)
	}
	// A repeated kid is refused.
	if r := call(http.MethodPatch, "/api/v1/oauth-clients/"+created.ClientID,
		`[{"op":"replace","path":"/publicKeys","value":`+string(keysJSON(t, next, next))+`}]`); r.status != http.StatusBadRequest {
		t.Errorf("repeated kid: %d %s", r.status, r.body)
	}
}
