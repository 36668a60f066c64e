package session_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/qtb-dev/qlik-token-broker/session"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// now is the fixed clock of every test.
var now = time.Unix(1_700_000_000, 0).UTC()

func fixedNow() time.Time { return now }

// testKeys are generated once per test binary: RSA generation is slow under -race.
type testKeys struct {
	hmac, hmacOther  []byte
	rsa, rsaOther    *rsa.PrivateKey
	p256, p256Other  *ecdsa.PrivateKey
	p384, p384Other  *ecdsa.PrivateKey
	p521, p521Other  *ecdsa.PrivateKey
	ed25519, edOther ed25519.PrivateKey
	attackerRSA      *rsa.PrivateKey
	attackerEd25519  ed25519.PrivateKey
}

var keys = sync.OnceValue(func() *testKeys {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	k := &testKeys{}
	k.hmac, k.hmacOther = randomBytes(32), randomBytes(64)
	var err error
	for _, p := range []**rsa.PrivateKey{&k.rsa, &k.rsaOther, &k.attackerRSA} {
		*p, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
	}
	for _, c := range []struct {
		curve elliptic.Curve
		a, b  **ecdsa.PrivateKey
	}{{elliptic.P256(), &k.p256, &k.p256Other}, {elliptic.P384(), &k.p384, &k.p384Other}, {elliptic.P521(), &k.p521, &k.p521Other}} {
		*c.a, err = ecdsa.GenerateKey(c.curve, rand.Reader)
		must(err)
		*c.b, err = ecdsa.GenerateKey(c.curve, rand.Reader)
		must(err)
	}
	_, k.ed25519, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	_, k.edOther, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	_, k.attackerEd25519, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return k
})

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// algCase is one algorithm of the full allow-list with its signing keys and
// the configuration that verifies it.
type algCase struct {
	alg      string
	method   jwt.SigningMethod
	key      any // signing key
	wrongKey any // same type, different key
	cfg      session.Config
	public   crypto.PublicKey // nil for HMAC
}

func algCases(t *testing.T) []algCase {
	t.Helper()
	k := keys()
	hmacCfg := session.Config{HMACSecret: k.hmac}
	rsaCfg := session.Config{PublicKeyPEM: pkixPEM(t, &k.rsa.PublicKey)}
	return []algCase{
		{"HS256", jwt.SigningMethodHS256, k.hmac, k.hmacOther, hmacCfg, nil},
		{"HS384", jwt.SigningMethodHS384, k.hmac, k.hmacOther, hmacCfg, nil},
		{"HS512", jwt.SigningMethodHS512, k.hmac, k.hmacOther, hmacCfg, nil},
		{"RS256", jwt.SigningMethodRS256, k.rsa, k.rsaOther, rsaCfg, &k.rsa.PublicKey},
		{"RS384", jwt.SigningMethodRS384, k.rsa, k.rsaOther, rsaCfg, &k.rsa.PublicKey},
		{"RS512", jwt.SigningMethodRS512, k.rsa, k.rsaOther, rsaCfg, &k.rsa.PublicKey},
		{"PS256", jwt.SigningMethodPS256, k.rsa, k.rsaOther, rsaCfg, &k.rsa.PublicKey},
		{"PS384", jwt.SigningMethodPS384, k.rsa, k.rsaOther, rsaCfg, &k.rsa.PublicKey},
		{"PS512", jwt.SigningMethodPS512, k.rsa, k.rsaOther, rsaCfg, &k.rsa.PublicKey},
		{"ES256", jwt.SigningMethodES256, k.p256, k.p256Other, session.Config{PublicKeyPEM: pkixPEM(t, &k.p256.PublicKey)}, &k.p256.PublicKey},
		{"ES384", jwt.SigningMethodES384, k.p384, k.p384Other, session.Config{PublicKeyPEM: pkixPEM(t, &k.p384.PublicKey)}, &k.p384.PublicKey},
		{"ES512", jwt.SigningMethodES512, k.p521, k.p521Other, session.Config{PublicKeyPEM: pkixPEM(t, &k.p521.PublicKey)}, &k.p521.PublicKey},
		{"EdDSA", jwt.SigningMethodEdDSA, k.ed25519, k.edOther, session.Config{PublicKeyPEM: pkixPEM(t, k.ed25519.Public())}, k.ed25519.Public()},
	}
}

func pkixPEM(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// claims returns valid claims for the fixed clock; overrides replace or,
// with a nil value, delete entries.
func claims(overrides map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub": "alice",
		"iat": now.Add(-time.Minute).Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	for k, v := range overrides {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

// sign mints a token; header entries are added to (or, when nil, removed
// from) the header jwt writes.
func sign(t testing.TB, method jwt.SigningMethod, key any, c jwt.MapClaims, header map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	for k, v := range header {
		if v == nil {
			delete(tok.Header, k)
			continue
		}
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// signRaw signs exactly the given header and payload JSON (so that
// duplicate names and odd types survive).
func signRaw(t testing.TB, method jwt.SigningMethod, key any, header, payload string) string {
	t.Helper()
	return signSegments(t, method, key, b64(header), b64(payload))
}

// signSegments signs two already-encoded segments as they are (padded,
// non-canonical or illegal encodings included).
func signSegments(t testing.TB, method jwt.SigningMethod, key any, header, payload string) string {
	t.Helper()
	in := header + "." + payload
	sig, err := method.Sign(in, key)
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// unsigned builds an alg-none style token with an empty signature.
func unsigned(t testing.TB, alg string, c jwt.MapClaims) string {
	t.Helper()
	p, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b64(`{"alg":"`+alg+`","typ":"JWT"}`) + "." + b64(string(p)) + "."
}

func newVerifier(t testing.TB, cfg session.Config) *session.Verifier {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = fixedNow
	}
	v, err := session.NewVerifier(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// wantReason fails unless err is a *session.Error with reason want.
func wantReason(t testing.TB, err error, want session.Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want rejection with %q", want)
	}
	var se *session.Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T) is not a *session.Error", err, err)
	}
	if se.Reason != want {
		t.Fatalf("reason = %q, want %q (err: %v)", se.Reason, want, se.Err)
	}
}
