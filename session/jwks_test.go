package session_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/qtb-dev/qlik-token-broker/internal/clocktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// jwksServer serves a JWK Set and counts fetches.
type jwksServer struct {
	srv  *httptest.Server
	hits atomic.Int64
	down atomic.Bool
	mu   sync.Mutex
	body []byte
}

func newJWKSServer(t testing.TB) *jwksServer {
	t.Helper()
	s := &jwksServer{body: []byte(`{"keys":[]}`)}
	s.srv = httptest.NewServer(s)
	t.Cleanup(s.srv.Close)
	return s
}

func (s *jwksServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.hits.Add(1)
	if s.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	s.mu.Lock()
	b := s.body
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// setKeys publishes the public parts of jwks, marshalled by jwkset.
func (s *jwksServer) setKeys(t testing.TB, jwks ...jwkset.JWK) {
	t.Helper()
	store := jwkset.NewMemoryStorage()
	for _, j := range jwks {
		if err := store.KeyWrite(context.Background(), j); err != nil {
			t.Fatal(err)
		}
	}
	b, err := store.JSONPublic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.setBody(b)
}

func (s *jwksServer) setBody(b []byte) {
	s.mu.Lock()
	s.body = b
	s.mu.Unlock()
}

func jwkFor(t testing.TB, key any, kid, alg string) jwkset.JWK {
	t.Helper()
	return jwkWithUse(t, key, kid, alg, jwkset.UseSig)
}

func jwkWithUse(t testing.TB, key any, kid, alg string, use jwkset.USE) jwkset.JWK {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(key, jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(alg), USE: use},
	})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func jwksConfig(url string) session.Config {
	return session.Config{JWKSURL: url, JWKSUnknownKIDMinWait: time.Hour, Now: fixedNow}
}

func TestJWKSEveryAlgorithm(t *testing.T) {
	t.Parallel()
	k := keys()
	js := newJWKSServer(t)
	js.setKeys(t,
		jwkFor(t, &k.rsa.PublicKey, "rsa", ""), // no alg: usable for RS* and PS*
		jwkFor(t, &k.p256.PublicKey, "ES256", "ES256"),
		jwkFor(t, &k.p384.PublicKey, "ES384", "ES384"),
		jwkFor(t, &k.p521.PublicKey, "ES512", "ES512"),
		jwkFor(t, k.ed25519.Public(), "EdDSA", "EdDSA"),
	)
	v := newVerifier(t, jwksConfig(js.srv.URL))
	if err := v.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	for _, tc := range algCases(t) {
		if tc.public == nil {
			continue
		}
		kid := tc.alg
		if strings.HasPrefix(kid, "RS") || strings.HasPrefix(kid, "PS") {
			kid = "rsa"
		}
		t.Run(tc.alg, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			if _, err := v.Verify(ctx, sign(t, tc.method, tc.key, claims(nil), map[string]any{"kid": kid})); err != nil {
				t.Fatalf("with kid: %v", err)
			}
			if _, err := v.Verify(ctx, sign(t, tc.method, tc.key, claims(nil), nil)); err != nil {
				t.Fatalf("without kid: %v", err)
			}
			_, err := v.Verify(ctx, sign(t, tc.method, tc.wrongKey, claims(nil), map[string]any{"kid": kid}))
			wantReason(t, err, session.ReasonSignature)
			_, err = v.Verify(ctx, sign(t, tc.method, tc.wrongKey, claims(nil), nil))
			wantReason(t, err, session.ReasonSignature)
			_, err = v.Verify(ctx, unsigned(t, "none", claims(map[string]any{})))
			wantReason(t, err, session.ReasonAlgorithm)
		})
	}
	t.Run("HMAC never", func(t *testing.T) {
		t.Parallel()
		for _, secret := range [][]byte{pkixPEM(t, &k.rsa.PublicKey), k.hmac} {
			_, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, secret, claims(nil), map[string]any{"kid": "rsa"}))
			wantReason(t, err, session.ReasonAlgorithm)
		}
	})
}

// TestJWKSKeyChecks: a key is used only for the algorithm its type, curve,
// size, "alg" and "use" allow.
func TestJWKSKeyChecks(t *testing.T) {
	t.Parallel()
	k := keys()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	js := newJWKSServer(t)
	js.setKeys(t,
		jwkFor(t, &k.rsa.PublicKey, "rs384-only", "RS384"),
		jwkWithUse(t, &k.rsaOther.PublicKey, "enc", "", jwkset.UseEnc),
		jwkFor(t, &k.p384.PublicKey, "p384-no-alg", ""),
		jwkFor(t, &small.PublicKey, "rsa1024", ""),
	)
	v := newVerifier(t, jwksConfig(js.srv.URL))
	tests := []struct {
		name   string
		token  string
		reason session.Reason
	}{
		{"accepted: alg matches the JWK", sign(t, jwt.SigningMethodRS384, k.rsa, claims(nil), map[string]any{"kid": "rs384-only"}), ""},
		{"JWK alg differs from token alg", sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "rs384-only"}), session.ReasonUnknownKey},
		{"JWK alg differs, no kid", sign(t, jwt.SigningMethodPS384, k.rsa, claims(nil), nil), session.ReasonUnknownKey},
		{"JWK for encryption", sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), map[string]any{"kid": "enc"}), session.ReasonUnknownKey},
		{"JWK for encryption, no kid", sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), nil), session.ReasonUnknownKey},
		{"accepted: curve matches", sign(t, jwt.SigningMethodES384, k.p384, claims(nil), map[string]any{"kid": "p384-no-alg"}), ""},
		{"curve does not match alg", sign(t, jwt.SigningMethodES256, k.p256, claims(nil), map[string]any{"kid": "p384-no-alg"}), session.ReasonUnknownKey},
		{"EC alg on an RSA key", sign(t, jwt.SigningMethodES256, k.p256, claims(nil), map[string]any{"kid": "rs384-only"}), session.ReasonUnknownKey},
		{"RSA below 2048 bits", sign(t, jwt.SigningMethodRS256, small, claims(nil), map[string]any{"kid": "rsa1024"}), session.ReasonUnknownKey},
		{"non-string kid", sign(t, jwt.SigningMethodRS384, k.rsa, claims(nil), map[string]any{"kid": 7}), session.ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := v.Verify(context.Background(), tc.token)
			if tc.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantReason(t, err, tc.reason)
		})
	}
}

// TestJWKSRotation: a token with a new kid verifies after the server rotates
// its keys, without restarting the Verifier; refreshes on unknown kids are
// rate-limited.
func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	k := keys()
	js := newJWKSServer(t)
	js.setKeys(t, jwkFor(t, &k.rsa.PublicKey, "k1", "RS256"))
	v := newVerifier(t, jwksConfig(js.srv.URL))
	ctx := context.Background()
	tok1 := sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "k1"})
	tok2 := sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), map[string]any{"kid": "k2"})

	if _, err := v.Verify(ctx, tok1); err != nil {
		t.Fatal(err)
	}
	if n := js.hits.Load(); n != 1 {
		t.Fatalf("hits after first verify = %d, want 1 (initial fetch only)", n)
	}

	js.setKeys(t, jwkFor(t, &k.rsaOther.PublicKey, "k2", "RS256"))
	if _, err := v.Verify(ctx, tok2); err != nil {
		t.Fatalf("token with the new kid: %v", err)
	}
	if n := js.hits.Load(); n != 2 {
		t.Fatalf("hits after rotation = %d, want 2", n)
	}

	// k1 was removed from the set; asking for it again is an unknown kid, and
	// the refresh budget is spent for JWKSUnknownKIDMinWait.
	_, err := v.Verify(ctx, tok1)
	wantReason(t, err, session.ReasonUnknownKey)
	if n := js.hits.Load(); n != 2 {
		t.Fatalf("hits = %d, want 2: unknown kid refresh not rate-limited", n)
	}
	// Known keys keep working.
	if _, err := v.Verify(ctx, tok2); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSUnknownKIDRateLimit(t *testing.T) {
	t.Parallel()
	k := keys()
	js := newJWKSServer(t)
	js.setKeys(t, jwkFor(t, &k.rsa.PublicKey, "k1", "RS256"))
	v := newVerifier(t, jwksConfig(js.srv.URL))

	tokens := make([]string, 50)
	for i := range tokens {
		tokens[i] = sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "unknown-" + strings.Repeat("x", i)})
	}
	var wg sync.WaitGroup
	for _, tok := range tokens {
		wg.Go(func() {
			_, err := v.Verify(context.Background(), tok)
			if session.ReasonOf(err) != session.ReasonUnknownKey {
				t.Errorf("reason = %q, want unknown_key", session.ReasonOf(err))
			}
		})
	}
	wg.Wait()
	if n := js.hits.Load(); n != 2 {
		t.Fatalf("50 unknown kids caused %d fetches in total, want 2 (initial + one refresh)", n)
	}
}

func TestJWKSReady(t *testing.T) {
	t.Parallel()
	k := keys()
	ctx := context.Background()
	js := newJWKSServer(t)
	js.down.Store(true)
	clock := clocktest.New(now)
	cfg := jwksConfig(js.srv.URL)
	cfg.Now = clock.Now
	cfg.JWKSUnknownKIDMinWait = 30 * time.Second

	v, err := session.NewVerifier(ctx, cfg)
	if err != nil {
		t.Fatalf("NewVerifier must not fail when the first fetch fails: %v", err)
	}
	t.Cleanup(v.Close)
	if err := v.Ready(ctx); !errors.Is(err, session.ErrNotReady) {
		t.Fatalf("Ready with server down = %v, want ErrNotReady", err)
	}

	js.down.Store(false)
	js.setKeys(t, jwkFor(t, &k.rsa.PublicKey, "k1", "RS256"))
	if err := v.Ready(ctx); !errors.Is(err, session.ErrNotReady) {
		t.Fatalf("Ready before the retry interval = %v, want ErrNotReady", err)
	}
	if n := js.hits.Load(); n != 1 {
		t.Fatalf("hits = %d, want 1: Ready must pace its fetches", n)
	}

	clock.Advance(31 * time.Second)
	if err := v.Ready(ctx); err != nil {
		t.Fatalf("Ready after the server came up = %v", err)
	}
	if err := v.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if n := js.hits.Load(); n != 2 {
		t.Fatalf("hits = %d, want 2: Ready must not fetch once a key is loaded", n)
	}
	tok := sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"exp": clock.Now().Add(time.Hour).Unix()}), map[string]any{"kid": "k1"})
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}

	v.Close()
	v.Close() // idempotent
	if err := v.Ready(ctx); err == nil {
		t.Fatal("Ready after Close = nil")
	}
	// Loaded keys still verify after Close; nothing is fetched.
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("after Close: %v", err)
	}
	_, err = v.Verify(ctx, sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "new"}))
	wantReason(t, err, session.ReasonUnknownKey)
	if n := js.hits.Load(); n != 2 {
		t.Fatalf("hits after Close = %d, want 2", n)
	}
}

// TestJWKSReadyAfterUnknownKIDRefresh: a token with a kid loads the keys when
// the server comes up, without waiting for Ready's retry interval.
func TestJWKSReadyAfterUnknownKIDRefresh(t *testing.T) {
	t.Parallel()
	k := keys()
	ctx := context.Background()
	js := newJWKSServer(t)
	js.down.Store(true)
	v := newVerifier(t, jwksConfig(js.srv.URL))
	if err := v.Ready(ctx); err == nil {
		t.Fatal("Ready with server down = nil")
	}
	js.down.Store(false)
	js.setKeys(t, jwkFor(t, k.ed25519.Public(), "ed", "EdDSA"))
	if _, err := v.Verify(ctx, sign(t, jwt.SigningMethodEdDSA, k.ed25519, claims(nil), map[string]any{"kid": "ed"})); err != nil {
		t.Fatal(err)
	}
	if err := v.Ready(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSNotReady(t *testing.T) {
	t.Parallel()
	k := keys()
	good := newJWKSServer(t)
	good.setKeys(t, jwkFor(t, &k.rsa.PublicKey, "k1", "RS256"))
	redirect := httptest.NewServer(http.RedirectHandler(good.srv.URL, http.StatusFound))
	t.Cleanup(redirect.Close)
	huge := newJWKSServer(t)
	huge.setKeys(t, jwkFor(t, &k.rsa.PublicKey, "k1", "RS256"))
	// A usable key first, then padding: only the size cap keeps it out.
	huge.setBody(append(bytes.TrimSuffix(huge.body, []byte("}")), []byte(`,"pad":"`+strings.Repeat("x", 2<<20)+`"}`)...))
	encOnly := newJWKSServer(t)
	encOnly.setKeys(t, jwkWithUse(t, &k.rsa.PublicKey, "k1", "", jwkset.UseEnc))
	esOnly := newJWKSServer(t)
	esOnly.setKeys(t, jwkFor(t, &k.p256.PublicKey, "p256", "ES256"))

	tests := []struct {
		name string
		cfg  session.Config
	}{
		{"redirects are not followed", jwksConfig(redirect.URL)},
		{"response over 1 MiB", jwksConfig(huge.srv.URL)},
		{"only encryption keys", jwksConfig(encOnly.srv.URL)},
		{"no key for the allowed algorithms", session.Config{JWKSURL: esOnly.srv.URL, Algorithms: []string{"RS256", "EdDSA"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := newVerifier(t, tc.cfg)
			if err := v.Ready(context.Background()); !errors.Is(err, session.ErrNotReady) {
				t.Fatalf("Ready = %v, want ErrNotReady", err)
			}
		})
	}
	if n := good.hits.Load(); n != 0 {
		t.Fatalf("redirect target fetched %d times", n)
	}
}

// TestJWKSGoroutines: the refresh goroutine and the client's connections end
// on Close and on cancellation of the context given to NewVerifier. Not
// parallel, so that no other test's goroutines come and go meanwhile. The
// check runs while the JWKS server is still up, so that a connection left
// open by the Verifier shows.
func TestJWKSGoroutines(t *testing.T) {
	k := keys()
	for _, stop := range []string{"Close", "cancel"} {
		t.Run(stop, func(t *testing.T) {
			js := &jwksServer{}
			js.srv = httptest.NewServer(js)
			defer js.srv.Close()
			js.setKeys(t, jwkFor(t, &k.rsa.PublicKey, "k1", "RS256"))
			before := goleak.IgnoreCurrent()

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg := jwksConfig(js.srv.URL)
			cfg.JWKSRefreshInterval = time.Second
			v, err := session.NewVerifier(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "k1"})); err != nil {
				t.Fatal(err)
			}
			if stop == "Close" {
				v.Close()
			} else {
				cancel()
			}
			// The server side of a connection ends when the client closes it.
			goleak.VerifyNone(t, before, goleak.IgnoreAnyFunction("net/http.(*conn).serve"))
		})
	}
}
