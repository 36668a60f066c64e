package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

const testHMAC = "an-hmac-key-of-at-least-32-bytes-long!"

// fakeTenant is one fake Qlik tenant with an impersonation client whose
// secret is in a file, as a tenants file expects.
type fakeTenant struct {
	id     string
	tn     *qliktest.Tenant
	client qliktest.OAuthClient
	entry  string // its tenants-file entry
}

func newFakeTenant(t *testing.T, dir, id string, extra string) *fakeTenant {
	t.Helper()
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	oc := tn.AddClient(qliktest.OAuthClient{ID: "client-" + id, Secret: "secret-" + id})
	secretFile := filepath.Join(dir, id+"-secret")
	if err := os.WriteFile(secretFile, []byte(oc.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	entry := fmt.Sprintf("  - id: %s\n    url: %s\n    clientId: %s\n    clientSecretFile: %s\n%s", id, tn.URL(), oc.ID, secretFile, extra)
	return &fakeTenant{id: id, tn: tn, client: oc, entry: entry}
}

func writeTenants(t *testing.T, path string, tenants ...*fakeTenant) {
	t.Helper()
	var b strings.Builder
	b.WriteString("tenants:\n")
	for _, ft := range tenants {
		b.WriteString(ft.entry)
	}
	// Write and rename, as Kubernetes swaps a ConfigMap mount.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startServe runs `serve` in process and returns its API base URL.
func startServe(t *testing.T, env map[string]string) string {
	t.Helper()
	api, _ := startServeMetrics(t, env)
	return api
}

// startServeMetrics runs `serve` in process and returns its API and
// metrics base URLs.
func startServeMetrics(t *testing.T, env map[string]string) (api, metricsURL string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]net.Addr, 1)
	ctx = context.WithValue(ctx, listenHookKey{}, listenHook(func(a, m net.Addr) { addrs <- [2]net.Addr{a, m} }))
	done := make(chan error, 1)
	var stderr syncBuffer
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, envFunc(env), io.Discard, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("broker log:\n%s", stderr.String())
		}
	})
	select {
	case a := <-addrs:
		return "http://" + a[0].String(), "http://" + a[1].String()
	case err := <-done:
		t.Fatalf("serve exited: %v\n%s", err, stderr.String())
	}
	return "", ""
}

func sessionFor(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	claims["exp"] = time.Now().Add(time.Hour).Unix()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testHMAC))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fetchToken(base, session string) (int, string) {
	req, _ := http.NewRequest("GET", base+"/v1/token", nil)
	req.Header.Set("Authorization", "Bearer "+session)
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestTenantsFile: one broker serves three tenants; each session gets a
// token from its own tenant; an unknown tenant is a 403 with no upstream
// call. Editing the file adds a fourth tenant under load without a failed
// request; a broken edit is rejected and the others keep working.
func TestTenantsFile(t *testing.T) {
	dir := t.TempDir()
	a, b, c := newFakeTenant(t, dir, "acme", ""), newFakeTenant(t, dir, "globex", ""), newFakeTenant(t, dir, "initech", "")
	path := filepath.Join(dir, "tenants.yaml")
	writeTenants(t, path, a, b, c)
	base := startServe(t, map[string]string{
		"QTB_TENANTS_FILE": path, "QTB_TENANT_CLAIM": "tenant", "QTB_SESSION_HMAC_SECRET": testHMAC,
	})

	users := map[string]qliktest.User{}
	for _, ft := range []*fakeTenant{a, b, c} {
		users[ft.id] = ft.tn.AddUser(qliktest.User{Name: "User of " + ft.id, Status: "active"})
		code, tok := fetchToken(base, sessionFor(t, jwt.MapClaims{"sub": users[ft.id].ID, "tenant": ft.id}))
		if code != 200 {
			t.Fatalf("tenant %s: %d %s", ft.id, code, tok)
		}
		if u, err := ft.tn.TokenUser(tok); err != nil || u.ID != users[ft.id].ID {
			t.Fatalf("tenant %s: the token is not its user's (%v)", ft.id, err)
		}
	}
	// A session for tenant acme carrying globex's user id: acme does not
	// know the user.
	if code, _ := fetchToken(base, sessionFor(t, jwt.MapClaims{"sub": users["globex"].ID, "tenant": "acme"})); code != 403 {
		t.Fatalf("cross-tenant user: %d", code)
	}
	before := a.tn.Calls(qliktest.EndpointToken) + b.tn.Calls(qliktest.EndpointToken) + c.tn.Calls(qliktest.EndpointToken)
	for _, claims := range []jwt.MapClaims{{"sub": "x", "tenant": "umbrella"}, {"sub": "x"}, {"sub": "x", "tenant": ""}} {
		code, body := fetchToken(base, sessionFor(t, claims))
		if code != 403 && code != 401 {
			t.Fatalf("unknown or missing tenant %v: %d %s", claims, code, body)
		}
	}
	if after := a.tn.Calls(qliktest.EndpointToken) + b.tn.Calls(qliktest.EndpointToken) + c.tn.Calls(qliktest.EndpointToken); after != before {
		t.Fatal("an unknown tenant caused upstream calls")
	}

	// Load on the three tenants while the file changes.
	stop := make(chan struct{})
	var failures, requests atomic.Int64
	var wg sync.WaitGroup
	for _, ft := range []*fakeTenant{a, b, c} {
		sess := sessionFor(t, jwt.MapClaims{"sub": users[ft.id].ID, "tenant": ft.id})
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				requests.Add(1)
				if code, _ := fetchToken(base, sess); code != 200 {
					failures.Add(1)
				}
			}
		})
	}
	d := newFakeTenant(t, dir, "hooli", "")
	dUser := d.tn.AddUser(qliktest.User{Name: "Hooli user", Status: "active"})
	dSess := sessionFor(t, jwt.MapClaims{"sub": dUser.ID, "tenant": "hooli"})
	writeTenants(t, path, a, b, c, d)
	_ = syscall.Kill(os.Getpid(), syscall.SIGHUP) // no need to wait for the poll
	waitFor(t, "the fourth tenant", func() bool { code, _ := fetchToken(base, dSess); return code == 200 })

	// A broken edit (unknown key, missing secret file) is rejected.
	broken := newFakeTenant(t, dir, "broken", "    clientSecrte: typo\n")
	writeTenants(t, path, a, b, c, d, broken)
	_ = syscall.Kill(os.Getpid(), syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond) // give the watcher a chance to (wrongly) apply it
	close(stop)
	wg.Wait()
	if code, _ := fetchToken(base, dSess); code != 200 {
		t.Fatalf("after a broken edit the fourth tenant stopped working: %d", code)
	}
	bUser := broken.tn.AddUser(qliktest.User{Name: "x", Status: "active"})
	if code, _ := fetchToken(base, sessionFor(t, jwt.MapClaims{"sub": bUser.ID, "tenant": "broken"})); code != 403 {
		t.Fatalf("the broken file was applied: its tenant answered %d", code)
	}
	if failures.Load() != 0 {
		t.Fatalf("%d of %d requests failed while the tenants file changed", failures.Load(), requests.Load())
	}
	t.Logf("%d requests during the reloads, none failed", requests.Load())
}

// waitFor polls cond (an event in another goroutine), failing after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEmailLookup: a known email gets its user's token; an unknown one is
// 403, or is created with createUsers; the mapping is cached.
func TestEmailLookup(t *testing.T) {
	dir := t.TempDir()
	for _, create := range []bool{false, true} {
		t.Run(fmt.Sprintf("createUsers=%v", create), func(t *testing.T) {
			tn, err := qliktest.New()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(tn.Close)
			oc := tn.AddClient(qliktest.OAuthClient{ID: "imp", Secret: "imp-secret"})
			admin := tn.AddAdminClient()
			for name, v := range map[string]string{"imp": oc.Secret, "admin": admin.Secret} {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, fmt.Sprintf("tenants-%v.yaml", create))
			yaml := fmt.Sprintf("tenants:\n  - id: acme\n    url: %s\n    clientId: imp\n    clientSecretFile: %s\n    userLookup: email\n    adminClientId: %s\n    adminClientSecretFile: %s\n    createUsers: %v\n",
				tn.URL(), filepath.Join(dir, "imp"), admin.ID, filepath.Join(dir, "admin"), create)
			if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			base := startServe(t, map[string]string{
				"QTB_TENANTS_FILE": path, "QTB_SESSION_HMAC_SECRET": testHMAC, "QTB_USER_CLAIM": "email",
			})
			ada := tn.AddUser(qliktest.User{Name: "Ada", Email: "ada@example.com", Status: "active"})
			sess := sessionFor(t, jwt.MapClaims{"sub": "app-1", "email": "ada@example.com"})
			code, tok := fetchToken(base, sess)
			if u, err := tn.TokenUser(tok); code != 200 || err != nil || u.ID != ada.ID {
				t.Fatalf("known email: %d %v", code, err)
			}
			lookups := tn.Calls(qliktest.EndpointUsers)
			if _, tok2 := fetchToken(base, sess); tok2 != tok || tn.Calls(qliktest.EndpointUsers) != lookups {
				t.Fatalf("the email mapping was not cached: %d users-API calls after %d", tn.Calls(qliktest.EndpointUsers), lookups)
			}

			code, body := fetchToken(base, sessionFor(t, jwt.MapClaims{"sub": "app-2", "email": "new@example.com"}))
			if !create {
				if code != 403 || !strings.Contains(body, "unknown_user") {
					t.Fatalf("unknown email without createUsers: %d %s", code, body)
				}
				return
			}
			u, err := tn.TokenUser(body)
			if code != 200 || err != nil || u.Email != "new@example.com" {
				t.Fatalf("unknown email with createUsers: %d %v %+v", code, err, u)
			}
		})
	}
}
