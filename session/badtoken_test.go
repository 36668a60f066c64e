package session_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/labstack/echo/v4"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// The bad-token corpus: every row is a token (and, for the transport rows,
// a request) that an attacker or a broken client can send. Each must be
// refused by Verify with exactly its Reason, and by the echo middleware,
// which also takes the token from the request, with 401, WWW-Authenticate:
// Bearer and the same Reason. broker/badtoken_test.go sends a few of these
// rows through the whole HTTP API, where each must also be counted under its
// reason and cost no call to the tenant.

const (
	btIssuer   = "https://app.example.com"
	btAudience = "qtb"
	// btAlphabet is base64url's alphabet, for editing encoded segments.
	btAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	btPath     = "/v1/token"
)

// btAttackerSecret is an HMAC secret that is not the verifier's.
var btAttackerSecret = []byte("attacker-secret-attacker-secret-!!")

// btSetup is one Verifier configured with one kind of session key, behind
// the session middleware.
type btSetup struct {
	name   string
	v      *session.Verifier
	srv    *echo.Echo
	cookie string // the middleware's CookieName
	alg    string // the algorithm its real key signs with
	key    any    // the real signing key
	kid    string // the kid the real key is published under (JWKS only)
	// lastErr is the error the middleware's request last ended with.
	lastErr error
}

func newBTSetup(t *testing.T, name, alg string, key any, kid string, cfg session.Config, cookie string) *btSetup {
	t.Helper()
	cfg.Issuer, cfg.Audience = btIssuer, btAudience
	s := &btSetup{name: name, v: newVerifier(t, cfg), cookie: cookie, alg: alg, key: key, kid: kid}
	s.srv = echo.New()
	s.srv.HTTPErrorHandler = func(err error, c echo.Context) {
		s.lastErr = err
		s.srv.DefaultHTTPErrorHandler(err, c)
	}
	s.srv.GET(btPath, func(c echo.Context) error {
		id, _ := session.IdentityFrom(c)
		return c.String(http.StatusOK, id.UserValue)
	}, session.MiddlewareWithConfig(session.MiddlewareConfig{Verifier: s.v, CookieName: cookie}))

	// The setup works: a good token is accepted, so each rejection below is
	// caused by the one thing the row changes.
	tok := s.token(t, nil, nil)
	if id, err := s.v.Verify(context.Background(), tok); err != nil || id.UserValue != "alice" {
		t.Fatalf("%s: good token: %+v, %v", name, id, err)
	}
	r := btRow{token: tok}
	if cookie != "" {
		r = btRow{header: map[string]string{"Cookie": cookie + "=" + tok}}
	}
	if w := s.serve(r); w.Code != http.StatusOK || w.Body.String() != "alice" {
		t.Fatalf("%s: good token through the middleware: %d %s", name, w.Code, w.Body)
	}
	return s
}

// good returns valid claims; overrides replace entries or, with a nil
// value, delete them.
func (s *btSetup) good(overrides map[string]any) jwt.MapClaims {
	o := map[string]any{"iss": btIssuer, "aud": btAudience}
	maps.Copy(o, overrides)
	return claims(o)
}

// token mints a token with the setup's real key.
func (s *btSetup) token(t *testing.T, header map[string]any, overrides map[string]any) string {
	t.Helper()
	h := map[string]any{}
	if s.kid != "" {
		h["kid"] = s.kid
	}
	maps.Copy(h, header)
	return signAlg(t, s.alg, s.key, h, s.good(overrides))
}

// serve sends the row's request through the setup's middleware.
func (s *btSetup) serve(r btRow) *httptest.ResponseRecorder {
	path := r.path
	if path == "" {
		path = btPath
	}
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	for k, v := range r.header {
		req.Header.Add(k, v)
	}
	s.lastErr = nil
	w := httptest.NewRecorder()
	s.srv.ServeHTTP(w, req)
	return w
}

// btRow is one hostile request.
type btRow struct {
	name   string
	setup  *btSetup
	token  string            // sent as "Authorization: Bearer <token>" unless empty
	header map[string]string // more headers (Add, so they can repeat Authorization)
	path   string            // default btPath
	reason session.Reason
}

// check asserts the row is refused for its reason by Verify (when the row
// is only a token) and by the middleware.
func (r btRow) check(t *testing.T) {
	t.Helper()
	name := r.setup.name + ": " + r.name
	if r.header == nil && r.path == "" {
		_, err := r.setup.v.Verify(context.Background(), r.token)
		var se *session.Error
		if !errors.As(err, &se) || se.Reason != r.reason {
			t.Errorf("%s: Verify = %v, want a *session.Error with %q", name, err, r.reason)
		}
	}
	w := r.setup.serve(r)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("%s: middleware answered %d, want 401 (body %s)", name, w.Code, w.Body)
		return
	}
	if got := session.ReasonOf(r.setup.lastErr); got != r.reason {
		t.Errorf("%s: middleware refused with %q, want %q", name, got, r.reason)
	}
	if !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("%s: no WWW-Authenticate: Bearer", name)
	}
}

func TestBadTokenCorpus(t *testing.T) {
	t.Parallel()
	k := keys()
	hmacKey := k.hmac

	// The attacker's server: every jku/x5u/jwk/x5c header points here, and
	// it would serve the attacker's key to a verifier naive enough to ask.
	attacker := newJWKSServer(t)
	attacker.setKeys(t, jwkFor(t, &k.attackerRSA.PublicKey, "attacker", "RS256"))
	attackerJWKS := attacker.body
	attackerCert := btSelfSigned(t, k.attackerRSA)

	// The app's real JWKS.
	jwksSrv := newJWKSServer(t)
	jwksSrv.setKeys(t, jwkFor(t, &k.rsaOther.PublicKey, "k1", "RS256"))
	realJWKS := jwksSrv.body

	rsaPEM, rsaDER := pkixPEM(t, &k.rsa.PublicKey), pkixDER(t, &k.rsa.PublicKey)
	ecPEM, ecDER := pkixPEM(t, &k.p256.PublicKey), pkixDER(t, &k.p256.PublicKey)
	jwksPEM, jwksDER := pkixPEM(t, &k.rsaOther.PublicKey), pkixDER(t, &k.rsaOther.PublicKey)

	hmacS := newBTSetup(t, "hmac", "HS256", hmacKey, "", session.Config{HMACSecret: hmacKey}, "")
	hs256S := newBTSetup(t, "hmac-hs256-only", "HS256", hmacKey, "", session.Config{HMACSecret: hmacKey, Algorithms: []string{"HS256"}}, "")
	rsaS := newBTSetup(t, "rsa-pem", "RS256", k.rsa, "", session.Config{PublicKeyPEM: rsaPEM}, "")
	ecS := newBTSetup(t, "ec-pem", "ES256", k.p256, "", session.Config{PublicKeyPEM: ecPEM}, "")
	jwksS := newBTSetup(t, "jwks", "RS256", k.rsaOther, "k1", session.Config{JWKSURL: jwksSrv.srv.URL + "/jwks.json", JWKSUnknownKIDMinWait: time.Hour}, "")
	cookieS := newBTSetup(t, "hmac-cookie", "HS256", hmacKey, "", session.Config{HMACSecret: hmacKey}, "app_session")
	jwksHitsAtStart := jwksSrv.hits.Load()

	R := func(name string, s *btSetup, token string, reason session.Reason) btRow {
		return btRow{name: name, setup: s, token: token, reason: reason}
	}
	var rows []btRow

	// alg none in every spelling, empty signature, on every key type.
	for _, s := range []*btSetup{hmacS, rsaS, ecS, jwksS} {
		for _, alg := range []string{"none", "None", "NONE", "nOnE"} {
			h := map[string]any{"alg": alg, "typ": "JWT"}
			if s.kid != "" {
				h["kid"] = s.kid
			}
			rows = append(rows, R("alg "+alg, s, b64(mustJSON(t, h))+"."+b64(mustJSON(t, s.good(nil)))+".", session.ReasonAlgorithm))
		}
	}

	// Algorithm confusion: HS256 keyed with the public key, as PEM and DER.
	for _, c := range []struct {
		s      *btSetup
		secret []byte
		what   string
	}{
		{rsaS, rsaPEM, "RSA PEM"}, {rsaS, rsaDER, "RSA DER"}, {rsaS, x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey), "RSA PKCS#1 DER"},
		{ecS, ecPEM, "EC PEM"}, {ecS, ecDER, "EC DER"},
		{jwksS, jwksPEM, "JWKS key PEM"}, {jwksS, jwksDER, "JWKS key DER"}, {jwksS, realJWKS, "JWKS document"},
	} {
		for _, alg := range []string{"HS256", "HS384", "HS512"} {
			h := map[string]any{}
			if c.s.kid != "" {
				h["kid"] = c.s.kid
			}
			rows = append(rows, R(alg+" keyed with the "+c.what, c.s, signAlg(t, alg, c.secret, h, c.s.good(nil)), session.ReasonAlgorithm))
		}
	}

	// Algorithms outside the allow-list.
	rows = append(rows,
		R("HS384 with the real key, allow-list HS256", hs256S, signAlg(t, "HS384", hmacKey, nil, hs256S.good(nil)), session.ReasonAlgorithm),
		R("HS512 with the real key, allow-list HS256", hs256S, signAlg(t, "HS512", hmacKey, nil, hs256S.good(nil)), session.ReasonAlgorithm),
		R("RS256 on an HMAC verifier", hmacS, signAlg(t, "RS256", k.attackerRSA, nil, hmacS.good(nil)), session.ReasonAlgorithm),
		R("ES256 on an HMAC verifier", hmacS, signAlg(t, "ES256", k.p256Other, nil, hmacS.good(nil)), session.ReasonAlgorithm),
		R("ES256 on an RSA verifier", rsaS, signAlg(t, "ES256", k.p256Other, nil, rsaS.good(nil)), session.ReasonAlgorithm),
		R("ES384 on a P-256 verifier", ecS, signAlg(t, "ES384", k.p384, nil, ecS.good(nil)), session.ReasonAlgorithm),
		R("RS256 on a P-256 verifier", ecS, signAlg(t, "RS256", k.attackerRSA, nil, ecS.good(nil)), session.ReasonAlgorithm),
	)
	for _, hdr := range []string{`{"typ":"JWT"}`, `{"alg":"hs256"}`, `{"alg":"HS256 "}`, `{"alg":" HS256"}`, `{"alg":"HS1"}`, `{"alg":"XYZ"}`,
		`{"alg":123}`, `{"alg":["HS256"]}`, `{"alg":null}`, `{"alg":{"name":"HS256"}}`, `{}`} {
		// Signed with the real key under HS256: only the header's alg is wrong.
		rows = append(rows, R("header "+hdr, hmacS, signRaw(t, jwt.SigningMethodHS256, hmacKey, hdr, mustJSON(t, hmacS.good(nil))), session.ReasonAlgorithm))
	}

	// Signatures: foreign, flipped, missing, truncated, borrowed.
	for _, s := range []*btSetup{hmacS, rsaS, ecS, jwksS} {
		h, p, sig := btSplit(s.token(t, nil, nil))
		flipped := []byte(sig)
		i := strings.IndexByte(btAlphabet, sig[len(sig)/2])
		flipped[len(sig)/2] = btAlphabet[(i+1)%64] // another base64url character
		raw, _ := base64.RawURLEncoding.DecodeString(sig)
		_, _, otherSig := btSplit(s.token(t, nil, map[string]any{"sub": "someone-else"}))
		rows = append(rows,
			R("flipped signature", s, h+"."+p+"."+string(flipped), session.ReasonSignature),
			R("missing signature", s, h+"."+p+".", session.ReasonSignature),
			R("truncated signature", s, h+"."+p+"."+base64.RawURLEncoding.EncodeToString(raw[:len(raw)-1]), session.ReasonSignature),
			R("signature of another token", s, h+"."+p+"."+otherSig, session.ReasonSignature),
		)
	}
	rows = append(rows,
		R("HMAC with another secret", hmacS, signAlg(t, "HS256", k.hmacOther, nil, hmacS.good(nil)), session.ReasonSignature),
		R("RSA with the attacker's key", rsaS, signAlg(t, "RS256", k.attackerRSA, nil, rsaS.good(nil)), session.ReasonSignature),
		R("EC with the attacker's key", ecS, signAlg(t, "ES256", k.p256Other, nil, ecS.good(nil)), session.ReasonSignature),
	)

	// kid: the right kid with a foreign signature, then hostile kids.
	foreign := func(kid any) string {
		return signAlg(t, "RS256", k.attackerRSA, map[string]any{"kid": kid}, jwksS.good(nil))
	}
	rightKidRows := []btRow{
		R("right kid, attacker RS256 signature", jwksS, foreign("k1"), session.ReasonSignature),
		// The JWK pins alg RS256: its key is not offered for PS256.
		R("right kid, PS256 instead of the JWK's RS256", jwksS, signAlg(t, "PS256", k.attackerRSA, map[string]any{"kid": "k1"}, jwksS.good(nil)), session.ReasonUnknownKey),
		R("right kid, no signature", jwksS, strings.TrimRight(foreign("k1"), btAlphabet), session.ReasonSignature),
	}
	rows = append(rows,
		R("kid path", jwksS, foreign("../../../../../etc/passwd"), session.ReasonUnknownKey),
		R("kid absolute path", jwksS, foreign("/dev/null"), session.ReasonUnknownKey),
		R("kid URL", jwksS, foreign(attacker.srv.URL+"/jwks.json"), session.ReasonUnknownKey),
		R("kid SQL", jwksS, foreign("' OR '1'='1' UNION SELECT 'secret' --"), session.ReasonUnknownKey),
		R("kid empty", jwksS, foreign(""), session.ReasonUnknownKey),
		R("kid 10 KB", jwksS, foreign(strings.Repeat("k", 10<<10)), session.ReasonTooLarge),
		R("kid number", jwksS, foreign(1), session.ReasonMalformed),
		R("kid object", jwksS, foreign(map[string]any{"kid": "k1"}), session.ReasonMalformed),
		R("kid array", jwksS, foreign([]string{"k1"}), session.ReasonMalformed),
		R("kid null", jwksS, foreign(json.RawMessage("null")), session.ReasonMalformed),
		R("kid true", jwksS, foreign(true), session.ReasonMalformed),
	)

	// Key-carrying headers: never fetched, never trusted.
	var set struct{ Keys []map[string]any }
	if err := json.Unmarshal(attackerJWKS, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("attacker JWKS: %v", err)
	}
	keyHeaders := map[string]any{
		"jku": attacker.srv.URL + "/jwks.json",
		"x5u": attacker.srv.URL + "/cert.pem",
		"jwk": set.Keys[0],
		"x5c": []string{base64.StdEncoding.EncodeToString(attackerCert)},
	}
	for _, s := range []*btSetup{rsaS, jwksS} {
		for name, v := range keyHeaders {
			// Without a kid (a JWKS verifier then tries its own keys) and
			// with the attacker's kid (unknown to a JWKS verifier).
			rows = append(rows, R(name+" header", s, signAlg(t, "RS256", k.attackerRSA, map[string]any{name: v}, s.good(nil)), session.ReasonSignature))
			want := session.ReasonSignature
			if s == jwksS {
				want = session.ReasonUnknownKey
			}
			rows = append(rows, R(name+" header, attacker kid", s, signAlg(t, "RS256", k.attackerRSA, map[string]any{name: v, "kid": "attacker"}, s.good(nil)), want))
		}
		rows = append(rows, R("jku+x5u+jwk+x5c headers", s, signAlg(t, "RS256", k.attackerRSA, maps.Clone(keyHeaders), s.good(nil)), session.ReasonSignature))
	}
	rows = append(rows, R("jku header on HMAC, attacker HS256", hmacS,
		signAlg(t, "HS256", btAttackerSecret, map[string]any{"jku": attacker.srv.URL + "/jwks.json"}, hmacS.good(nil)), session.ReasonSignature))

	// crit: any crit header is refused, even on a token the real key signed.
	for _, crit := range []any{[]string{"exp"}, []string{"b64"}, []string{}, "b64", nil} {
		h := map[string]any{"crit": crit}
		if crit == nil {
			h = map[string]any{"crit": json.RawMessage("null")}
		}
		rows = append(rows, R("crit "+mustJSON(t, crit), hmacS, hmacS.token(t, h, nil), session.ReasonCritical))
	}
	rows = append(rows, R("crit on JWKS", jwksS, jwksS.token(t, map[string]any{"crit": []string{"exp"}}, nil), session.ReasonCritical))

	// Time claims (the setups have no leeway).
	for _, s := range []*btSetup{hmacS, jwksS} {
		rows = append(rows,
			R("exp an hour ago", s, s.token(t, nil, map[string]any{"exp": now.Add(-time.Hour).Unix()}), session.ReasonExpired),
			R("exp a second ago", s, s.token(t, nil, map[string]any{"exp": now.Add(-time.Second).Unix()}), session.ReasonExpired),
			R("exp missing", s, s.token(t, nil, map[string]any{"exp": nil}), session.ReasonMissingExpiry),
			R("exp a string", s, s.token(t, nil, map[string]any{"exp": "9999999999"}), session.ReasonMissingExpiry),
			R("exp zero", s, s.token(t, nil, map[string]any{"exp": 0}), session.ReasonMissingExpiry),
			R("exp null", s, s.token(t, nil, map[string]any{"exp": json.RawMessage("null")}), session.ReasonMissingExpiry),
			R("exp an object", s, s.token(t, nil, map[string]any{"exp": map[string]any{"$gt": 0}}), session.ReasonMissingExpiry),
			R("nbf in an hour", s, s.token(t, nil, map[string]any{"nbf": now.Add(time.Hour).Unix()}), session.ReasonNotYetValid),
			R("nbf in a second", s, s.token(t, nil, map[string]any{"nbf": now.Add(time.Second).Unix()}), session.ReasonNotYetValid),
			R("iat in an hour", s, s.token(t, nil, map[string]any{"iat": now.Add(time.Hour).Unix()}), session.ReasonNotYetValid),
		)
	}

	// Issuer and audience.
	for _, s := range []*btSetup{hmacS, rsaS} {
		rows = append(rows,
			R("wrong iss", s, s.token(t, nil, map[string]any{"iss": "https://evil.example.com"}), session.ReasonIssuer),
			R("iss differing in case", s, s.token(t, nil, map[string]any{"iss": strings.ToUpper(btIssuer)}), session.ReasonIssuer),
			R("iss with a trailing slash", s, s.token(t, nil, map[string]any{"iss": btIssuer + "/"}), session.ReasonIssuer),
			R("missing iss", s, s.token(t, nil, map[string]any{"iss": nil}), session.ReasonIssuer),
			R("empty iss", s, s.token(t, nil, map[string]any{"iss": ""}), session.ReasonIssuer),
			R("iss an array", s, s.token(t, nil, map[string]any{"iss": []string{btIssuer}}), session.ReasonIssuer),
			R("wrong aud", s, s.token(t, nil, map[string]any{"aud": "other"}), session.ReasonAudience),
			R("aud list without us", s, s.token(t, nil, map[string]any{"aud": []string{"a", "b"}}), session.ReasonAudience),
			R("missing aud", s, s.token(t, nil, map[string]any{"aud": nil}), session.ReasonAudience),
			R("empty aud", s, s.token(t, nil, map[string]any{"aud": ""}), session.ReasonAudience),
			R("aud a number", s, s.token(t, nil, map[string]any{"aud": 7}), session.ReasonAudience),
		)
	}

	// The user claim: missing, empty, blank, not a string, control characters.
	for name, v := range map[string]any{
		"missing": nil, "empty": "", "blank": "   ", "a number": 42, "a bool": true, "an array": []string{"ada"},
		"an object": map[string]any{"id": "ada"}, "null": json.RawMessage("null"), "with NUL": "ada\x00", "with newline": "ada\nadmin",
	} {
		rows = append(rows, R("sub "+name, hmacS, hmacS.token(t, nil, map[string]any{"sub": v}), session.ReasonUserClaim))
	}

	// Structure and encoding.
	good := hmacS.token(t, nil, nil)
	h, p, sig := btSplit(good)
	resign := func(h, p string) string { return signSegments(t, jwt.SigningMethodHS256, hmacKey, h, p) }
	rows = append(rows,
		R("one segment", hmacS, h, session.ReasonMalformed),
		R("two segments", hmacS, h+"."+p, session.ReasonMalformed),
		R("four segments", hmacS, good+"."+sig, session.ReasonMalformed),
		R("four segments, empty last", hmacS, good+".", session.ReasonMalformed),
		R("five segments (JWE shape)", hmacS, h+"."+p+"."+sig+"."+p+"."+sig, session.ReasonMalformed),
		R("only dots", hmacS, "..", session.ReasonMalformed),
		R("empty header", hmacS, "."+p+"."+sig, session.ReasonMalformed),
		R("padded header", hmacS, resign(btB64Padded(h), p), session.ReasonMalformed),
		R("padded payload", hmacS, resign(h, btB64Padded(p)), session.ReasonMalformed),
		R("padded signature", hmacS, h+"."+p+"."+btB64Padded(sig), session.ReasonMalformed),
		R("standard base64 alphabet in the payload", hmacS, resign(h, strings.NewReplacer("-", "+", "_", "/").Replace(btPayloadWith(t, hmacS, "-_"))), session.ReasonMalformed),
		R("illegal character in the header", hmacS, resign(h[:3]+"*"+h[4:], p), session.ReasonMalformed),
		R("illegal character in the payload", hmacS, resign(h, p[:3]+"!"+p[4:]), session.ReasonMalformed),
		R("illegal character in the signature", hmacS, h+"."+p+"."+sig[:3]+"$"+sig[4:], session.ReasonMalformed),
	)
	// Non-canonical trailing bits, re-signed with the real key: a lenient
	// decoder would accept these tokens (flipTrailingBit checks that it
	// does).
	if !btHasTrailingBits(sig) {
		t.Fatal("an HS256 signature is 43 characters: it has unused bits")
	}
	rows = append(rows, R("non-zero trailing bits in the signature", hmacS, h+"."+p+"."+flipTrailingBit(t, sig), session.ReasonMalformed))
	trailing := false
	for pad := 0; pad < 16 && !trailing; pad++ {
		hh := b64(mustJSON(t, map[string]any{"alg": "HS256", "typ": "JWT", "x": strings.Repeat("x", pad)}))
		pp := b64(mustJSON(t, hmacS.good(map[string]any{"pad": strings.Repeat("p", pad)})))
		if btHasTrailingBits(hh) && btHasTrailingBits(pp) {
			rows = append(rows,
				R("non-zero trailing bits in the header", hmacS, resign(flipTrailingBit(t, hh), pp), session.ReasonMalformed),
				R("non-zero trailing bits in the payload", hmacS, resign(hh, flipTrailingBit(t, pp)), session.ReasonMalformed),
			)
			trailing = true
		}
	}
	if !trailing {
		t.Fatal("found no header and payload with unused trailing bits")
	}
	for _, hdr := range []string{`[]`, `["alg","HS256"]`, `null`, `"HS256"`, `123`, `true`, `{`, `{"alg":"HS256"`, `{"alg":"HS256"}x`, `{"alg":"HS256"}{}`, "\xff\xfe"} {
		rows = append(rows, R("header "+hdr, hmacS, signRaw(t, jwt.SigningMethodHS256, hmacKey, hdr, mustJSON(t, hmacS.good(nil))), session.ReasonMalformed))
	}
	for _, payload := range []string{`[]`, `"claims"`, `123`, `{`, mustJSON(t, hmacS.good(nil)) + `x`, mustJSON(t, hmacS.good(nil)) + `{}`, "\xff"} {
		rows = append(rows, R("payload "+payload, hmacS, signRaw(t, jwt.SigningMethodHS256, hmacKey, `{"alg":"HS256","typ":"JWT"}`, payload), session.ReasonMalformed))
	}
	rows = append(rows,
		R("9 KB token", hmacS, hmacS.token(t, nil, map[string]any{"pad": strings.Repeat("p", 9<<10)}), session.ReasonTooLarge),
	)

	// Transport: where the token is (not) taken from.
	valid := hmacS.token(t, nil, nil)
	for _, q := range []string{"access_token", "token", "jwt", "session", "authorization"} {
		rows = append(rows, btRow{name: "query ?" + q, setup: hmacS, path: btPath + "?" + q + "=" + valid, reason: session.ReasonMissing})
	}
	rows = append(rows,
		btRow{name: "empty Bearer", setup: hmacS, header: map[string]string{"Authorization": "Bearer "}, reason: session.ReasonMissing},
		btRow{name: "Basic scheme", setup: hmacS, header: map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("ada:pw"))}, reason: session.ReasonMalformed},
		btRow{name: "token without scheme", setup: hmacS, header: map[string]string{"Authorization": valid}, reason: session.ReasonMalformed},
		btRow{name: "two Authorization headers", setup: hmacS, token: valid, header: map[string]string{"Authorization": "Bearer " + valid}, reason: session.ReasonMalformed},
		btRow{name: "token in a cookie the middleware does not read", setup: hmacS, header: map[string]string{"Cookie": "session=" + valid}, reason: session.ReasonMissing},
	)

	// The session cookie: the same checks, plus ambiguity refused.
	cookie := func(v string) map[string]string { return map[string]string{"Cookie": "app_session=" + v} }
	cgood := cookieS.token(t, nil, nil)
	rows = append(rows,
		btRow{name: "cookie alg none", setup: cookieS, header: cookie(b64(`{"alg":"none"}`) + "." + b64(mustJSON(t, cookieS.good(nil))) + "."), reason: session.ReasonAlgorithm},
		btRow{name: "cookie expired", setup: cookieS, header: cookie(cookieS.token(t, nil, map[string]any{"exp": now.Add(-time.Hour).Unix()})), reason: session.ReasonExpired},
		btRow{name: "cookie foreign signature", setup: cookieS, header: cookie(signAlg(t, "HS256", btAttackerSecret, nil, cookieS.good(nil))), reason: session.ReasonSignature},
		btRow{name: "two session cookies", setup: cookieS, header: map[string]string{"Cookie": "app_session=" + cgood + "; app_session=" + cgood}, reason: session.ReasonMalformed},
		btRow{name: "9 KB cookie", setup: cookieS, header: cookie(strings.Repeat("c", 9<<10)), reason: session.ReasonTooLarge},
		btRow{name: "empty cookie", setup: cookieS, header: cookie(""), reason: session.ReasonMissing},
		btRow{name: "cookie under another name", setup: cookieS, header: map[string]string{"Cookie": "App_Session=" + cgood}, reason: session.ReasonMissing},
		btRow{name: "query string, cookie configured", setup: cookieS, path: btPath + "?app_session=" + cgood, reason: session.ReasonMissing},
		// A bad Bearer token is not rescued by a good cookie.
		btRow{name: "bad Bearer with a good cookie", setup: cookieS, token: "x.y.z", header: cookie(cgood), reason: session.ReasonMalformed},
	)

	// The right kid needs no refresh: the JWKS is not asked again.
	for _, r := range rightKidRows {
		r.check(t)
	}
	if hits := jwksSrv.hits.Load(); hits != jwksHitsAtStart {
		t.Errorf("the JWKS was fetched %d more times for tokens with a known kid", hits-jwksHitsAtStart)
	}
	for _, r := range rows {
		r.check(t)
	}

	// Hostile kids may trigger one rate-limited refresh between them
	// (JWKSUnknownKIDMinWait is an hour), never one per request.
	if hits := jwksSrv.hits.Load(); hits > jwksHitsAtStart+1 {
		t.Errorf("JWKS fetched %d times during the corpus (%d at start): attacker-chosen kids drive fetches", hits, jwksHitsAtStart)
	}
	if n := attacker.hits.Load(); n != 0 {
		t.Errorf("the attacker's server was contacted %d times: a jku/x5u/jwk/x5c header was followed", n)
	}
	t.Logf("%d hostile requests over %d setups; JWKS fetched %d times (at start %d); attacker server hits %d",
		len(rows)+len(rightKidRows), 6, jwksSrv.hits.Load(), jwksHitsAtStart, attacker.hits.Load())
}

// TestRightKidForeignSignatureDoesNotRefetch: a token naming the real kid but
// signed by someone else fails on the signature without asking the JWKS
// again, however often it is sent.
func TestRightKidForeignSignatureDoesNotRefetch(t *testing.T) {
	t.Parallel()
	k := keys()
	js := newJWKSServer(t)
	js.setKeys(t, jwkFor(t, &k.rsaOther.PublicKey, "k1", "RS256"))
	// A short unknown-kid wait: a refetch, if one were made, would not be
	// held back by the rate limit.
	v := newVerifier(t, session.Config{JWKSURL: js.srv.URL, JWKSUnknownKIDMinWait: time.Second})
	start := js.hits.Load()
	c := claims(nil)
	for range 20 {
		_, err := v.Verify(context.Background(), signAlg(t, "RS256", k.attackerRSA, map[string]any{"kid": "k1"}, c))
		wantReason(t, err, session.ReasonSignature)
	}
	if got := js.hits.Load(); got != start {
		t.Fatalf("JWKS fetched %d more times for a known kid", got-start)
	}
	// The real key still works.
	if id, err := v.Verify(context.Background(), signAlg(t, "RS256", k.rsaOther, map[string]any{"kid": "k1"}, c)); err != nil || id.UserValue != "alice" {
		t.Fatalf("real key: %+v, %v", id, err)
	}
}

// TestDuplicateClaimKeys pins what a JSON object with a repeated name means.
// The signature covers the exact bytes, so only a token the configured key
// signed can carry duplicates; the verifier decodes header and claims with
// encoding/json, where the LAST occurrence wins, and the alg check the
// verifier does itself agrees with the one jwt does (both last-wins), so no
// layer sees a different alg or user than another. An app that builds its
// JWT payload by string concatenation from user input must not rely on the
// first occurrence.
func TestDuplicateClaimKeys(t *testing.T) {
	t.Parallel()
	k := keys()
	v := newVerifier(t, session.Config{HMACSecret: k.hmac})
	const victim, attacker = "victim-id", "attacker-id"
	exp := now.Add(time.Hour).Unix()
	hdr := `{"alg":"HS256","typ":"JWT"}`

	// userOf returns the user a token is accepted for, or why it is not.
	userOf := func(tok string) (string, session.Reason) {
		t.Helper()
		id, err := v.Verify(context.Background(), tok)
		if err != nil {
			return "", session.ReasonOf(err)
		}
		return id.UserValue, ""
	}
	hs := func(header, payload string) string {
		return signRaw(t, jwt.SigningMethodHS256, k.hmac, header, payload)
	}

	payload := func(first, second string) string {
		return `{"sub":"` + first + `","sub":"` + second + `","exp":` + mustJSON(t, exp) + `}`
	}
	for range 3 { // deterministic: the same answer every time
		if u, r := userOf(hs(hdr, payload(victim, attacker))); u != attacker {
			t.Fatalf(`{"sub":victim,"sub":attacker}: %q (%s), want the last one (attacker)`, u, r)
		}
		if u, r := userOf(hs(hdr, payload(attacker, victim))); u != victim {
			t.Fatalf(`{"sub":attacker,"sub":victim}: %q (%s), want the last one (victim)`, u, r)
		}
	}
	// A non-string last occurrence is refused even if the first was fine.
	if u, r := userOf(hs(hdr, `{"sub":"`+victim+`","sub":42,"exp":`+mustJSON(t, exp)+`}`)); r == "" {
		t.Fatalf("sub string then number: accepted for %q", u)
	}
	// exp: the last occurrence decides too.
	past := now.Add(-time.Hour).Unix()
	if _, r := userOf(hs(hdr, `{"sub":"`+victim+`","exp":`+mustJSON(t, exp)+`,"exp":`+mustJSON(t, past)+`}`)); r != session.ReasonExpired {
		t.Fatalf("exp future then past: %q, want expired", r)
	}
	// alg: the verifier's own allow-list check and jwt's agree on the last one.
	c := `{"sub":"` + victim + `","exp":` + mustJSON(t, exp) + `}`
	if _, r := userOf(hs(`{"alg":"HS256","alg":"none"}`, c)); r != session.ReasonAlgorithm {
		t.Fatalf(`{"alg":"HS256","alg":"none"}: %q, want algorithm_not_allowed`, r)
	}
	if u, r := userOf(hs(`{"alg":"none","alg":"HS256"}`, c)); u != victim {
		t.Fatalf(`{"alg":"none","alg":"HS256"} signed HS256 by the real key: %q (%s), want accepted (last wins)`, u, r)
	}
	if u, r := userOf(b64(`{"alg":"none","alg":"HS256"}`) + "." + b64(c) + "."); r == "" {
		t.Fatalf("duplicate alg with an empty signature: accepted for %q", u)
	}
}

// signAlg signs claims with the algorithm named alg; header entries are
// added to (or, when nil, removed from) {"alg":alg,"typ":"JWT"}.
func signAlg(t *testing.T, alg string, key any, header map[string]any, c jwt.MapClaims) string {
	t.Helper()
	m := jwt.GetSigningMethod(alg)
	if m == nil {
		t.Fatalf("no signing method %s", alg)
	}
	return sign(t, m, key, c, header)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func btSelfSigned(t *testing.T, key *rsa.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "attacker"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func btSplit(tok string) (h, p, s string) {
	parts := strings.SplitN(tok, ".", 3)
	return parts[0], parts[1], parts[2]
}

// btHasTrailingBits reports whether a raw base64url segment's last
// character carries unused bits (lengths 2 and 3 mod 4).
func btHasTrailingBits(seg string) bool { return len(seg)%4 >= 2 }

// btB64Padded re-encodes a raw base64url segment with '=' padding.
func btB64Padded(seg string) string {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		panic(err)
	}
	out := base64.URLEncoding.EncodeToString(b)
	if !strings.HasSuffix(out, "=") {
		out += "=="
	}
	return out
}

// btPayloadWith returns an encoded payload of the setup's good claims that
// contains at least one of chars, padding a claim until it does.
func btPayloadWith(t *testing.T, s *btSetup, chars string) string {
	t.Helper()
	for i := range 256 {
		p := b64(mustJSON(t, s.good(map[string]any{"n": strings.Repeat("\xff?>", i+1)})))
		if strings.ContainsAny(p, chars) {
			return p
		}
	}
	t.Fatal("no payload with the wanted characters")
	return ""
}
