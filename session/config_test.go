package session_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	k := keys()
	rsaPEM := pkixPEM(t, &k.rsa.PublicKey)
	p256PEM := pkixPEM(t, &k.p256.PublicKey)
	edPEM := pkixPEM(t, k.ed25519.Public())
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		cfg  session.Config
		want []string // substrings of the error; none means valid
	}{
		{"hmac", session.Config{HMACSecret: k.hmac}, nil},
		{"hmac with subset", session.Config{HMACSecret: k.hmac, Algorithms: []string{"HS512"}}, nil},
		{"rsa pem", session.Config{PublicKeyPEM: rsaPEM, Algorithms: []string{"PS256", "RS256"}}, nil},
		{"pkcs1 pem", session.Config{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)})}, nil},
		{"certificate pem", session.Config{PublicKeyPEM: certPEM(t)}, nil},
		{"first usable block", session.Config{PublicKeyPEM: append(append([]byte("junk\n"), pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{1}})...), edPEM...)}, nil},
		{"jwks https", session.Config{JWKSURL: "https://idp.example.com/.well-known/jwks.json"}, nil},
		{"jwks http loopback", session.Config{JWKSURL: "http://127.0.0.1:8080/jwks"}, nil},
		{"jwks http localhost", session.Config{JWKSURL: "http://localhost/jwks"}, nil},
		{"jwks http ipv6 loopback", session.Config{JWKSURL: "http://[::1]:9/jwks"}, nil},
		{"full", session.Config{HMACSecret: k.hmac, Issuer: "i", Audience: "a", Leeway: time.Minute, UserClaim: "email", UserLookup: session.LookupSubject, TenantClaim: "org", MaxTokenBytes: 4096}, nil},

		{"no key", session.Config{}, []string{"exactly one of HMACSecret, PublicKeyPEM and JWKSURL"}},
		{"two keys", session.Config{HMACSecret: k.hmac, JWKSURL: "https://x"}, []string{"exactly one", "(2 are)"}},
		{"short secret", session.Config{HMACSecret: []byte("short-secret")}, []string{"HMACSecret must be at least 32 bytes"}},
		{"pem garbage", session.Config{PublicKeyPEM: []byte("not pem")}, []string{"PublicKeyPEM", "no \"PUBLIC KEY\""}},
		{"pem private key only", session.Config{PublicKeyPEM: privatePEM(t)}, []string{"PublicKeyPEM"}},
		{"pem rsa 1024", session.Config{PublicKeyPEM: pkixPEM(t, &small.PublicKey)}, []string{"PublicKeyPEM", "2048"}},
		{"pem p224", session.Config{PublicKeyPEM: pkixPEM(t, &p224.PublicKey)}, []string{"PublicKeyPEM"}},
		{"HS256 with rsa pem", session.Config{PublicKeyPEM: rsaPEM, Algorithms: []string{"HS256"}}, []string{`"HS256" cannot be used with an RSA key`}},
		{"HS256 with jwks", session.Config{JWKSURL: "https://x/jwks", Algorithms: []string{"RS256", "HS256"}}, []string{`"HS256" cannot be used with a JWKS`}},
		{"RS256 with hmac", session.Config{HMACSecret: k.hmac, Algorithms: []string{"RS256"}}, []string{`"RS256" cannot be used with an HMAC secret`}},
		{"EdDSA with hmac", session.Config{HMACSecret: k.hmac, Algorithms: []string{"EdDSA"}}, []string{`"EdDSA" cannot be used`}},
		{"ES384 with P-256", session.Config{PublicKeyPEM: p256PEM, Algorithms: []string{"ES384"}}, []string{`"ES384" cannot be used with an ECDSA P-256 key`}},
		{"RS256 with Ed25519", session.Config{PublicKeyPEM: edPEM, Algorithms: []string{"RS256"}}, []string{`"RS256" cannot be used`}},
		{"none", session.Config{HMACSecret: k.hmac, Algorithms: []string{"none"}}, []string{`unknown or unsupported algorithm "none"`}},
		{"unknown alg", session.Config{HMACSecret: k.hmac, Algorithms: []string{"hs256"}}, []string{`unknown or unsupported algorithm "hs256"`}},
		{"jwks http remote", session.Config{JWKSURL: "http://idp.example.com/jwks"}, []string{"JWKSURL", "loopback"}},
		{"jwks ftp", session.Config{JWKSURL: "ftp://idp.example.com/jwks"}, []string{"JWKSURL", "https"}},
		{"jwks relative", session.Config{JWKSURL: "/jwks"}, []string{"JWKSURL", "no host"}},
		{"jwks credentials", session.Config{JWKSURL: "https://user:pw@idp.example.com/jwks"}, []string{"JWKSURL", "credentials"}},
		{"negative leeway", session.Config{HMACSecret: k.hmac, Leeway: -time.Second}, []string{"Leeway"}},
		{"huge leeway", session.Config{HMACSecret: k.hmac, Leeway: time.Hour}, []string{"Leeway"}},
		{"negative max bytes", session.Config{HMACSecret: k.hmac, MaxTokenBytes: -1}, []string{"MaxTokenBytes"}},
		{"bad lookup", session.Config{HMACSecret: k.hmac, UserLookup: "mail"}, []string{"UserLookup"}},
		{"spaced user claim", session.Config{HMACSecret: k.hmac, UserClaim: " sub"}, []string{"UserClaim"}},
		{"bad refresh", session.Config{JWKSURL: "https://x/j", JWKSRefreshInterval: time.Millisecond}, []string{"JWKSRefreshInterval"}},
		{"bad unknown kid wait", session.Config{JWKSURL: "https://x/j", JWKSUnknownKIDMinWait: 2 * time.Hour}, []string{"JWKSUnknownKIDMinWait"}},
		{"every problem at once", session.Config{HMACSecret: []byte("0123456789"), Algorithms: []string{"RS256", "XX"}, Leeway: -1, UserLookup: "x", MaxTokenBytes: -5},
			[]string{"HMACSecret", `"RS256"`, `"XX"`, "Leeway", "UserLookup", "MaxTokenBytes"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted an invalid config")
			}
			if !errors.Is(err, session.ErrInvalidConfig) {
				t.Fatalf("error does not wrap ErrInvalidConfig: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not mention %q", err, w)
				}
			}
			if len(tc.cfg.HMACSecret) > 0 && strings.Contains(err.Error(), string(tc.cfg.HMACSecret)) {
				t.Fatalf("error echoes the secret: %q", err)
			}
			if strings.Contains(err.Error(), "pw@") {
				t.Fatalf("error echoes URL credentials: %q", err)
			}
			if _, nerr := session.NewVerifier(context.Background(), tc.cfg); nerr == nil {
				t.Fatal("NewVerifier accepted a config that Validate rejects")
			}
		})
	}
}

func TestConfigDefaultsAlgorithmsPerKey(t *testing.T) {
	t.Parallel()
	k := keys()
	// With default algorithms, each key verifies exactly its own family.
	for _, tc := range algCases(t) {
		v := newVerifier(t, tc.cfg)
		for _, other := range algCases(t) {
			tok := sign(t, other.method, other.key, claims(nil), nil)
			_, err := v.Verify(context.Background(), tok)
			sameFamily := tc.cfg.HMACSecret != nil && other.cfg.HMACSecret != nil ||
				tc.cfg.PublicKeyPEM != nil && bytes.Equal(tc.cfg.PublicKeyPEM, other.cfg.PublicKeyPEM)
			if sameFamily {
				if err != nil {
					t.Fatalf("%s verifier rejected %s: %v", tc.alg, other.alg, err)
				}
				continue
			}
			if session.ReasonOf(err) != session.ReasonAlgorithm {
				t.Fatalf("%s verifier on %s token: reason %q, want %q", tc.alg, other.alg, session.ReasonOf(err), session.ReasonAlgorithm)
			}
		}
	}
	// An explicit subset narrows the defaults.
	v := newVerifier(t, session.Config{HMACSecret: k.hmac, Algorithms: []string{"HS512"}})
	_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, k.hmac, claims(nil), nil))
	wantReason(t, err, session.ReasonAlgorithm)
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS512, k.hmac, claims(nil), nil)); err != nil {
		t.Fatal(err)
	}
}

func TestConfigSecretNeverPrinted(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t!")
	cfg := session.Config{HMACSecret: secret, JWKSURL: "https://user:pw@idp.example.com/jwks"}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "cfg", cfg)
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{
		"String": cfg.String(), "%v": fmt.Sprintf("%v", cfg), "%+v": fmt.Sprintf("%+v", cfg),
		"%#v": fmt.Sprintf("%#v", cfg), "json": string(js), "slog": logged.String(),
	} {
		if strings.Contains(out, string(secret)) || strings.Contains(out, "pw") {
			t.Fatalf("%s leaks a secret: %s", name, out)
		}
		if !strings.Contains(out, "REDACTED") {
			t.Fatalf("%s does not show the redaction: %s", name, out)
		}
	}
}

func certPEM(t *testing.T) []byte {
	t.Helper()
	k := keys()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "session-test"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.p384.PublicKey, k.p384)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func privatePEM(t *testing.T) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(keys().p256)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func TestCertificateAndPKCS1KeysVerify(t *testing.T) {
	t.Parallel()
	k := keys()
	v := newVerifier(t, session.Config{PublicKeyPEM: certPEM(t)})
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodES384, k.p384, claims(nil), nil)); err != nil {
		t.Fatalf("certificate key: %v", err)
	}
	v = newVerifier(t, session.Config{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)})})
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodPS512, k.rsa, claims(nil), nil)); err != nil {
		t.Fatalf("PKCS#1 key: %v", err)
	}
}
