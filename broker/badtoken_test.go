package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// The bad-token corpus: every row is a request an attacker (or a broken
// client) can send. Each must get 401 invalid_session with WWW-Authenticate,
// be counted under exactly its reason, and cost no call to the tenant.

const (
	btIssuer   = "https://app.example.com"
	btAudience = "qtb"
)

// btKeys are generated once per test binary: RSA generation is slow under -race.
var btKeys = sync.OnceValue(func() (k struct {
	rsa, jwksRSA, attackerRSA *rsa.PrivateKey
	ec, attackerEC            *ecdsa.PrivateKey
	attackerP384              *ecdsa.PrivateKey
},
) {
	var err error
	for _, p := range []**rsa.PrivateKey{&k.rsa, &k.jwksRSA, &k.attackerRSA} {
		if *p, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	}
	for _, p := range []struct {
		dst   **ecdsa.PrivateKey
		curve elliptic.Curve
	}{{&k.ec, elliptic.P256()}, {&k.attackerEC, elliptic.P256()}, {&k.attackerP384, elliptic.P384()}} {
		if *p.dst, err = ecdsa.GenerateKey(p.curve, rand.Reader); err != nil {
			panic(err)
		}
	}
	return k
})

// btSignRaw signs exactly the given header and payload JSON (so that
// duplicate keys and odd types survive) with alg.
func btSignRaw(t *testing.T, alg string, key any, header, payload string) string {
	t.Helper()
	return btSignSegments(t, alg, key, btB64(header), btB64(payload))
}

// btSignSegments signs two already-encoded segments as they are.
func btSignSegments(t *testing.T, alg string, key any, header, payload string) string {
	t.Helper()
	sig, err := jwt.GetSigningMethod(alg).Sign(header+"."+payload, key)
	if err != nil {
		t.Fatalf("sign %s: %v", alg, err)
	}
	return header + "." + payload + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func btB64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func btJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// btSign mints a token whose header is {"alg":alg,"typ":"JWT"} plus extra
// (a nil value deletes the entry) and whose payload is claims.
func btSign(t *testing.T, alg string, key any, extra map[string]any, claims map[string]any) string {
	t.Helper()
	h := map[string]any{"alg": alg, "typ": "JWT"}
	for k, v := range extra {
		if v == nil {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	return btSignRaw(t, alg, key, btJSON(t, h), btJSON(t, claims))
}

// btNonCanonical flips an unused low bit of the last character of a
// base64url segment whose length is not a multiple of 4. Lenient decoders
// return the same bytes; strict ones refuse the segment. ok is false when
// the segment has no unused bits.
func btNonCanonical(seg string) (string, bool) {
	if len(seg)%4 == 0 || len(seg)%4 == 1 {
		return "", false
	}
	i := strings.IndexByte(btAlphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(btAlphabet[i^1]), true
}

const btAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// btHits is an httptest server that counts every request it gets.
type btHits struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func newBTHits(t *testing.T, h http.Handler) *btHits {
	t.Helper()
	s := &btHits{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func btJWKS(t *testing.T, key any, kid, alg string) []byte {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(key, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(alg), USE: jwkset.UseSig}})
	if err != nil {
		t.Fatal(err)
	}
	store := jwkset.NewMemoryStorage()
	if err := store.KeyWrite(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	b, err := store.JSONPublic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func btSelfSigned(t *testing.T, key *rsa.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "attacker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func btPublic(t *testing.T, pub any) (pemBytes, der []byte) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), der
}

// btSetup is one broker configured with one kind of session key.
type btSetup struct {
	name string
	e    *env
	alg  string // the algorithm its real key signs with
	key  any    // the real signing key
	kid  string // the kid the real key is published under (JWKS only)
	user string // a Qlik user id that exists on its tenant
}

// good returns valid claims for the setup's user; overrides replace entries
// or, with a nil value, delete them.
func (s *btSetup) good(overrides map[string]any) map[string]any {
	now := s.e.clock.Now()
	c := map[string]any{"sub": s.user, "iss": btIssuer, "aud": btAudience, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for k, v := range overrides {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// token mints a token with the setup's real key.
func (s *btSetup) token(t *testing.T, header map[string]any, overrides map[string]any) string {
	t.Helper()
	h := map[string]any{}
	if s.kid != "" {
		h["kid"] = s.kid
	}
	for k, v := range header {
		h[k] = v
	}
	return btSign(t, s.alg, s.key, h, s.good(overrides))
}

// btRow is one hostile request.
type btRow struct {
	name   string
	setup  *btSetup
	token  string            // sent as "Authorization: Bearer <token>" unless empty
	header map[string]string // more headers (Add, so they can repeat Authorization)
	path   string            // default /v1/token
	reason session.Reason
}

func TestBadTokenCorpus(t *testing.T) {
	k := btKeys()
	clk := newClock()

	// The attacker's server: every jku/x5u/jwk/x5c header points here, and
	// it would serve the attacker's key to a broker naive enough to ask.
	attackerJWKS := btJWKS(t, &k.attackerRSA.PublicKey, "attacker", "RS256")
	attackerCert := btSelfSigned(t, k.attackerRSA)
	attacker := newBTHits(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".pem") {
			_ = pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: attackerCert})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(attackerJWKS)
	}))

	// The app's real JWKS.
	realJWKS := btJWKS(t, &k.jwksRSA.PublicKey, "k1", "RS256")
	jwksSrv := newBTHits(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(realJWKS)
	}))

	rsaPEM, rsaDER := btPublic(t, &k.rsa.PublicKey)
	ecPEM, ecDER := btPublic(t, &k.ec.PublicKey)
	jwksPEM, jwksDER := btPublic(t, &k.jwksRSA.PublicKey)

	newSetup := func(name, alg string, key any, kid string, cfg session.Config, cookie ...string) *btSetup {
		cfg.Issuer, cfg.Audience = btIssuer, btAudience
		o := envOptions{session: cfg, clock: clk}
		if len(cookie) > 0 {
			o.cookie = cookie[0]
		}
		e := newEnv(t, o)
		s := &btSetup{name: name, e: e, alg: alg, key: key, kid: kid, user: e.addUser("Ada").ID}
		// The setup works: a good token gets a token, so each rejection
		// below is caused by the one thing the row changes.
		var header map[string]string
		tok := s.token(t, nil, nil)
		if o.cookie != "" {
			header, tok = map[string]string{"Cookie": o.cookie + "=" + tok}, ""
		}
		resp, body := btDo(t, s, "/v1/token", tok, header)
		if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != s.user {
			t.Fatalf("%s: good token: %d %s", name, resp.StatusCode, body)
		}
		e.tenant.ResetCounters()
		return s
	}
	hmacS := newSetup("hmac", "HS256", hmacKey, "", session.Config{HMACSecret: hmacKey})
	hs256S := newSetup("hmac-hs256-only", "HS256", hmacKey, "", session.Config{HMACSecret: hmacKey, Algorithms: []string{"HS256"}})
	rsaS := newSetup("rsa-pem", "RS256", k.rsa, "", session.Config{PublicKeyPEM: rsaPEM})
	ecS := newSetup("ec-pem", "ES256", k.ec, "", session.Config{PublicKeyPEM: ecPEM})
	jwksS := newSetup("jwks", "RS256", k.jwksRSA, "k1", session.Config{JWKSURL: jwksSrv.srv.URL + "/jwks.json", JWKSUnknownKIDMinWait: time.Hour})
	cookieS := newSetup("hmac-cookie", "HS256", hmacKey, "", session.Config{HMACSecret: hmacKey}, "app_session")
	jwksHitsAtStart := jwksSrv.hits.Load()

	R := func(name string, s *btSetup, token string, reason session.Reason) btRow {
		return btRow{name: name, setup: s, token: token, reason: reason}
	}
	var rows []btRow

	// alg none in three spellings, empty signature, on every key type.
	for _, s := range []*btSetup{hmacS, rsaS, ecS, jwksS} {
		for _, alg := range []string{"none", "None", "NONE", "nOnE"} {
			h := map[string]any{"alg": alg, "typ": "JWT"}
			if s.kid != "" {
				h["kid"] = s.kid
			}
			rows = append(rows, R("alg "+alg, s, btB64(btJSON(t, h))+"."+btB64(btJSON(t, s.good(nil)))+".", session.ReasonAlgorithm))
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
			rows = append(rows, R(alg+" keyed with the "+c.what, c.s, btSign(t, alg, c.secret, h, c.s.good(nil)), session.ReasonAlgorithm))
		}
	}

	// Algorithms outside the allow-list.
	rows = append(rows,
		R("HS384 with the real key, allow-list HS256", hs256S, btSign(t, "HS384", hmacKey, nil, hs256S.good(nil)), session.ReasonAlgorithm),
		R("HS512 with the real key, allow-list HS256", hs256S, btSign(t, "HS512", hmacKey, nil, hs256S.good(nil)), session.ReasonAlgorithm),
		R("RS256 on an HMAC broker", hmacS, btSign(t, "RS256", k.attackerRSA, nil, hmacS.good(nil)), session.ReasonAlgorithm),
		R("ES256 on an HMAC broker", hmacS, btSign(t, "ES256", k.attackerEC, nil, hmacS.good(nil)), session.ReasonAlgorithm),
		R("ES256 on an RSA broker", rsaS, btSign(t, "ES256", k.attackerEC, nil, rsaS.good(nil)), session.ReasonAlgorithm),
		R("ES384 on a P-256 broker", ecS, btSign(t, "ES384", k.attackerP384, nil, ecS.good(nil)), session.ReasonAlgorithm),
		R("RS256 on a P-256 broker", ecS, btSign(t, "RS256", k.attackerRSA, nil, ecS.good(nil)), session.ReasonAlgorithm),
	)
	for _, hdr := range []string{`{"typ":"JWT"}`, `{"alg":"hs256"}`, `{"alg":"HS256 "}`, `{"alg":" HS256"}`, `{"alg":"HS1"}`, `{"alg":"XYZ"}`,
		`{"alg":123}`, `{"alg":["HS256"]}`, `{"alg":null}`, `{"alg":{"name":"HS256"}}`, `{}`} {
		// Signed with the real key under HS256: only the header's alg is wrong.
		rows = append(rows, R("header "+hdr, hmacS, btSignRaw(t, "HS256", hmacKey, hdr, btJSON(t, hmacS.good(nil))), session.ReasonAlgorithm))
	}

	// Signatures: foreign, flipped, missing, truncated, borrowed.
	for _, s := range []*btSetup{hmacS, rsaS, ecS, jwksS} {
		good := s.token(t, nil, nil)
		h, p, sig := btSplit(good)
		flipped := []byte(sig)
		i := strings.IndexByte(btAlphabet, sig[len(sig)/2])
		flipped[len(sig)/2] = btAlphabet[(i+1)%64] // another base64url character
		raw, _ := base64.RawURLEncoding.DecodeString(sig)
		other := s.token(t, nil, map[string]any{"sub": "someone-else"})
		_, _, otherSig := btSplit(other)
		rows = append(rows,
			R("flipped signature", s, h+"."+p+"."+string(flipped), session.ReasonSignature),
			R("missing signature", s, h+"."+p+".", session.ReasonSignature),
			R("truncated signature", s, h+"."+p+"."+base64.RawURLEncoding.EncodeToString(raw[:len(raw)-1]), session.ReasonSignature),
			R("signature of another token", s, h+"."+p+"."+otherSig, session.ReasonSignature),
		)
	}
	rows = append(rows,
		R("HMAC with another secret", hmacS, btSign(t, "HS256", []byte("another-secret-of-at-least-32-bytes!!"), nil, hmacS.good(nil)), session.ReasonSignature),
		R("RSA with the attacker's key", rsaS, btSign(t, "RS256", k.attackerRSA, nil, rsaS.good(nil)), session.ReasonSignature),
		R("EC with the attacker's key", ecS, btSign(t, "ES256", k.attackerEC, nil, ecS.good(nil)), session.ReasonSignature),
	)

	// kid: the right kid with a foreign signature, then hostile kids.
	foreign := func(kid any) string {
		return btSign(t, "RS256", k.attackerRSA, map[string]any{"kid": kid}, jwksS.good(nil))
	}
	rightKidRows := []btRow{
		R("right kid, attacker RS256 signature", jwksS, foreign("k1"), session.ReasonSignature),
		// The JWK pins alg RS256: its key is not offered for PS256.
		R("right kid, PS256 instead of the JWK's RS256", jwksS, btSign(t, "PS256", k.attackerRSA, map[string]any{"kid": "k1"}, jwksS.good(nil)), session.ReasonUnknownKey),
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
	attackerJWK := set.Keys[0]
	keyHeaders := map[string]any{
		"jku": attacker.srv.URL + "/jwks.json",
		"x5u": attacker.srv.URL + "/cert.pem",
		"jwk": attackerJWK,
		"x5c": []string{base64.StdEncoding.EncodeToString(attackerCert)},
	}
	for _, s := range []*btSetup{rsaS, jwksS} {
		for name, v := range keyHeaders {
			// Without a kid (a JWKS broker then tries its own keys) and with
			// the attacker's kid (unknown to a JWKS broker).
			rows = append(rows, R(name+" header", s, btSign(t, "RS256", k.attackerRSA, map[string]any{name: v}, s.good(nil)), session.ReasonSignature))
			want := session.ReasonSignature
			if s == jwksS {
				want = session.ReasonUnknownKey
			}
			rows = append(rows, R(name+" header, attacker kid", s, btSign(t, "RS256", k.attackerRSA, map[string]any{name: v, "kid": "attacker"}, s.good(nil)), want))
		}
		all := map[string]any{}
		for n, v := range keyHeaders {
			all[n] = v
		}
		rows = append(rows, R("jku+x5u+jwk+x5c headers", s, btSign(t, "RS256", k.attackerRSA, all, s.good(nil)), session.ReasonSignature))
	}
	rows = append(rows, R("jku header on HMAC, attacker HS256", hmacS,
		btSign(t, "HS256", []byte("attacker-secret-attacker-secret-!!"), map[string]any{"jku": attacker.srv.URL + "/jwks.json"}, hmacS.good(nil)), session.ReasonSignature))

	// crit: any crit header is refused, even on a token the real key signed.
	for _, crit := range []any{[]string{"exp"}, []string{"b64"}, []string{}, "b64", nil} {
		h := map[string]any{"crit": crit}
		if crit == nil {
			h = map[string]any{"crit": json.RawMessage("null")}
		}
		rows = append(rows, R("crit "+btJSON(t, crit), hmacS, hmacS.token(t, h, nil), session.ReasonCritical))
	}
	rows = append(rows, R("crit on JWKS", jwksS, jwksS.token(t, map[string]any{"crit": []string{"exp"}}, nil), session.ReasonCritical))

	// Time claims (the test setup has no leeway).
	now := clk.Now()
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
	resign := func(h, p string) string { return btSignSegments(t, "HS256", hmacKey, h, p) }
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
	// decoder would accept these tokens.
	if nc, ok := btNonCanonical(sig); ok {
		rows = append(rows, R("non-zero trailing bits in the signature", hmacS, h+"."+p+"."+nc, session.ReasonMalformed))
	} else {
		t.Fatal("an HS256 signature is 43 characters: it has unused bits")
	}
	trailing := false
	for pad := 0; pad < 16 && !trailing; pad++ {
		hh := btB64(btJSON(t, map[string]any{"alg": "HS256", "typ": "JWT", "x": strings.Repeat("x", pad)}))
		pp := btB64(btJSON(t, hmacS.good(map[string]any{"pad": strings.Repeat("p", pad)})))
		nh, okH := btNonCanonical(hh)
		np, okP := btNonCanonical(pp)
		if okH && okP {
			if _, err := base64.RawURLEncoding.DecodeString(nh); err != nil {
				t.Fatalf("lenient decoding refused %q: the trailing-bit row would test nothing", nh)
			}
			rows = append(rows,
				R("non-zero trailing bits in the header", hmacS, resign(nh, pp), session.ReasonMalformed),
				R("non-zero trailing bits in the payload", hmacS, resign(hh, np), session.ReasonMalformed),
			)
			trailing = true
		}
	}
	if !trailing {
		t.Fatal("found no header and payload with unused trailing bits")
	}
	for _, hdr := range []string{`[]`, `["alg","HS256"]`, `null`, `"HS256"`, `123`, `true`, `{`, `{"alg":"HS256"`, `{"alg":"HS256"}x`, `{"alg":"HS256"}{}`, "\xff\xfe"} {
		rows = append(rows, R("header "+hdr, hmacS, btSignRaw(t, "HS256", hmacKey, hdr, btJSON(t, hmacS.good(nil))), session.ReasonMalformed))
	}
	for _, payload := range []string{`[]`, `"claims"`, `123`, `{`, btJSON(t, hmacS.good(nil)) + `x`, btJSON(t, hmacS.good(nil)) + `{}`, "\xff"} {
		rows = append(rows, R("payload "+payload, hmacS, btSignRaw(t, "HS256", hmacKey, `{"alg":"HS256","typ":"JWT"}`, payload), session.ReasonMalformed))
	}
	rows = append(rows,
		R("9 KB token", hmacS, hmacS.token(t, nil, map[string]any{"pad": strings.Repeat("p", 9<<10)}), session.ReasonTooLarge),
	)

	// Transport: where the token is (not) taken from.
	valid := hmacS.token(t, nil, nil)
	for _, q := range []string{"access_token", "token", "jwt", "session", "authorization"} {
		rows = append(rows, btRow{name: "query ?" + q, setup: hmacS, path: "/v1/token?" + q + "=" + valid, reason: session.ReasonMissing})
	}
	rows = append(rows,
		btRow{name: "empty Bearer", setup: hmacS, header: map[string]string{"Authorization": "Bearer "}, reason: session.ReasonMissing},
		btRow{name: "Basic scheme", setup: hmacS, header: map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("ada:pw"))}, reason: session.ReasonMalformed},
		btRow{name: "token without scheme", setup: hmacS, header: map[string]string{"Authorization": valid}, reason: session.ReasonMalformed},
		btRow{name: "two Authorization headers", setup: hmacS, token: valid, header: map[string]string{"Authorization": "Bearer " + valid}, reason: session.ReasonMalformed},
		btRow{name: "token in a cookie the broker does not read", setup: hmacS, header: map[string]string{"Cookie": "session=" + valid}, reason: session.ReasonMissing},
	)

	// The session cookie: the same checks, plus ambiguity refused.
	cookie := func(v string) map[string]string { return map[string]string{"Cookie": "app_session=" + v} }
	cgood := cookieS.token(t, nil, nil)
	rows = append(rows,
		btRow{name: "cookie alg none", setup: cookieS, header: cookie(btB64(`{"alg":"none"}`) + "." + btB64(btJSON(t, cookieS.good(nil))) + "."), reason: session.ReasonAlgorithm},
		btRow{name: "cookie expired", setup: cookieS, header: cookie(cookieS.token(t, nil, map[string]any{"exp": now.Add(-time.Hour).Unix()})), reason: session.ReasonExpired},
		btRow{name: "cookie foreign signature", setup: cookieS, header: cookie(btSign(t, "HS256", []byte("attacker-secret-attacker-secret-!!"), nil, cookieS.good(nil))), reason: session.ReasonSignature},
		btRow{name: "two session cookies", setup: cookieS, header: map[string]string{"Cookie": "app_session=" + cgood + "; app_session=" + cgood}, reason: session.ReasonMalformed},
		btRow{name: "9 KB cookie", setup: cookieS, header: cookie(strings.Repeat("c", 9<<10)), reason: session.ReasonTooLarge},
		btRow{name: "empty cookie", setup: cookieS, header: cookie(""), reason: session.ReasonMissing},
		btRow{name: "cookie under another name", setup: cookieS, header: map[string]string{"Cookie": "App_Session=" + cgood}, reason: session.ReasonMissing},
		btRow{name: "query string, cookie configured", setup: cookieS, path: "/v1/token?app_session=" + cgood, reason: session.ReasonMissing},
		// A bad Bearer token is not rescued by a good cookie.
		btRow{name: "bad Bearer with a good cookie", setup: cookieS, token: "x.y.z", header: cookie(cgood), reason: session.ReasonMalformed},
	)

	run := func(rows []btRow) {
		t.Helper()
		for _, r := range rows {
			before := testutil.ToFloat64(r.setup.e.metrics.SessionRejections.WithLabelValues(string(r.reason)))
			path := r.path
			if path == "" {
				path = "/v1/token"
			}
			resp, body := btDo(t, r.setup, path, r.token, r.header)
			name := r.setup.name + ": " + r.name
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s: status %d, want 401 (body %s)", name, resp.StatusCode, body)
				continue
			}
			eb := decodeErrorBody(t, body)
			if eb.Error != "invalid_session" || !strings.Contains(eb.Message, "("+string(r.reason)+")") {
				t.Errorf("%s: body %s, want invalid_session (%s)", name, body, r.reason)
			}
			if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: no WWW-Authenticate: Bearer", name)
			}
			if after := testutil.ToFloat64(r.setup.e.metrics.SessionRejections.WithLabelValues(string(r.reason))); after != before+1 {
				t.Errorf("%s: rejections{reason=%q} went %v -> %v", name, r.reason, before, after)
			}
			if n := r.setup.e.tenant.Calls(qliktest.EndpointToken); n != 0 {
				t.Fatalf("%s: %d upstream token calls", name, n)
			}
		}
	}

	// The right kid needs no refresh: the JWKS is not asked again.
	run(rightKidRows)
	if hits := jwksSrv.hits.Load(); hits != jwksHitsAtStart {
		t.Errorf("the JWKS was fetched %d more times for tokens with a known kid", hits-jwksHitsAtStart)
	}
	run(rows)

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
	k := btKeys()
	realJWKS := btJWKS(t, &k.jwksRSA.PublicKey, "k1", "RS256")
	jwksSrv := newBTHits(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(realJWKS)
	}))
	// A short unknown-kid wait: a refetch, if one were made, would not be
	// held back by the rate limit.
	e := newEnv(t, envOptions{session: session.Config{JWKSURL: jwksSrv.srv.URL, JWKSUnknownKIDMinWait: time.Second}})
	ada := e.addUser("Ada")
	start := jwksSrv.hits.Load()
	claims := map[string]any{"sub": ada.ID, "exp": e.clock.Now().Add(time.Hour).Unix()}
	s := &btSetup{name: "jwks", e: e}
	for range 20 {
		resp, body := btDo(t, s, "/v1/token", btSign(t, "RS256", k.attackerRSA, map[string]any{"kid": "k1"}, claims), nil)
		if resp.StatusCode != 401 || !strings.Contains(decodeErrorBody(t, body).Message, string(session.ReasonSignature)) {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	if got := jwksSrv.hits.Load(); got != start {
		t.Fatalf("JWKS fetched %d more times for a known kid", got-start)
	}
	if n := e.tenant.Calls(qliktest.EndpointToken); n != 0 {
		t.Fatalf("%d upstream calls", n)
	}
	// The real key still works.
	resp, body := btDo(t, s, "/v1/token", btSign(t, "RS256", k.jwksRSA, map[string]any{"kid": "k1"}, claims), nil)
	if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != ada.ID {
		t.Fatalf("real key: %d %s", resp.StatusCode, body)
	}
}

// TestDuplicateClaimKeys pins what a JSON object with a repeated name means.
// The signature covers the exact bytes, so only a token the configured key
// signed can carry duplicates; the broker decodes header and claims with
// encoding/json, where the LAST occurrence wins, and the alg check the
// broker does itself agrees with the one jwt does (both last-wins), so no
// layer sees a different alg or user than another. An app that builds its
// JWT payload by string concatenation from user input must not rely on the
// first occurrence.
func TestDuplicateClaimKeys(t *testing.T) {
	e := newEnv(t, envOptions{})
	victim, attacker := e.addUser("Victim"), e.addUser("Attacker")
	exp := e.clock.Now().Add(time.Hour).Unix()
	s := &btSetup{name: "hmac", e: e}
	hdr := `{"alg":"HS256","typ":"JWT"}`

	userOf := func(tok string) (int, string) {
		t.Helper()
		resp, body := btDo(t, s, "/v1/token", tok, nil)
		if resp.StatusCode != 200 {
			return resp.StatusCode, string(body)
		}
		return 200, e.tokenUser(decodeTokenBody(t, body).AccessToken)
	}

	payload := func(first, second string) string {
		return `{"sub":"` + first + `","sub":"` + second + `","exp":` + jsonNum(exp) + `}`
	}
	for range 3 { // deterministic: the same answer every time
		if code, u := userOf(btSignRaw(t, "HS256", hmacKey, hdr, payload(victim.ID, attacker.ID))); code != 200 || u != attacker.ID {
			t.Fatalf(`{"sub":victim,"sub":attacker}: %d %s, want the last one (attacker %s)`, code, u, attacker.ID)
		}
		if code, u := userOf(btSignRaw(t, "HS256", hmacKey, hdr, payload(attacker.ID, victim.ID))); code != 200 || u != victim.ID {
			t.Fatalf(`{"sub":attacker,"sub":victim}: %d %s, want the last one (victim %s)`, code, u, victim.ID)
		}
	}
	// A non-string last occurrence is refused even if the first was fine.
	tok := btSignRaw(t, "HS256", hmacKey, hdr, `{"sub":"`+victim.ID+`","sub":42,"exp":`+jsonNum(exp)+`}`)
	if code, _ := userOf(tok); code != 401 {
		t.Fatalf("sub string then number: %d, want 401", code)
	}
	// exp: the last occurrence decides too.
	past := e.clock.Now().Add(-time.Hour).Unix()
	tok = btSignRaw(t, "HS256", hmacKey, hdr, `{"sub":"`+victim.ID+`","exp":`+jsonNum(exp)+`,"exp":`+jsonNum(past)+`}`)
	if code, body := userOf(tok); code != 401 || !strings.Contains(body, string(session.ReasonExpired)) {
		t.Fatalf("exp future then past: %d %s, want 401 expired", code, body)
	}
	// alg: the broker's own allow-list check and jwt's agree on the last one.
	claims := `{"sub":"` + victim.ID + `","exp":` + jsonNum(exp) + `}`
	if code, body := userOf(btSignRaw(t, "HS256", hmacKey, `{"alg":"HS256","alg":"none"}`, claims)); code != 401 || !strings.Contains(body, string(session.ReasonAlgorithm)) {
		t.Fatalf(`{"alg":"HS256","alg":"none"}: %d %s, want 401 algorithm_not_allowed`, code, body)
	}
	if code, u := userOf(btSignRaw(t, "HS256", hmacKey, `{"alg":"none","alg":"HS256"}`, claims)); code != 200 || u != victim.ID {
		t.Fatalf(`{"alg":"none","alg":"HS256"} signed HS256 by the real key: %d %s, want accepted (last wins)`, code, u)
	}
	noneBody := btB64(`{"alg":"none","alg":"HS256"}`) + "." + btB64(claims) + "."
	if code, _ := userOf(noneBody); code != 401 {
		t.Fatalf("duplicate alg with an empty signature: %d, want 401", code)
	}
}

func jsonNum(n int64) string { b, _ := json.Marshal(n); return string(b) }

func btSplit(tok string) (h, p, s string) {
	parts := strings.SplitN(tok, ".", 3)
	return parts[0], parts[1], parts[2]
}

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
		p := btB64(btJSON(t, s.good(map[string]any{"n": strings.Repeat("\xff?>", i+1)})))
		if strings.ContainsAny(p, chars) {
			return p
		}
	}
	t.Fatal("no payload with the wanted characters")
	return ""
}

// btDo sends one request to a setup's broker.
func btDo(t *testing.T, s *btSetup, path, token string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Add(k, v)
	}
	resp, err := s.e.srv.Client().Do(req)
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
