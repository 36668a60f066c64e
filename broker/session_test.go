package broker_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// keyPair is a signing key and how the broker is told to verify it.
type keyPair struct {
	sign   any    // key passed to SignedString
	pubPEM []byte // nil for HMAC
}

func newKeyPair(t *testing.T, alg string) keyPair {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch {
	case strings.HasPrefix(alg, "HS"):
		k := make([]byte, 64)
		_, _ = rand.Read(k)
		return keyPair{sign: k}
	case strings.HasPrefix(alg, "RS"), strings.HasPrefix(alg, "PS"):
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case alg == "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case alg == "ES384":
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case alg == "ES512":
		priv, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case alg == "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{sign: priv, pubPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}
}

func (k keyPair) config() session.Config {
	if k.pubPEM == nil {
		return session.Config{HMACSecret: k.sign.([]byte), Issuer: "https://app.example.com", Audience: "qtb"}
	}
	return session.Config{PublicKeyPEM: k.pubPEM, Issuer: "https://app.example.com", Audience: "qtb"}
}

func sign(t *testing.T, alg string, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// unsigned builds a token with alg "none" in the given spelling.
func unsigned(alg string, claims jwt.MapClaims) string {
	enc := base64.RawURLEncoding.EncodeToString
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	payload, _ := tok.SigningString()
	_, body, _ := strings.Cut(payload, ".")
	return enc([]byte(`{"alg":"`+alg+`","typ":"JWT"}`)) + "." + body + "."
}

// TestEverySessionAlgorithm runs each allowed algorithm through the HTTP API:
// a good token gets a token for its user, every forged or invalid one is a
// 401 with no upstream call, counted under its reason.
func TestEverySessionAlgorithm(t *testing.T) {
	algs := []string{"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			key := newKeyPair(t, alg)
			e := newEnv(t, envOptions{session: key.config()})
			ada := e.addUser("Ada")
			now := e.clock.Now()
			good := func() jwt.MapClaims {
				return jwt.MapClaims{"sub": ada.ID, "iss": "https://app.example.com", "aud": "qtb",
					"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
			}
			with := func(k string, v any) jwt.MapClaims {
				c := good()
				if v == nil {
					delete(c, k)
				} else {
					c[k] = v
				}
				return c
			}

			resp, body := e.do("GET", "/v1/token", sign(t, alg, key.sign, good()), nil)
			if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != ada.ID {
				t.Fatalf("good token: %d %s", resp.StatusCode, body)
			}
			e.tenant.ResetCounters()

			wrong := newKeyPair(t, alg)
			bad := []struct {
				name   string
				token  string
				reason session.Reason
			}{
				{"wrong key", sign(t, alg, wrong.sign, good()), session.ReasonSignature},
				{"alg none", unsigned("none", good()), session.ReasonAlgorithm},
				{"alg None", unsigned("None", good()), session.ReasonAlgorithm},
				{"alg NONE", unsigned("NONE", good()), session.ReasonAlgorithm},
				{"expired", sign(t, alg, key.sign, with("exp", now.Add(-time.Hour).Unix())), session.ReasonExpired},
				{"no exp", sign(t, alg, key.sign, with("exp", nil)), session.ReasonMissingExpiry},
				{"wrong issuer", sign(t, alg, key.sign, with("iss", "https://evil.example.com")), session.ReasonIssuer},
				{"wrong audience", sign(t, alg, key.sign, with("aud", "other")), session.ReasonAudience},
				{"no user claim", sign(t, alg, key.sign, with("sub", nil)), session.ReasonUserClaim},
				{"empty user claim", sign(t, alg, key.sign, with("sub", "")), session.ReasonUserClaim},
			}
			if key.pubPEM != nil {
				// The classic confusion attack: HS256 keyed with the public key.
				bad = append(bad, struct {
					name   string
					token  string
					reason session.Reason
				}{"HS256 with the public key", sign(t, "HS256", key.pubPEM, good()), session.ReasonAlgorithm})
			}
			for _, b := range bad {
				before := testutil.ToFloat64(e.metrics.SessionRejections.WithLabelValues(string(b.reason)))
				resp, body := e.do("GET", "/v1/token", b.token, nil)
				if resp.StatusCode != 401 || decodeErrorBody(t, body).Error != "invalid_session" {
					t.Errorf("%s: status %d body %s", b.name, resp.StatusCode, body)
					continue
				}
				if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("%s: no WWW-Authenticate", b.name)
				}
				if after := testutil.ToFloat64(e.metrics.SessionRejections.WithLabelValues(string(b.reason))); after != before+1 {
					t.Errorf("%s: rejections{reason=%q} went %v -> %v", b.name, b.reason, before, after)
				}
			}
			if n := e.tenant.Calls(qliktest.EndpointToken); n != 0 {
				t.Fatalf("rejected sessions caused %d upstream calls", n)
			}
		})
	}
}
