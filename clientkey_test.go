package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/internal/clocktest"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// clientKey is a generated private key, its PEM file and its JWK.
type clientKey struct {
	priv crypto.Signer
	file string
	key  *qlik.SigningKey
}

func newClientKey(t *testing.T, dir, name, alg, kid string) clientKey {
	t.Helper()
	var priv crypto.Signer
	var err error
	if alg == qlik.AlgES384 {
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	} else {
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := qlik.NewSigningKey(priv, kid, alg)
	if err != nil {
		t.Fatal(err)
	}
	return clientKey{priv, file, k}
}

func jwks(t *testing.T, keys ...qlik.JWK) json.RawMessage {
	t.Helper()
	raw, err := json.Marshal(keys)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestKeyOnlyBroker: a broker whose environment and files hold no client
// secret at all gets impersonation tokens with its key, looks users up by
// email with an admin client on a key, and serves the public JWKS of both
// keys on the metrics listener.
func TestKeyOnlyBroker(t *testing.T) {
	dir := t.TempDir()
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	imp := newClientKey(t, dir, "imp.pem", qlik.AlgRS256, "")
	adm := newClientKey(t, dir, "admin.pem", qlik.AlgES384, "admin-1")
	oc := tn.AddClient(qliktest.OAuthClient{ID: "imp", AllowedAuthMethods: []string{"private_key_jwt"}, PublicKeys: jwks(t, imp.key.PublicJWK())})
	admin := tn.AddClient(qliktest.OAuthClient{ID: "admin", AllowedGrants: []string{"client_credentials"}, AllowedScopes: []string{"admin_classic"},
		AllowedAuthMethods: []string{"private_key_jwt"}, PublicKeys: jwks(t, adm.key.PublicJWK())})
	ada := tn.AddUser(qliktest.User{Name: "Ada", Email: "ada@example.com", Status: "active"})

	env := map[string]string{
		"QTB_TENANT_URL": tn.URL(), "QTB_CLIENT_ID": oc.ID, "QTB_CLIENT_KEY_FILE": imp.file,
		"QTB_ADMIN_CLIENT_ID": admin.ID, "QTB_ADMIN_CLIENT_KEY_FILE": adm.file, "QTB_ADMIN_CLIENT_KEY_ID": "admin-1", "QTB_ADMIN_CLIENT_KEY_ALG": "ES384",
		"QTB_USER_LOOKUP": "email", "QTB_USER_CLAIM": "email", "QTB_SESSION_HMAC_SECRET": testHMAC,
	}
	for k := range env {
		if strings.Contains(k, "CLIENT_SECRET") {
			t.Fatalf("%s set", k)
		}
	}
	for _, f := range []string{imp.file, adm.file} {
		raw, _ := os.ReadFile(f)
		if bytes.Contains(raw, []byte(oc.Secret)) || bytes.Contains(raw, []byte(admin.Secret)) {
			t.Fatal("a key file holds a secret")
		}
	}
	api, metricsURL := startServeMetrics(t, env)
	code, tok := fetchToken(api, sessionFor(t, jwt.MapClaims{"sub": "app-1", "email": "ada@example.com"}))
	if u, err := tn.TokenUser(tok); code != 200 || err != nil || u.ID != ada.ID {
		t.Fatalf("token by email: %d %v %s", code, err, tok)
	}
	if n, m := tn.AssertionKeyUses(imp.key.KeyID()), tn.AssertionKeyUses("admin-1"); n != 1 || m != 1 {
		t.Errorf("assertions: impersonation %d, admin %d; want 1 each", n, m)
	}

	resp, err := http.Get(metricsURL + "/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []qlik.JWK `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(set.Keys, []qlik.JWK{imp.key.PublicJWK(), adm.key.PublicJWK()}) {
		t.Errorf("jwks.json = %+v", set.Keys)
	}
}

// refusingTenant puts a tamperer between the broker and the fake tenant:
// it sees every token request (as its JSON body) and may change the body
// and the Host the tenant sees.
type refusingTenant struct {
	tn     *qliktest.Tenant
	srv    *httptest.Server
	mu     sync.Mutex
	tamper func(r *http.Request, body map[string]any)
}

func newRefusingTenant(t *testing.T, tn *qliktest.Tenant) *refusingTenant {
	rt := &refusingTenant{tn: tn}
	rt.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt.mu.Lock()
		tamper := rt.tamper
		rt.mu.Unlock()
		if tamper != nil && r.URL.Path == "/oauth/token" {
			var body map[string]any
			_ = json.NewDecoder(r.Body).Decode(&body)
			tamper(r, body)
			raw, _ := json.Marshal(body)
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(raw)), int64(len(raw))
		}
		tn.ServeHTTP(w, r)
	}))
	t.Cleanup(rt.srv.Close)
	return rt
}

// TestRefusedAssertions: every check of the tenant that the broker can be
// made to fail (wrong key, alg not the key's, another host in aud, a
// replayed jti, iss not the client, an expired assertion) gives 502
// upstream_misconfigured with no retry storm, though the broker may retry
// 5xx: the first request makes the impersonation call and at most one
// client_credentials check, both refused for the case's reason; after that
// the broker keeps quiet (no token call) for the rest of the requests. Each
// case runs against its own tenant and broker, so one case's quiet spell
// does not cover the next. A new key file is picked up within the quiet
// spell.
func TestRefusedAssertions(t *testing.T) {
	// refusedFixture is one case's tenant, tamperer and broker.
	type refusedFixture struct {
		tn       *qliktest.Tenant
		clk      *clocktest.Clock
		front    *refusingTenant
		api      string
		k, other clientKey
		oc, twin qliktest.OAuthClient
		good     json.RawMessage
		ada      qliktest.User
	}
	start := func(t *testing.T) *refusedFixture {
		t.Helper()
		dir := t.TempDir()
		f := &refusedFixture{clk: clocktest.New(time.Now())}
		tn, err := qliktest.New(qliktest.WithClock(f.clk.Now))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tn.Close)
		f.tn = tn
		f.k = newClientKey(t, dir, "imp.pem", qlik.AlgRS256, "k1")
		f.other = newClientKey(t, dir, "other.pem", qlik.AlgRS256, "k1")
		f.good = jwks(t, f.k.key.PublicJWK())
		f.oc = tn.AddClient(qliktest.OAuthClient{ID: "imp", AllowedAuthMethods: []string{"private_key_jwt"}, PublicKeys: f.good})
		f.twin = tn.AddClient(qliktest.OAuthClient{ID: "twin", AllowedAuthMethods: []string{"private_key_jwt"}, PublicKeys: f.good})
		f.ada = tn.AddUser(qliktest.User{Subject: "ada", Name: "Ada", Status: "active"})
		tn.AddUser(qliktest.User{Subject: "prime", Name: "Prime", Status: "active"})
		f.front = newRefusingTenant(t, tn)
		// A retry budget the broker must not spend on refusals.
		f.api, _ = startServeMetrics(t, map[string]string{
			"QTB_TENANT_URL": f.front.srv.URL, "QTB_CLIENT_ID": f.oc.ID, "QTB_CLIENT_KEY_FILE": f.k.file, "QTB_CLIENT_KEY_ID": "k1",
			"QTB_SESSION_HMAC_SECRET": testHMAC, "QTB_UPSTREAM_RETRIES": "3", "QTB_USER_LOOKUP": "subject",
		})
		return f
	}
	setTamper := func(f *refusedFixture, tamper func(r *http.Request, body map[string]any)) {
		f.front.mu.Lock()
		f.front.tamper = tamper
		f.front.mu.Unlock()
	}

	tests := []struct {
		name   string
		setup  func(f *refusedFixture)
		tamper func(f *refusedFixture) func(r *http.Request, body map[string]any)
		want   string
	}{
		{"wrong key", func(f *refusedFixture) { f.tn.SetPublicKeys(f.oc.ID, jwks(t, f.other.key.PublicJWK())) }, nil, qliktest.RefusedSignature},
		{"alg not the key's", func(f *refusedFixture) {
			j := f.k.key.PublicJWK()
			j.Algorithm = qlik.AlgRS512
			f.tn.SetPublicKeys(f.oc.ID, jwks(t, j))
		}, nil, qliktest.RefusedAlg},
		{"aud names another host", nil, func(f *refusedFixture) func(*http.Request, map[string]any) {
			return func(r *http.Request, _ map[string]any) {
				r.Host = strings.TrimPrefix(f.tn.URL(), "http://") // the broker signed for the front's host
			}
		}, qliktest.RefusedAudience},
		{"replayed jti", nil, func(*refusedFixture) func(*http.Request, map[string]any) {
			var last string // the first assertion seen, sent again ever after
			return func(_ *http.Request, body map[string]any) {
				if last != "" {
					body["client_assertion"] = last
				}
				last, _ = body["client_assertion"].(string)
			}
		}, qliktest.RefusedReplay},
		{"iss not the client", nil, func(f *refusedFixture) func(*http.Request, map[string]any) {
			return func(_ *http.Request, body map[string]any) { body["client_id"] = f.twin.ID }
		}, qliktest.RefusedClient},
		{"expired", func(f *refusedFixture) { f.clk.Advance(10 * time.Minute) }, nil, qliktest.RefusedExpired},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t)
			if tt.tamper != nil {
				setTamper(f, tt.tamper(f))
			}
			// The replay case needs one good assertion seen first: the
			// tamperer keeps it, the tenant takes it once.
			if tt.name == "replayed jti" {
				if code, body := fetchToken(f.api, sessionFor(t, jwt.MapClaims{"sub": "prime"})); code != 200 {
					t.Fatalf("first use: %d %s", code, body)
				}
			}
			if tt.setup != nil {
				tt.setup(f)
			}
			calls, refusals := f.tn.Calls(qliktest.EndpointToken), len(f.tn.AssertionRefusals())
			first := 0 // token calls of the first request
			const requests = 3
			for j := range requests {
				// A user no token is cached for: the client is refused
				// before the user is looked up.
				code, body := fetchToken(f.api, sessionFor(t, jwt.MapClaims{"sub": fmt.Sprintf("user-%d-%d", i, j)}))
				if code != http.StatusBadGateway || !strings.Contains(body, "upstream_misconfigured") {
					t.Fatalf("request %d: %d %s", j, code, body)
				}
				// The first request: the impersonation call and at most
				// one credentials check, no retry; later ones: none.
				got := f.tn.Calls(qliktest.EndpointToken) - calls
				if j == 0 {
					first = got
				}
				if first < 1 || first > 2 || got != first {
					t.Errorf("after request %d: %d token calls, the first request %d; want 1 or 2, then none", j, got, first)
				}
			}
			got := f.tn.AssertionRefusals()[refusals:]
			if n := f.tn.Calls(qliktest.EndpointToken) - calls; len(got) != n ||
				slices.ContainsFunc(got, func(r string) bool { return r != tt.want }) {
				t.Errorf("refusals %q for %d token calls, want each %q", got, n, tt.want)
			}
		})
	}

	// Refused for its key, the broker keeps quiet; a new key file (one the
	// tenant holds) is used at once, within the quiet spell, and the
	// broker recovers.
	t.Run("new key file within the quiet spell", func(t *testing.T) {
		f := start(t)
		f.tn.SetPublicKeys(f.oc.ID, jwks(t, f.other.key.PublicJWK()))
		for j := range 2 {
			if code, body := fetchToken(f.api, sessionFor(t, jwt.MapClaims{"sub": fmt.Sprintf("quiet-%d", j)})); code != http.StatusBadGateway {
				t.Fatalf("request %d with the old key: %d %s", j, code, body)
			}
		}
		calls := f.tn.Calls(qliktest.EndpointToken)
		raw, err := os.ReadFile(f.other.file)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.k.file, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		code, tok := fetchToken(f.api, sessionFor(t, jwt.MapClaims{"sub": "ada"}))
		if u, err := f.tn.TokenUser(tok); code != 200 || err != nil || u.ID != f.ada.ID {
			t.Fatalf("after the new key file: %d %v", code, err)
		}
		if n := f.tn.Calls(qliktest.EndpointToken) - calls; n != 1 {
			t.Errorf("%d token calls for the recovery, want 1", n)
		}
	})
}
