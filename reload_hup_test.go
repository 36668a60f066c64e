package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// TestSIGHUPRefreshesSessionKeys: after the identity provider removes a
// key, SIGHUP makes the broker stop accepting it at once (not at the next
// background refresh, an hour away here), and the signal still reaches
// the tenants-file watcher.
func TestSIGHUPRefreshesSessionKeys(t *testing.T) {
	oldKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var mu sync.Mutex
	var body []byte
	publish := func(keys map[string]*ecdsa.PrivateKey) {
		store := jwkset.NewMemoryStorage()
		for kid, k := range keys {
			j, err := jwkset.NewJWKFromKey(&k.PublicKey, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.AlgES256, USE: jwkset.UseSig}})
			if err != nil {
				t.Fatal(err)
			}
			if err := store.KeyWrite(context.Background(), j); err != nil {
				t.Fatal(err)
			}
		}
		b, err := store.JSONPublic(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		body = b
		mu.Unlock()
	}
	publish(map[string]*ecdsa.PrivateKey{"old": oldKey, "new": newKey})
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write(body)
	}))
	defer idp.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v, err := session.NewVerifier(ctx, session.Config{JWKSURL: idp.URL, JWKSRefreshInterval: time.Hour, JWKSUnknownKIDMinWait: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	token := func(k *ecdsa.PrivateKey, kid string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": "u", "exp": time.Now().Add(time.Hour).Unix()})
		tok.Header["kid"] = kid
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if _, err := v.Verify(ctx, token(oldKey, "old")); err != nil {
		t.Fatalf("before removal: %v", err)
	}
	publish(map[string]*ecdsa.PrivateKey{"new": newKey})

	hup, stopHUP := notifyHUP()
	defer stopHUP()
	tenants := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		relayHUP(ctx, hup, tenants, slog.New(slog.DiscardHandler), v, nil)
	}()
	defer func() { cancel(); <-done }()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tenants:
	case <-time.After(10 * time.Second):
		t.Fatal("SIGHUP did not reach the tenants watcher")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := v.Verify(ctx, token(oldKey, "old"))
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the removed key still verifies after SIGHUP")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := v.Verify(ctx, token(newKey, "new")); err != nil {
		t.Fatalf("the remaining key: %v", err)
	}
}
