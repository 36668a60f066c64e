package session_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// benchKeys are the signing keys of the verification benchmarks.
type benchKeys struct {
	hmac []byte
	rsa  *rsa.PrivateKey
	p256 *ecdsa.PrivateKey
	ed   ed25519.PrivateKey
}

// benchSigners generates them once per test binary (RSA generation is slow).
var benchSigners = sync.OnceValue(func() benchKeys {
	var s benchKeys
	var err error
	s.hmac = make([]byte, 32)
	_, _ = rand.Read(s.hmac)
	if s.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if s.p256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	if _, s.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		panic(err)
	}
	return s
})

// BenchmarkVerify measures Verifier.Verify on a valid session token per
// key source and algorithm: the per-request cost of the session check.
// JWKS selects the key by kid from a set fetched once at construction.
func BenchmarkVerify(b *testing.B) {
	k := benchSigners()
	for _, bc := range []struct {
		name   string
		method jwt.SigningMethod
		key    any // signing key
		cfg    func(b *testing.B) session.Config
	}{
		{"HS256", jwt.SigningMethodHS256, k.hmac, func(*testing.B) session.Config { return session.Config{HMACSecret: k.hmac} }},
		{"RS256", jwt.SigningMethodRS256, k.rsa, func(b *testing.B) session.Config {
			return session.Config{PublicKeyPEM: benchPEM(b, &k.rsa.PublicKey)}
		}},
		{"ES256", jwt.SigningMethodES256, k.p256, func(b *testing.B) session.Config {
			return session.Config{PublicKeyPEM: benchPEM(b, &k.p256.PublicKey)}
		}},
		{"EdDSA", jwt.SigningMethodEdDSA, k.ed, func(b *testing.B) session.Config {
			return session.Config{PublicKeyPEM: benchPEM(b, k.ed.Public())}
		}},
		{"JWKS-RS256", jwt.SigningMethodRS256, k.rsa, func(b *testing.B) session.Config {
			return session.Config{JWKSURL: benchJWKS(b, &k.rsa.PublicKey, "RS256")}
		}},
		{"JWKS-ES256", jwt.SigningMethodES256, k.p256, func(b *testing.B) session.Config {
			return session.Config{JWKSURL: benchJWKS(b, &k.p256.PublicKey, "ES256")}
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			v, err := session.NewVerifier(context.Background(), bc.cfg(b))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(v.Close)
			now := time.Now()
			tok := jwt.NewWithClaims(bc.method, jwt.MapClaims{
				"sub": "6422bad8022070c06d2417bc",
				"iat": now.Unix(),
				"exp": now.Add(time.Hour).Unix(),
			})
			tok.Header["kid"] = "bench"
			raw, err := tok.SignedString(bc.key)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if _, err := v.Verify(ctx, raw); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(ctx, raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchPEM(b *testing.B, pub any) []byte {
	b.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		b.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// benchJWKS serves a JWK Set holding pub with kid "bench" and returns its URL.
func benchJWKS(b *testing.B, pub any, alg string) string {
	b.Helper()
	jwk, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{KID: "bench", ALG: jwkset.ALG(alg), USE: jwkset.UseSig},
	})
	if err != nil {
		b.Fatal(err)
	}
	store := jwkset.NewMemoryStorage()
	if err := store.KeyWrite(context.Background(), jwk); err != nil {
		b.Fatal(err)
	}
	body, err := store.JSONPublic(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}
