package qlik_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/qtb-dev/qlik-token-broker/internal/clocktest"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var start = time.Date(2024, 3, 17, 18, 21, 41, 0, time.UTC)

type fixture struct {
	tn     *qliktest.Tenant
	c      *qlik.Client
	clock  *clocktest.Clock // shared by tenant and client so expiry and Retry-After dates are exact
	creds  qlik.Credentials
	user   qliktest.User
	byID   qlik.UserLookup
	byName qlik.UserLookup
}

func newFixture(t *testing.T, opts qlik.Options, tenantOpts ...qliktest.Option) *fixture {
	t.Helper()
	clk := clocktest.New(start)
	tn, err := qliktest.New(append([]qliktest.Option{qliktest.WithClock(clk.Now)}, tenantOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	if opts.HTTPClient == nil {
		opts.HTTPClient = qlik.NewHTTPClient(5 * time.Second)
	}
	t.Cleanup(opts.HTTPClient.CloseIdleConnections)
	if opts.Now == nil {
		opts.Now = clk.Now
	}
	c, err := qlik.New(tn.URL(), opts)
	if err != nil {
		t.Fatal(err)
	}
	oc := tn.AddClient(qliktest.OAuthClient{AllowedScopes: []string{"user_default", "admin_classic"}})
	u := tn.AddUser(qliktest.User{Subject: "auth0|ada", Email: "ada@example.com", Name: "Ada"})
	return &fixture{
		tn: tn, c: c, clock: clk,
		creds:  qlik.Credentials{ClientID: oc.ID, ClientSecret: oc.Secret},
		user:   u,
		byID:   qlik.UserLookup{Field: qlik.FieldUserID, Value: u.ID},
		byName: qlik.UserLookup{Field: qlik.FieldSubject, Value: u.Subject},
	}
}

func TestTokens(t *testing.T) {
	f := newFixture(t, qlik.Options{})
	bot := "qlikbot\\" + f.creds.ClientID
	tests := []struct {
		name        string
		get         func() (*qlik.Token, error)
		wantSubject string
		wantScope   string
	}{
		{"impersonation by userId", func() (*qlik.Token, error) {
			return f.c.ImpersonationToken(t.Context(), f.creds, f.byID, "user_default")
		}, "auth0|ada", "user_default"},
		{"impersonation by subject", func() (*qlik.Token, error) {
			return f.c.ImpersonationToken(t.Context(), f.creds, f.byName, "user_default")
		}, "auth0|ada", "user_default"},
		{"impersonation, empty scope gets the allow-list", func() (*qlik.Token, error) {
			return f.c.ImpersonationToken(t.Context(), f.creds, f.byID, "")
		}, "auth0|ada", "user_default admin_classic"},
		{"impersonation narrowed", func() (*qlik.Token, error) {
			return f.c.ImpersonationToken(t.Context(), f.creds, f.byID, "admin_classic")
		}, "auth0|ada", "admin_classic"},
		{"client credentials", func() (*qlik.Token, error) {
			return f.c.ClientCredentialsToken(t.Context(), f.creds, "")
		}, bot, "user_default admin_classic"},
		{"client credentials narrowed", func() (*qlik.Token, error) {
			return f.c.ClientCredentialsToken(t.Context(), f.creds, "user_default")
		}, bot, "user_default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := tt.get()
			if err != nil {
				t.Fatal(err)
			}
			if tok.TokenType != "bearer" || tok.Scope != tt.wantScope || !tok.ExpiresAt.Equal(start.Add(6*time.Hour)) {
				t.Errorf("got %v, want scope %q expiring %s", tok, tt.wantScope, start.Add(6*time.Hour))
			}
			u, err := f.tn.TokenUser(tok.AccessToken)
			if err != nil {
				t.Fatal(err)
			}
			if u.Subject != tt.wantSubject {
				t.Errorf("token acts for %q, want %q", u.Subject, tt.wantSubject)
			}
		})
	}
	if got := f.tn.UserTokenCalls(f.user.ID); got != 4 {
		t.Errorf("UserTokenCalls = %d, want 4", got)
	}
}

func TestRevoke(t *testing.T) {
	f := newFixture(t, qlik.Options{})
	tok, err := f.c.ImpersonationToken(t.Context(), f.creds, f.byID, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.c.Revoke(t.Context(), f.creds, tok.AccessToken); err != nil {
		t.Fatal(err)
	}
	if _, err := f.tn.TokenUser(tok.AccessToken); !errors.Is(err, qliktest.ErrInvalidToken) {
		t.Errorf("token still valid after Revoke: %v", err)
	}
	if err := f.c.Revoke(t.Context(), f.creds, "unknown-token"); err != nil {
		t.Errorf("revoking an unknown token: %v", err)
	}
	bad := qlik.Credentials{ClientID: f.creds.ClientID, ClientSecret: "wrong"}
	var qe *qlik.Error
	if err := f.c.Revoke(t.Context(), bad, tok.AccessToken); !errors.As(err, &qe) || qe.StatusCode != 400 || qe.Code != "OAUTH-14" || qe.Endpoint != "revoke" {
		t.Errorf("wrong secret: %v", err)
	}
}

func TestInvalidArguments(t *testing.T) {
	f := newFixture(t, qlik.Options{})
	noSecret := qlik.Credentials{ClientID: f.creds.ClientID}
	tests := []struct {
		name string
		call func() error
	}{
		{"email lookup", func() error {
			_, err := f.c.ImpersonationToken(t.Context(), f.creds, qlik.UserLookup{Field: "email", Value: "a@b"}, "")
			return err
		}},
		{"empty lookup value", func() error {
			_, err := f.c.ImpersonationToken(t.Context(), f.creds, qlik.UserLookup{Field: qlik.FieldUserID}, "")
			return err
		}},
		{"no secret", func() error { _, err := f.c.ClientCredentialsToken(t.Context(), noSecret, ""); return err }},
		{"impersonation no secret", func() error {
			_, err := f.c.ImpersonationToken(t.Context(), noSecret, f.byID, "")
			return err
		}},
		{"revoke empty token", func() error { return f.c.Revoke(t.Context(), f.creds, "") }},
		{"revoke no secret", func() error { return f.c.Revoke(t.Context(), noSecret, "x") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, qlik.ErrInvalidRequest) {
				t.Errorf("err = %v, want ErrInvalidRequest", err)
			}
		})
	}
	if n := f.tn.Calls(qliktest.EndpointToken) + f.tn.Calls(qliktest.EndpointRevoke); n != 0 {
		t.Errorf("%d requests reached the tenant", n)
	}
}

func TestErrorStatuses(t *testing.T) {
	f := newFixture(t, qlik.Options{})
	disabled := f.tn.AddUser(qliktest.User{Subject: "auth0|off", Status: qliktest.StatusDisabled})
	httpDate := start.Add(90 * time.Second).Format(http.TimeFormat)
	tests := []struct {
		name      string
		fault     *qliktest.Fault // injected; nil means real tenant behaviour
		creds     *qlik.Credentials
		user      *qlik.UserLookup
		scope     string
		want      qlik.Error
		temporary bool
	}{
		{name: "400 scope not allowed", scope: "admin.users",
			want: qlik.Error{StatusCode: 400, Code: "OAUTH-3", Title: "Invalid scope.", Detail: "A requested scope is not allowed for this client.", Status: "400"}},
		{name: "400 wrong client (the public report's answer)", creds: &qlik.Credentials{ClientID: "x", ClientSecret: "y"},
			want: qlik.Error{StatusCode: 400, Code: "OAUTH-14", Title: "Invalid client_id", Detail: "OAuth client is not authorized", Status: "400"}},
		{name: "the public report's body verbatim", fault: &qliktest.Fault{Status: 400,
			Body: `{"errors":[{"title":"Invalid client_id","detail":"OAuth client is not authorized","code":"OAUTH-14","status":"400"}],"traceId":"0000000000000000d3a2403ffa24786d"}`},
			want: qlik.Error{StatusCode: 400, Code: "OAUTH-14", Title: "Invalid client_id", Detail: "OAuth client is not authorized", Status: "400",
				TraceID: "0000000000000000d3a2403ffa24786d"}},
		{name: "users API shape: numeric status", fault: &qliktest.Fault{Status: 409,
			Body: `{"errors":[{"code":"USERS-9","title":"Conflict","status":409}],"traceId":"abc"}`},
			want: qlik.Error{StatusCode: 409, Code: "USERS-9", Title: "Conflict", Status: "409", TraceID: "abc"}},
		{name: "traceId of an odd type is ignored", fault: &qliktest.Fault{Status: 400,
			Body: `{"errors":[{"code":"X","title":"T","status":{"a":1}}],"traceId":[1]}`},
			want: qlik.Error{StatusCode: 400, Code: "X", Title: "T"}},
		{name: "401 unknown user", user: &qlik.UserLookup{Field: qlik.FieldSubject, Value: "auth0|nobody"},
			want: qlik.Error{StatusCode: 401, Code: "OAUTH-11", Title: "Unauthorized.", Detail: "The user does not exist.", Status: "401"}},
		{name: "403 disabled user", user: &qlik.UserLookup{Field: qlik.FieldUserID, Value: disabled.ID},
			want: qlik.Error{StatusCode: 403, Code: "OAUTH-12", Title: "Forbidden.", Detail: "The user is not active.", Status: "403"}},
		{name: "403 token quota", fault: &qliktest.Fault{Status: 403,
			Body: `{"errors":[{"code":"OAUTH-12","title":"Maximum number of tokens reached.","status":"403"}]}`},
			want: qlik.Error{StatusCode: 403, Code: "OAUTH-12", Title: "Maximum number of tokens reached.", Status: "403"}},
		{name: "429 Retry-After seconds", fault: &qliktest.Fault{Status: 429, RetryAfter: "13"}, temporary: true,
			want: qlik.Error{StatusCode: 429, Code: "HTTP-429", Title: "API rate limit reached.",
				Detail: "You need to wait 13 seconds until limit is lifted.", Status: "429", RetryAfter: 13 * time.Second}},
		{name: "429 Retry-After HTTP-date", fault: &qliktest.Fault{Status: 429, RetryAfter: httpDate}, temporary: true,
			want: qlik.Error{StatusCode: 429, Code: "HTTP-429", Title: "API rate limit reached.",
				Detail: "You need to wait until limit is lifted.", Status: "429", RetryAfter: 90 * time.Second}},
		{name: "429 garbage Retry-After", fault: &qliktest.Fault{Status: 429, RetryAfter: "soon"}, temporary: true,
			want: qlik.Error{StatusCode: 429, Code: "HTTP-429", Title: "API rate limit reached.",
				Detail: "You need to wait until limit is lifted.", Status: "429"}},
		{name: "500", fault: &qliktest.Fault{Status: 500}, temporary: true,
			want: qlik.Error{StatusCode: 500, Code: "HTTP-500", Title: "Internal Server Error.", Detail: "Injected fault.", Status: "500"}},
		{name: "503 with Retry-After", fault: &qliktest.Fault{Status: 503, RetryAfter: "5"}, temporary: true,
			want: qlik.Error{StatusCode: 503, Code: "HTTP-503", Title: "Service Unavailable.", Detail: "Injected fault.", Status: "503", RetryAfter: 5 * time.Second}},
		{name: "RFC 6749 body", fault: &qliktest.Fault{Status: 400, Body: `{"error":"invalid_grant","error_description":"bad user"}`},
			want: qlik.Error{StatusCode: 400, Code: "invalid_grant", Title: "bad user"}},
		{name: "HTML body", fault: &qliktest.Fault{Status: 502, Body: `<html>Bad gateway</html>`}, temporary: true,
			want: qlik.Error{StatusCode: 502}},
		{name: "empty errors array", fault: &qliktest.Fault{Status: 400, Body: `{"errors":[]}`},
			want: qlik.Error{StatusCode: 400}},
		{name: "numeric status field", fault: &qliktest.Fault{Status: 401, Body: `{"errors":[{"code":"X","title":"T","status":401}]}`},
			want: qlik.Error{StatusCode: 401, Code: "X", Title: "T", Status: "401"}},
		{name: "3xx is not followed", fault: &qliktest.Fault{Status: 302},
			want: qlik.Error{StatusCode: 302, Code: "HTTP-302", Title: "Found.", Detail: "Injected fault.", Status: "302"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.fault != nil {
				f.tn.InjectFault(qliktest.EndpointToken, *tt.fault)
			}
			creds, user := f.creds, f.byID
			if tt.creds != nil {
				creds = *tt.creds
			}
			if tt.user != nil {
				user = *tt.user
			}
			tok, err := f.c.ImpersonationToken(t.Context(), creds, user, tt.scope)
			var qe *qlik.Error
			if !errors.As(err, &qe) {
				t.Fatalf("got %v, %v; want *qlik.Error", tok, err)
			}
			want := tt.want
			want.Endpoint = "token"
			got := *qe
			if tt.fault == nil || tt.fault.Body == "" {
				// The fake's own answer: a fresh traceId each time.
				if len(got.TraceID) != 32 || !strings.Contains(err.Error(), "traceId="+got.TraceID) {
					t.Errorf("traceId %q not parsed or not in %q", got.TraceID, err)
				}
				got.TraceID = ""
			}
			if got != want {
				t.Errorf("got  %#v\nwant %#v", got, want)
			}
			if qe.Temporary() != tt.temporary {
				t.Errorf("Temporary() = %v", qe.Temporary())
			}
			if errors.Is(err, qlik.ErrMalformedResponse) {
				t.Error("an error status must not be ErrMalformedResponse")
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  qlik.Error
		want string
	}{
		{qlik.Error{Endpoint: "token", StatusCode: 429, Code: "HTTP-429", Title: "API rate limit reached.", Detail: "wait", RetryAfter: time.Second},
			`qlik: token: 429 HTTP-429 "API rate limit reached."`},
		{qlik.Error{Endpoint: "revoke", StatusCode: 502}, `qlik: revoke: 502`},
		{qlik.Error{Endpoint: "token", StatusCode: 400, Code: "bad code\n", Title: "x"}, `qlik: token: 400 "bad code\n" "x"`},
		{qlik.Error{Endpoint: "token", StatusCode: 400, Title: strings.Repeat("é", 200)}, `qlik: token: 400 "` + strings.Repeat("é", 100) + `..."`},
		{qlik.Error{Endpoint: "token", StatusCode: 400, Title: "a" + strings.Repeat("é", 200)}, `qlik: token: 400 "a` + strings.Repeat("é", 99) + `..."`},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got  %s\nwant %s", got, tt.want)
		}
	}
}

func TestMalformedSuccess(t *testing.T) {
	const maxBody = 4096
	f := newFixture(t, qlik.Options{MaxBodyBytes: maxBody})
	valid := func(extra string) string {
		return `{"access_token":"abc","token_type":"bearer","scope":"user_default"` + extra + `}`
	}
	tests := []struct {
		name string
		body string
		ok   bool
	}{
		{"not JSON", `{"access_token":`, false},
		{"HTML", `<html></html>`, false},
		{"empty body", "", false},
		{"no access_token", `{"token_type":"bearer","expires_in":3600}`, false},
		{"no expiry", valid(""), false},
		{"expired expires_at", valid(`,"expires_at":"2024-03-17T18:21:40.000Z"`), false},
		{"expires_at is now", valid(`,"expires_at":"2024-03-17T18:21:41.000Z"`), false},
		{"zero expires_in", valid(`,"expires_in":0`), false},
		{"wrong token_type", `{"access_token":"abc","token_type":"mac","expires_in":60}`, false},
		{"oversized", valid(`,"expires_in":60,"pad":"` + strings.Repeat("x", maxBody) + `"`), false},
		{"exactly at the cap", valid(`,"expires_in":60,"pad":"` + strings.Repeat("x", maxBody-len(valid(`,"expires_in":60,"pad":""`))) + `"`), true},
		{"expires_in only", valid(`,"expires_in":60`), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 200, Body: tt.body})
			tok, err := f.c.ImpersonationToken(t.Context(), f.creds, f.byID, "")
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				if !tok.ExpiresAt.Equal(start.Add(time.Minute)) {
					t.Errorf("ExpiresAt %s", tok.ExpiresAt)
				}
				return
			}
			if !errors.Is(err, qlik.ErrMalformedResponse) {
				t.Fatalf("got %v, %v; want ErrMalformedResponse", tok, err)
			}
			if strings.Contains(err.Error(), "abc") {
				t.Errorf("error quotes the body: %v", err)
			}
		})
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	f := newFixture(t, qlik.Options{})
	// A redirect to the real tenant: following a 307 would replay the secret.
	for _, hc := range []*http.Client{nil, {}} { // default client, and a caller's client without CheckRedirect
		redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, f.tn.URL()+r.URL.Path, http.StatusTemporaryRedirect)
		}))
		c, err := qlik.New(redirector.URL, qlik.Options{HTTPClient: hc})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.ImpersonationToken(t.Context(), f.creds, f.byID, "")
		var qe *qlik.Error
		if !errors.As(err, &qe) || qe.StatusCode != http.StatusTemporaryRedirect {
			t.Errorf("err = %v, want *Error 307", err)
		}
		redirector.Close()
		if hc != nil {
			hc.CloseIdleConnections()
		}
	}
	if n := f.tn.Calls(qliktest.EndpointToken); n != 0 {
		t.Errorf("the redirect was followed: %d calls at the tenant", n)
	}
}

func TestContextAndTransportErrors(t *testing.T) {
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name    string
		fault   qliktest.Fault
		timeout time.Duration // ctx timeout; 0 means none
		client  time.Duration // NewHTTPClient timeout; 0 means the fixture's 5s
		ctx     context.Context
		check   func(error) bool
	}{
		{name: "cancelled before the call", ctx: cancelled,
			check: func(err error) bool { return errors.Is(err, context.Canceled) }},
		{name: "hanging tenant, ctx deadline", fault: qliktest.Fault{Hang: true}, timeout: 20 * time.Millisecond,
			check: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
		{name: "hanging tenant, client timeout", fault: qliktest.Fault{Hang: true}, client: 20 * time.Millisecond,
			check: func(err error) bool { var ne net.Error; return errors.As(err, &ne) && ne.Timeout() }},
		{name: "dropped connection", fault: qliktest.Fault{CloseConn: true},
			check: func(err error) bool { var qe *qlik.Error; return err != nil && !errors.As(err, &qe) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts qlik.Options
			if tt.client > 0 {
				opts.HTTPClient = qlik.NewHTTPClient(tt.client)
			}
			f := newFixture(t, opts) // a fresh tenant: an unreached fault must not leak into the next case
			if tt.fault != (qliktest.Fault{}) {
				f.tn.InjectFault(qliktest.EndpointToken, tt.fault)
			}
			ctx := tt.ctx
			if ctx == nil {
				ctx = t.Context()
			}
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			_, err := f.c.ImpersonationToken(ctx, f.creds, f.byID, "")
			if !tt.check(err) {
				t.Errorf("unexpected error %v", err)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "qlik: token: ") {
				t.Errorf("error %q lacks the qlik: token: prefix", err)
			}
		})
	}
}

func TestExpiryUsesInjectedClock(t *testing.T) {
	f := newFixture(t, qlik.Options{}, qliktest.WithTokenLifetime(time.Hour))
	f.clock.Advance(42 * time.Minute)
	tok, err := f.c.ImpersonationToken(t.Context(), f.creds, f.byID, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := start.Add(42*time.Minute + time.Hour); !tok.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt %s, want %s", tok.ExpiresAt, want)
	}
}

func TestRequestHeaders(t *testing.T) {
	var got http.Header
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		tn.ServeHTTP(w, r)
	}))
	defer srv.Close()
	oc := tn.AddClient(qliktest.OAuthClient{})
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	c, err := qlik.New(srv.URL+"/", qlik.Options{HTTPClient: hc, UserAgent: "test-agent/1"})
	if err != nil {
		t.Fatal(err)
	}
	if c.BaseURL() != srv.URL {
		t.Errorf("BaseURL %q, want %q", c.BaseURL(), srv.URL)
	}
	if _, err := c.ClientCredentialsToken(t.Context(), qlik.Credentials{ClientID: oc.ID, ClientSecret: oc.Secret}, ""); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"Accept": "application/json", "Content-Type": "application/json", "User-Agent": "test-agent/1"} {
		if got.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, got.Get(k), v)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, qlik.Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			_, err := f.c.ImpersonationToken(t.Context(), f.creds, f.byName, "user_default")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.tn.IssuedTokens(); n != 16 {
		t.Errorf("IssuedTokens = %d", n)
	}
}

func TestNewHTTPClient(t *testing.T) {
	for _, tt := range []struct{ in, want time.Duration }{{3 * time.Second, 3 * time.Second}, {0, 10 * time.Second}} {
		hc := qlik.NewHTTPClient(tt.in)
		tr, ok := hc.Transport.(*http.Transport)
		if !ok || tr == http.DefaultTransport {
			t.Fatalf("Transport %T is not a private *http.Transport", hc.Transport)
		}
		if hc.Timeout != tt.want || tr.ResponseHeaderTimeout != tt.want || tr.TLSHandshakeTimeout != 5*time.Second ||
			tr.MaxIdleConnsPerHost != 64 || hc.CheckRedirect == nil {
			t.Errorf("NewHTTPClient(%s): timeout %s, header timeout %s, TLS %s, idle/host %d",
				tt.in, hc.Timeout, tr.ResponseHeaderTimeout, tr.TLSHandshakeTimeout, tr.MaxIdleConnsPerHost)
		}
		if err := hc.CheckRedirect(nil, nil); !errors.Is(err, http.ErrUseLastResponse) {
			t.Errorf("CheckRedirect = %v", err)
		}
	}
}
