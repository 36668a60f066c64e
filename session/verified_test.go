package session_test

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// TestVerifiedCache: a token that verified is remembered, but never past
// its exp plus leeway nor past the TTL, and rejections are not remembered.
func TestVerifiedCache(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef-verified")
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	v, err := session.NewVerifier(t.Context(), session.Config{
		HMACSecret: key, Now: func() time.Time { return now }, Leeway: 30 * time.Second, VerifiedCacheTTL: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	sign := func(claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// A token valid from now+10s: rejected now, and the rejection is not
	// remembered once it becomes valid.
	early := sign(jwt.MapClaims{"sub": "u1", "nbf": now.Add(45 * time.Second).Unix(), "exp": now.Add(time.Hour).Unix()})
	if _, err := v.Verify(t.Context(), early); session.ReasonOf(err) != session.ReasonNotYetValid {
		t.Fatalf("not yet valid: %v", err)
	}
	now = now.Add(20 * time.Second) // inside the 30s leeway of nbf
	if id, err := v.Verify(t.Context(), early); err != nil || id.UserValue != "u1" {
		t.Fatalf("a rejection was remembered: %v", err)
	}

	// A token about to expire is remembered only until exp + leeway.
	short := sign(jwt.MapClaims{"sub": "u2", "exp": now.Add(10 * time.Second).Unix()})
	if _, err := v.Verify(t.Context(), short); err != nil {
		t.Fatal(err)
	}
	now = now.Add(41 * time.Second) // past exp + 30s leeway, within the TTL
	if _, err := v.Verify(t.Context(), short); session.ReasonOf(err) != session.ReasonExpired {
		t.Fatalf("an expired token was served from the cache: %v", err)
	}

	// A forged token is rejected every time.
	long := sign(jwt.MapClaims{"sub": "u3", "exp": now.Add(time.Hour).Unix()})
	forged := long[:len(long)-4] + "AAAA"
	for range 2 {
		if _, err := v.Verify(t.Context(), forged); err == nil {
			t.Fatal("a forged token was accepted")
		}
	}
	if _, err := v.Verify(t.Context(), long); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkVerifyRemembered measures a repeated token with and without the
// cache of verified tokens.
func BenchmarkVerifyRemembered(b *testing.B) {
	key := []byte("0123456789abcdef0123456789abcdef-verified")
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(key)
	for _, ttl := range []time.Duration{0, time.Minute} {
		b.Run("ttl="+ttl.String(), func(b *testing.B) {
			v, err := session.NewVerifier(b.Context(), session.Config{HMACSecret: key, VerifiedCacheTTL: ttl})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(b.Context(), tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
