package qlik_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// keyPair makes a private key for alg: RSA 2048 for RS*, P-384 for ES384.
func keyPair(t *testing.T, alg string) crypto.Signer {
	t.Helper()
	if alg == qlik.AlgES384 {
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verifyIndependently checks a compact JWS with the standard library's
// crypto only, and returns its header and claims.
func verifyIndependently(t *testing.T, jws string, pub crypto.PublicKey) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	dec := func(s string) []byte {
		b, err := base64.RawURLEncoding.Strict().DecodeString(s)
		if err != nil {
			t.Fatalf("segment is not strict base64url: %v", err)
		}
		return b
	}
	if err := json.Unmarshal(dec(parts[0]), &header); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(dec(parts[1]), &claims); err != nil {
		t.Fatal(err)
	}
	signed, sig := []byte(parts[0]+"."+parts[1]), dec(parts[2])
	var ok bool
	switch header["alg"] {
	case "RS256":
		sum := sha256.Sum256(signed)
		ok = rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, sum[:], sig) == nil
	case "RS512":
		sum := sha512.Sum512(signed)
		ok = rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA512, sum[:], sig) == nil
	case "ES384":
		sum := sha512.Sum384(signed)
		ok = len(sig) == 96 && ecdsa.Verify(pub.(*ecdsa.PublicKey), sum[:], new(big.Int).SetBytes(sig[:48]), new(big.Int).SetBytes(sig[48:]))
	default:
		t.Fatalf("alg %v", header["alg"])
	}
	if !ok {
		t.Fatalf("%s signature does not verify", header["alg"])
	}
	return header, claims
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestAssertionVerifiesIndependently signs with each algorithm and checks
// the assertion with crypto/rsa and crypto/ecdsa directly: header alg and
// kid, iss = sub = client id, aud one string, a UUID jti, exp = iat + 300.
func TestAssertionVerifiesIndependently(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	const aud = "https://acme.eu.qlikcloud.com/oauth/token"
	for _, alg := range []string{qlik.AlgRS256, qlik.AlgRS512, qlik.AlgES384} {
		t.Run(alg, func(t *testing.T) {
			priv := keyPair(t, alg)
			k, err := qlik.NewSigningKey(priv, "k1", alg)
			if err != nil {
				t.Fatal(err)
			}
			a, err := k.Assertion("client-1", aud, now)
			if err != nil {
				t.Fatal(err)
			}
			header, claims := verifyIndependently(t, a, priv.Public())
			if header["alg"] != alg || header["kid"] != "k1" {
				t.Errorf("header %v", header)
			}
			if claims["iss"] != "client-1" || claims["sub"] != "client-1" {
				t.Errorf("iss/sub %v", claims)
			}
			if got, ok := claims["aud"].(string); !ok || got != aud {
				t.Errorf("aud = %#v, want the one string %q", claims["aud"], aud)
			}
			if jti, _ := claims["jti"].(string); !uuidV4.MatchString(jti) {
				t.Errorf("jti %q is not a UUID", jti)
			}
			if claims["iat"] != float64(now.Unix()) || claims["exp"] != float64(now.Unix()+300) {
				t.Errorf("iat %v exp %v", claims["iat"], claims["exp"])
			}
			if _, ok := claims["nbf"]; ok {
				t.Error("nbf sent")
			}
			b, _ := k.Assertion("client-1", aud, now)
			_, again := verifyIndependently(t, b, priv.Public())
			if again["jti"] == claims["jti"] {
				t.Error("two assertions share a jti")
			}
		})
	}
}

// TestTokensWithAKey: a client that has no secret at all gets impersonation
// and client_credentials tokens, and can revoke, with a key; no request
// carries client_secret.
func TestTokensWithAKey(t *testing.T) {
	for _, alg := range []string{qlik.AlgRS256, qlik.AlgRS512, qlik.AlgES384} {
		t.Run(alg, func(t *testing.T) {
			f := newFixture(t, qlik.Options{})
			priv := keyPair(t, alg)
			k, err := qlik.NewSigningKey(priv, "", alg)
			if err != nil {
				t.Fatal(err)
			}
			jwks, _ := json.Marshal([]qlik.JWK{k.PublicJWK()})
			oc := f.tn.AddClient(qliktest.OAuthClient{AllowedAuthMethods: []string{"private_key_jwt"}, PublicKeys: jwks})

			var bodies []string
			front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				bodies = append(bodies, string(b))
				r.Body = io.NopCloser(bytes.NewReader(b))
				f.tn.ServeHTTP(w, r)
			}))
			defer front.Close()
			c, err := qlik.New(front.URL, qlik.Options{Now: f.clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			creds := qlik.Credentials{ClientID: oc.ID, Key: k}
			tok, err := c.ImpersonationToken(t.Context(), creds, f.byID, "")
			if err != nil {
				t.Fatalf("impersonation: %v", err)
			}
			if _, err := c.ClientCredentialsToken(t.Context(), creds, ""); err != nil {
				t.Fatalf("client_credentials: %v", err)
			}
			if err := c.Revoke(t.Context(), creds, tok.AccessToken); err != nil {
				t.Fatalf("revoke: %v", err)
			}
			if n := f.tn.AssertionKeyUses(k.KeyID()); n != 3 {
				t.Errorf("%d assertions accepted, want 3 (one per request, no extra round trip)", n)
			}
			for _, b := range bodies {
				if strings.Contains(b, "client_secret") || !strings.Contains(b, qlik.ClientAssertionType) {
					t.Errorf("body %s", b)
				}
			}
			if len(bodies) != 3 {
				t.Errorf("%d requests, want 3", len(bodies))
			}
		})
	}
}

// TestSigningKeyParsing reads the PEM forms and refuses what Qlik would.
func TestSigningKeyParsing(t *testing.T) {
	rsaKey := keyPair(t, qlik.AlgRS256).(*rsa.PrivateKey)
	ecKey := keyPair(t, qlik.AlgES384).(*ecdsa.PrivateKey)
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	good := []struct {
		name, pem, alg, wantAlg string
	}{
		{"PKCS#8 RSA", string(pkcs8(rsaKey)), "", "RS256"},
		{"PKCS#1 RSA", string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})), "RS512", "RS512"},
		{"PKCS#8 EC", string(pkcs8(ecKey)), "", "ES384"},
		{"SEC1 EC with parameters first", "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n" +
			string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})), "ES384", "ES384"},
	}
	for _, tt := range good {
		k, err := qlik.ParseSigningKey([]byte(tt.pem), "", tt.alg)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if k.Algorithm() != tt.wantAlg || k.KeyID() != k.PublicJWK().Thumbprint() {
			t.Errorf("%s: alg %s kid %s", tt.name, k.Algorithm(), k.KeyID())
		}
	}

	bad := []struct {
		name, pem, alg string
	}{
		{"not PEM", "hello", ""},
		{"RSA 1024", string(pkcs8(small)), ""},
		{"P-256", string(pkcs8(p256)), ""},
		{"RSA with ES384", string(pkcs8(rsaKey)), "ES384"},
		{"RSA with PS256", string(pkcs8(rsaKey)), "PS256"},
		{"EC with RS256", string(pkcs8(ecKey)), "RS256"},
		{"broken DER", "-----BEGIN PRIVATE KEY-----\nAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n", ""},
	}
	for _, tt := range bad {
		_, err := qlik.ParseSigningKey([]byte(tt.pem), "", tt.alg)
		if !errors.Is(err, qlik.ErrInvalidRequest) {
			t.Errorf("%s: err %v, want ErrInvalidRequest", tt.name, err)
		}
		if err != nil && strings.Contains(err.Error(), "AAAAAAAA") {
			t.Errorf("%s: error quotes the key: %v", tt.name, err)
		}
	}
}

// TestSigningKeyFormatting: no way of printing credentials with a key
// shows the private key.
func TestSigningKeyFormatting(t *testing.T) {
	priv := keyPair(t, qlik.AlgRS256).(*rsa.PrivateKey)
	k, err := qlik.NewSigningKey(priv, "kid-1", "")
	if err != nil {
		t.Fatal(err)
	}
	creds := qlik.Credentials{ClientID: "c", Key: k}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "creds", creds, "key", k)
	js, _ := json.Marshal(creds)
	out := fmt.Sprintf("%v %+v %#v %s %v %#v", creds, creds, creds, k, k, k) + logged.String() + string(js)
	for _, secret := range []string{priv.D.String(), base64.RawURLEncoding.EncodeToString(priv.D.Bytes()), priv.Primes[0].String()} {
		if strings.Contains(out, secret) {
			t.Fatalf("private key printed: %s", out)
		}
	}
	if !strings.Contains(out, "kid-1") {
		t.Errorf("kid not shown: %s", out)
	}
}
