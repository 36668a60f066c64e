package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// Tests of the broker against the tenant's real dialect (qlik-api.md
// sections 1, 4 and 11): decisions by status and a checked client, never
// by error codes.

// logBuffer collects a broker's JSON logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// refusalRecorder remembers the traceIds of the tenant's refusals.
type refusalRecorder struct {
	broker.Issuer
	mu     sync.Mutex
	traces []string
}

func (r *refusalRecorder) note(err error) {
	var qe *qlik.Error
	if errors.As(err, &qe) {
		r.mu.Lock()
		r.traces = append(r.traces, qe.TraceID)
		r.mu.Unlock()
	}
}

func (r *refusalRecorder) ImpersonationToken(ctx context.Context, creds qlik.Credentials, user qlik.UserLookup, scope string) (*qlik.Token, error) {
	tok, err := r.Issuer.ImpersonationToken(ctx, creds, user, scope)
	r.note(err)
	return tok, err
}

func (r *refusalRecorder) ClientCredentialsToken(ctx context.Context, creds qlik.Credentials, scope string) (*qlik.Token, error) {
	tok, err := r.Issuer.ClientCredentialsToken(ctx, creds, scope)
	r.note(err)
	return tok, err
}

func (r *refusalRecorder) first() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.traces) == 0 {
		return ""
	}
	return r.traces[0]
}

// TestBadSecretAsARealTenantAnswers: the tenant refuses the broker's secret
// as a real one does (400 OAUTH-14 "Invalid client_id", or 401 in the
// schema's reading). The caller gets 502 upstream_misconfigured, the log
// carries the tenant's traceId and no secret, the invalid-credentials
// metric (which the alert reads) rises, and a wrong secret cannot storm
// the tenant: two token calls (the request and one credentials check),
// then none for 30 seconds, whatever the traffic. Once the secret file is
// fixed, the next request succeeds without a restart.
func TestBadSecretAsARealTenantAnswers(t *testing.T) {
	for _, status := range []int{400, 401} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "client-secret")
			if err := os.WriteFile(path, []byte("secret-1\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			logs := &logBuffer{}
			var rec *refusalRecorder
			e := newEnv(t, envOptions{
				logs:      logs,
				tenantOpt: []qliktest.Option{qliktest.WithClientAuthFailureStatus(status)},
				issuer:    func(i broker.Issuer) broker.Issuer { rec = &refusalRecorder{Issuer: i}; return rec },
				tune: func(c *broker.Config) {
					c.Tenants[0].ReloadSecret = func() (string, error) {
						raw, err := os.ReadFile(path)
						return strings.TrimSpace(string(raw)), err
					}
				},
			})
			invalid := func() float64 {
				return testutil.ToFloat64(e.metrics.UpstreamInvalidCredentials.WithLabelValues("acme"))
			}
			e.tenant.SetClientSecret("client-1", "secret-2") // rotated at the tenant, not on disk

			users := make([]qliktest.User, 41)
			for i := range users {
				users[i] = e.addUser(fmt.Sprintf("u%02d", i))
			}
			resp, body := e.do("GET", "/v1/token", e.session(users[0].ID), nil)
			if resp.StatusCode != 502 || decodeErrorBody(t, body).Error != "upstream_misconfigured" {
				t.Fatalf("bad secret: %d %s", resp.StatusCode, body)
			}
			trace := rec.first()
			if len(trace) != 32 || !strings.Contains(logs.String(), `"trace_id":"`+trace+`"`) {
				t.Fatalf("the tenant's traceId %q is not in the log:\n%s", trace, logs.String())
			}
			if strings.Contains(logs.String(), "secret-1") || strings.Contains(logs.String(), "secret-2") {
				t.Fatal("a secret reached the log")
			}
			if invalid() != 1 {
				t.Fatalf("invalid credentials counted %v times", invalid())
			}

			// 20 more users one after another, then 20 at once: refused
			// without asking the tenant.
			for _, u := range users[1:21] {
				if resp, _ := e.do("GET", "/v1/token", e.session(u.ID), nil); resp.StatusCode != 502 {
					t.Fatalf("during the quiet period: %d", resp.StatusCode)
				}
			}
			var wg sync.WaitGroup
			for _, u := range users[21:] {
				wg.Go(func() {
					resp, _ := e.do("GET", "/v1/token", e.session(u.ID), nil)
					if resp.StatusCode != 502 {
						t.Errorf("concurrent request during the quiet period: %d", resp.StatusCode)
					}
				})
			}
			wg.Wait()
			calls := e.tenant.Calls(qliktest.EndpointToken)
			t.Logf("41 requests with a refused secret: %d token calls, invalid_credentials_total %v", calls, invalid())
			if calls != 2 {
				t.Fatalf("token calls %d for 41 requests, want 2 (the request and one credentials check)", calls)
			}

			// After the quiet period one request asks again (the secret may
			// have been fixed at the tenant's side).
			e.clock.Advance(31 * time.Second)
			if resp, _ := e.do("GET", "/v1/token", e.session(users[1].ID), nil); resp.StatusCode != 502 {
				t.Fatalf("after the quiet period: %d", resp.StatusCode)
			}
			if n := e.tenant.Calls(qliktest.EndpointToken); n != 4 || invalid() != 2 {
				t.Fatalf("after the quiet period: %d token calls, metric %v; want 4 and 2", n, invalid())
			}

			// The secret file is rewritten (Kubernetes updates the mount).
			if err := os.WriteFile(path, []byte("secret-2\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			resp, body = e.do("GET", "/v1/token", e.session(users[2].ID), nil)
			if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != users[2].ID {
				t.Fatalf("after fixing the secret file: %d %s", resp.StatusCode, body)
			}
			t.Logf("after fixing the file: served, %d token calls in all", e.tenant.Calls(qliktest.EndpointToken))
		})
	}
}

// emailEnv is a broker whose tenant maps session emails through the users
// API, with Redis shared.
func emailEnv(t *testing.T, createUsers bool, logs *logBuffer) *env {
	t.Helper()
	tn, err := qliktest.New(qliktest.WithClock(newClock().Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	tn.AddClient(qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"})
	// An admin client with the narrower of the two scopes the users API
	// takes.
	admin := tn.AddClient(qliktest.OAuthClient{AllowedGrants: []string{"client_credentials"}, AllowedScopes: []string{broker.AdminScopeUsers}})
	o := envOptions{tenant: tn, shared: newRedisStore(t), tune: func(c *broker.Config) {
		qc, err := qlik.New(tn.URL(), qlik.Options{Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		c.Tenants[0].UserLookup = "email"
		c.Tenants[0].Directory = &broker.QlikDirectory{Client: qc, Now: c.Now, CreateUsers: createUsers,
			Admin: qlik.Credentials{ClientID: admin.ID, ClientSecret: admin.Secret}, AdminScope: broker.AdminScopeUsers}
	}}
	if logs != nil {
		o.logs = logs
	}
	return newEnv(t, o)
}

// TestDisabledUser: a disabled user gets 403 whichever way the session
// names them: by id the tenant refuses the token (user_forbidden), by
// email the lookup finds no active user (unknown_user).
func TestDisabledUser(t *testing.T) {
	e := emailEnv(t, false, nil)
	off := e.tenant.AddUser(qliktest.User{Name: "Off", Subject: "idp|off", Email: "off@example.com", Status: qliktest.StatusDisabled})
	resp, body := e.do("GET", "/v1/token", e.session("off@example.com"), nil)
	if resp.StatusCode != 403 || decodeErrorBody(t, body).Error != "unknown_user" {
		t.Fatalf("disabled user by email: %d %s", resp.StatusCode, body)
	}
	t.Logf("disabled user by email: %d %s", resp.StatusCode, body)

	byID := newEnv(t, envOptions{})
	off = byID.tenant.AddUser(qliktest.User{Name: "Off", Subject: "idp|off", Email: "off@example.com", Status: qliktest.StatusDisabled})
	resp, body = byID.do("GET", "/v1/token", byID.session(off.ID), nil)
	if resp.StatusCode != 403 || decodeErrorBody(t, body).Error != "user_forbidden" {
		t.Fatalf("disabled user by id: %d %s", resp.StatusCode, body)
	}
	t.Logf("disabled user by id: %d %s (token calls %d)", resp.StatusCode, body, byID.tenant.Calls(qliktest.EndpointToken))
}

// TestEmailSharedByDeletedAndActive: the email lookup matches active users
// only, so an email shared by a deleted and an active user maps to the
// active one (and the mapping is cached in Redis).
func TestEmailSharedByDeletedAndActive(t *testing.T) {
	e := emailEnv(t, false, nil)
	e.tenant.AddUser(qliktest.User{Name: "Ada (old)", Subject: "idp|ada-old", Email: "ada@example.com", Status: qliktest.StatusDeleted})
	ada := e.tenant.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Email: "Ada@Example.com"})
	e.tenant.AddUser(qliktest.User{Name: "Ada (off)", Subject: "idp|ada-off", Email: "ada@example.com", Status: qliktest.StatusDisabled})
	resp, body := e.do("GET", "/v1/token", e.session("ada@example.com"), nil)
	if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != ada.ID {
		t.Fatalf("shared email: %d %s", resp.StatusCode, body)
	}
	t.Logf("email shared by a deleted, a disabled and an active user: served as %s after %d users call(s)", ada.ID, e.tenant.Calls(qliktest.EndpointUsers))
}

// TestJITConflict: just-in-time creation that meets a 409 (the subject was
// created meanwhile, e.g. by another replica) looks the subject up and uses
// it when its email matches; when it does not, the session gets a clear
// 403 and the log says why. A created user's subject is namespaced.
func TestJITConflict(t *testing.T) {
	logs := &logBuffer{}
	e := emailEnv(t, true, logs)
	empty := qliktest.Fault{Status: 200, Body: `{"data":[],"links":{"self":{"href":"x"}}}`}

	// Plain creation: the subject is the prefix and the email.
	resp, body := e.do("GET", "/v1/token", e.session("new@example.com"), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	created, err := e.tenant.TokenUser(decodeTokenBody(t, body).AccessToken)
	if err != nil || created.Subject != broker.DefaultJITSubjectPrefix+"new@example.com" || created.Status != qliktest.StatusActive {
		t.Fatalf("created %+v, %v", created, err)
	}

	// Another replica created grace a moment ago: both lookups saw
	// nobody, the create answers 409.
	grace := e.tenant.AddUser(qliktest.User{Name: "Grace", Subject: "qtb-jit|grace@example.com", Email: "grace@example.com"})
	e.tenant.InjectFault(qliktest.EndpointUsers, empty, empty)
	writes := e.tenant.WriteCalls()
	resp, body = e.do("GET", "/v1/token", e.session("grace@example.com"), nil)
	if resp.StatusCode != 200 || e.tokenUser(decodeTokenBody(t, body).AccessToken) != grace.ID {
		t.Fatalf("409 recovery: %d %s", resp.StatusCode, body)
	}
	if n := e.tenant.WriteCalls() - writes; n != 1 {
		t.Fatalf("%d create calls, want the one answered 409", n)
	}
	t.Logf("JIT 409 recovered: served as the existing %s", grace.ID)

	// The subject belongs to a user with another email: a clear refusal.
	e.tenant.AddUser(qliktest.User{Name: "Mallory", Subject: "qtb-jit|eve@example.com", Email: "mallory@example.com"})
	e.tenant.InjectFault(qliktest.EndpointUsers, empty, empty)
	resp, body = e.do("GET", "/v1/token", e.session("eve@example.com"), nil)
	if resp.StatusCode != 403 || decodeErrorBody(t, body).Error != "unknown_user" {
		t.Fatalf("409 with another email: %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(logs.String(), "whose email differs") {
		t.Fatalf("the log does not say why:\n%s", logs.String())
	}

	// A disabled user with the email is not stepped around.
	e.tenant.AddUser(qliktest.User{Name: "Off", Subject: "idp|off", Email: "off@example.com", Status: qliktest.StatusDisabled})
	if resp, body := e.do("GET", "/v1/token", e.session("off@example.com"), nil); resp.StatusCode != 403 {
		t.Fatalf("disabled twin: %d %s", resp.StatusCode, body)
	}
}

// TestWrongExpiresAt: a token whose expires_at is wrong (1970, as in the
// reference's own example) but whose expires_in is fine is served with
// the expires_in lifetime; the disagreement is logged once per tenant.
func TestWrongExpiresAt(t *testing.T) {
	logs := &logBuffer{}
	e := newEnv(t, envOptions{logs: logs})
	body := `{"access_token":"%s","token_type":"bearer","scope":"user_default","expires_at":"1970-01-01T00:00:00.000Z","expires_in":21600}`
	e.tenant.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 200, Body: fmt.Sprintf(body, "tok-a")},
		qliktest.Fault{Status: 200, Body: fmt.Sprintf(body, "tok-b")})
	for i, user := range []string{"a", "b"} {
		resp, raw := e.do("GET", "/v1/token", e.session(user), nil)
		tb := decodeTokenBody(t, raw)
		if resp.StatusCode != 200 || tb.AccessToken != "tok-"+user {
			t.Fatalf("token %d: %d %s", i, resp.StatusCode, raw)
		}
		want := e.clock.Now().Add(6 * time.Hour)
		exp, err := time.Parse(time.RFC3339, tb.ExpiresAt)
		if err != nil || exp.Sub(want).Abs() > 2*time.Minute || tb.ExpiresIn < 21600-120 || tb.ExpiresIn > 21600 {
			t.Fatalf("token %d: expires_at %s expires_in %d, want about %s and 21600", i, tb.ExpiresAt, tb.ExpiresIn, want.Format(time.RFC3339))
		}
		t.Logf("token %d served: expires_at %s, expires_in %d", i, tb.ExpiresAt, tb.ExpiresIn)
	}
	if n := strings.Count(logs.String(), "expiry fields disagree"); n != 1 {
		t.Fatalf("the disagreement was logged %d times, want once:\n%s", n, logs.String())
	}
}

// TestUpstreamFailureLogsTraceID: any failed call to the tenant is logged
// with the traceId of the tenant's answer, which Qlik support asks for.
func TestUpstreamFailureLogsTraceID(t *testing.T) {
	logs := &logBuffer{}
	var rec *refusalRecorder
	e := newEnv(t, envOptions{logs: logs, issuer: func(i broker.Issuer) broker.Issuer { rec = &refusalRecorder{Issuer: i}; return rec },
		tune: func(c *broker.Config) { c.Upstream.Retries = 0 }})
	ada := e.addUser("Ada")
	e.tenant.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 503})
	resp, body := e.do("GET", "/v1/token", e.session(ada.ID), nil)
	if resp.StatusCode != 502 {
		t.Fatalf("503 upstream: %d %s", resp.StatusCode, body)
	}
	trace := rec.first()
	if trace == "" || !strings.Contains(logs.String(), "traceId="+trace) {
		t.Fatalf("the traceId %q of the tenant's 503 is not in the log:\n%s", trace, logs.String())
	}
	if strings.Contains(string(body), trace) {
		t.Errorf("the caller was shown upstream detail: %s", body)
	}
}
