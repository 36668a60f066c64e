package session_test

import (
	"context"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// TestRefreshDropsARemovedKey: a key the identity provider removed keeps
// verifying until the next background fetch (an hour here); Refresh makes
// it stop at once, remembered tokens included, while the remaining key
// keeps working.
func TestRefreshDropsARemovedKey(t *testing.T) {
	t.Parallel()
	k := keys()
	js := newJWKSServer(t)
	js.setKeys(t, jwkFor(t, &k.rsa.PublicKey, "old", "RS256"), jwkFor(t, &k.rsaOther.PublicKey, "new", "RS256"))
	cfg := jwksConfig(js.srv.URL)
	cfg.JWKSRefreshInterval = time.Hour
	cfg.VerifiedCacheTTL = time.Hour
	v := newVerifier(t, cfg)
	ctx := context.Background()
	old := sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "old"})
	fresh := sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), map[string]any{"kid": "new"})
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatalf("before removal: %v", err)
	}

	js.setKeys(t, jwkFor(t, &k.rsaOther.PublicKey, "new", "RS256"))
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatalf("the removed key should still verify until a fetch (this is what Refresh is for): %v", err)
	}
	hits := js.hits.Load()
	if err := v.Refresh(ctx); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if js.hits.Load() != hits+1 {
		t.Errorf("Refresh fetched %d times, want once", js.hits.Load()-hits)
	}
	_, err := v.Verify(ctx, old)
	wantReason(t, err, session.ReasonUnknownKey)
	if _, err := v.Verify(ctx, fresh); err != nil {
		t.Fatalf("the remaining key: %v", err)
	}

	// A failed fetch keeps the loaded keys.
	js.down.Store(true)
	if err := v.Refresh(ctx); err == nil {
		t.Error("Refresh reported no error for a failing JWKS")
	}
	if _, err := v.Verify(ctx, fresh); err != nil {
		t.Fatalf("after a failed refresh: %v", err)
	}
	v.Close()
	if err := v.Refresh(ctx); err == nil {
		t.Error("Refresh after Close reported no error")
	}
}
