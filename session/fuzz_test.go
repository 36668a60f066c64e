package session_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// FuzzVerify: Verify never panics, every failure is a *session.Error with a
// listed reason, and the only strings ever accepted are the tokens this test
// minted. HS256 and EdDSA are used because their signatures are not
// malleable (ECDSA's (r, n-s) would be a second valid encoding).
func FuzzVerify(f *testing.F) {
	k := keys()
	hmacV := newVerifier(f, session.Config{HMACSecret: k.hmac, Issuer: "app", Leeway: time.Minute, TenantClaim: "tenant"})
	edV := newVerifier(f, session.Config{PublicKeyPEM: pkixPEM(f, k.ed25519.Public()), Issuer: "app", Leeway: time.Minute, TenantClaim: "tenant"})

	base := claims(map[string]any{"iss": "app", "tenant": "acme"})
	minted := map[string]*session.Verifier{}
	for _, c := range []jwt.MapClaims{
		base,
		claims(map[string]any{"iss": "app", "tenant": "globex", "sub": "bob", "aud": []string{"x", "y"}}),
		claims(map[string]any{"iss": "app", "tenant": "acme", "nbf": now.Unix()}),
	} {
		minted[sign(f, jwt.SigningMethodHS256, k.hmac, c, nil)] = hmacV
		minted[sign(f, jwt.SigningMethodEdDSA, k.ed25519, c, map[string]any{"kid": "ed"})] = edV
	}
	for tok := range minted {
		f.Add(tok)
		parts := strings.Split(tok, ".")
		f.Add(parts[0] + "." + parts[1] + ".")
		f.Add(tok + ".")
		f.Add(tok[:len(tok)-1])
		f.Add(parts[0] + "." + parts[1] + "." + parts[2][1:] + parts[2][:1])
	}
	rejected := []string{
		"", ".", "..", "...", "a.b.c", "e30.e30.", "e30.e30.e30",
		unsigned(f, "none", base), unsigned(f, "None", base), unsigned(f, "NONE", base),
		sign(f, jwt.SigningMethodHS256, k.hmacOther, base, nil),
		sign(f, jwt.SigningMethodHS256, k.hmac, base, map[string]any{"crit": []string{"b64"}}),
		sign(f, jwt.SigningMethodHS256, k.hmac, claims(map[string]any{"iss": "app"}), nil),
		sign(f, jwt.SigningMethodHS256, pkixPEM(f, k.ed25519.Public()), base, nil),
		strings.Repeat("A", 9000),
	}
	for _, s := range rejected {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, raw string) {
		for _, v := range []*session.Verifier{hmacV, edV} {
			id, err := v.Verify(context.Background(), raw)
			if err == nil {
				if minted[raw] != v {
					t.Fatalf("accepted a token the test did not mint for this verifier: %q", raw)
				}
				if id.UserValue == "" || id.Tenant == "" {
					t.Fatalf("accepted with incomplete identity %+v", id)
				}
				continue
			}
			var se *session.Error
			if !errors.As(err, &se) || !slices.Contains(session.Reasons(), se.Reason) {
				t.Fatalf("error %v is not a *session.Error with a listed reason", err)
			}
			if len(raw) > 8 && strings.Contains(err.Error(), raw) {
				t.Fatalf("error text contains the input")
			}
		}
		if _, ok := minted[raw]; ok {
			// Each minted token must be accepted by the verifier it was minted for.
			if _, err := minted[raw].Verify(context.Background(), raw); err != nil {
				t.Fatalf("minted token rejected: %v", err)
			}
		}
	})
}
