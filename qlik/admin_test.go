package qlik_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// adminFixture is a fixture plus an admin token from a client made by
// AddAdminClient, and the admin APIs called with it.
type adminFixture struct {
	*fixture
	admin  qliktest.OAuthClient
	bearer string
	api    *qlik.Admin
}

func newAdminFixture(t *testing.T) *adminFixture {
	t.Helper()
	f := newFixture(t, qlik.Options{})
	admin := f.tn.AddAdminClient()
	tok, err := f.c.ClientCredentialsToken(t.Context(), qlik.Credentials{ClientID: admin.ID, ClientSecret: admin.Secret}, "admin_classic")
	if err != nil {
		t.Fatal(err)
	}
	return &adminFixture{fixture: f, admin: admin, bearer: tok.AccessToken, api: adminWith(f.c, tok.AccessToken)}
}

// adminWith returns c's admin APIs called with bearer, whatever it holds.
func adminWith(c *qlik.Client, bearer string) *qlik.Admin {
	return c.Admin(qlik.StaticTokenSource(&qlik.Token{AccessToken: bearer}))
}

// wantQlikError checks err is an *Error from endpoint with status.
func wantQlikError(t *testing.T, err error, endpoint string, status int) {
	t.Helper()
	var qe *qlik.Error
	if !errors.As(err, &qe) || qe.Endpoint != endpoint || qe.StatusCode != status {
		t.Fatalf("err = %v, want *qlik.Error %s %d", err, endpoint, status)
	}
}

func TestFindUsers(t *testing.T) {
	f := newAdminFixture(t)
	odd := f.tn.AddUser(qliktest.User{Subject: `idp|"q"\b`, Email: `we"ird\@example.com`, Name: "Odd"})
	f.tn.AddUser(qliktest.User{Subject: "auth0|twin1", Email: "twin@example.com"})
	f.tn.AddUser(qliktest.User{Subject: "auth0|twin2", Email: "twin@example.com"})
	ada := qlik.User{ID: f.user.ID, Subject: f.user.Subject, Email: f.user.Email, Name: f.user.Name, Status: "active"}
	oddWant := qlik.User{ID: odd.ID, Subject: odd.Subject, Email: odd.Email, Name: odd.Name, Status: "active"}

	tests := []struct {
		name    string
		find    func() (qlik.User, error)
		want    qlik.User
		wantErr error
	}{
		{"by email", func() (qlik.User, error) { return f.api.FindUserByEmail(t.Context(), "ada@example.com") }, ada, nil},
		{"by email, other case", func() (qlik.User, error) { return f.api.FindUserByEmail(t.Context(), "ADA@Example.com") }, ada, nil},
		{"by subject", func() (qlik.User, error) { return f.api.FindUserBySubject(t.Context(), "auth0|ada") }, ada, nil},
		{"email with quote and backslash", func() (qlik.User, error) {
			return f.api.FindUserByEmail(t.Context(), `we"ird\@example.com`)
		}, oddWant, nil},
		{"subject with quote and backslash", func() (qlik.User, error) { return f.api.FindUserBySubject(t.Context(), `idp|"q"\b`) }, oddWant, nil},
		{"injection is a literal", func() (qlik.User, error) {
			return f.api.FindUserByEmail(t.Context(), `" or email co "`)
		}, qlik.User{}, qlik.ErrUserNotFound},
		{"not found", func() (qlik.User, error) { return f.api.FindUserByEmail(t.Context(), "nobody@example.com") }, qlik.User{}, qlik.ErrUserNotFound},
		{"ambiguous", func() (qlik.User, error) { return f.api.FindUserByEmail(t.Context(), "twin@example.com") }, qlik.User{}, qlik.ErrAmbiguousUser},
		{"empty email", func() (qlik.User, error) { return f.api.FindUserByEmail(t.Context(), "") }, qlik.User{}, qlik.ErrInvalidRequest},
		{"empty subject", func() (qlik.User, error) { return f.api.FindUserBySubject(t.Context(), "") }, qlik.User{}, qlik.ErrInvalidRequest},
		{"no bearer", func() (qlik.User, error) { return adminWith(f.c, " ").FindUserByEmail(t.Context(), "ada@example.com") }, qlik.User{}, qlik.ErrInvalidRequest},
		{"bearer with newline", func() (qlik.User, error) {
			return adminWith(f.c, "a\nb").FindUserByEmail(t.Context(), "ada@example.com")
		}, qlik.User{}, qlik.ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.find()
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Errorf("got %+v, %v; want %+v, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}

	all, err := f.api.FindUsers(t.Context(), `email co "example.com" and (status eq "active")`)
	if err != nil || len(all) != 4 {
		t.Errorf("FindUsers = %d users, %v", len(all), err)
	}
	_, err = f.api.FindUsers(t.Context(), `email gt "a"`)
	wantQlikError(t, err, "users", 400)
}

func TestQuoteFilterValue(t *testing.T) {
	for in, want := range map[string]string{
		"ada@example.com": `"ada@example.com"`,
		`a"b`:             `"a\"b"`,
		`a\b`:             `"a\\b"`,
		"<tab>\t":         `"<tab>\t"`,
		"":                `""`,
	} {
		if got := qlik.QuoteFilterValue(in); got != want {
			t.Errorf("QuoteFilterValue(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestFindUsersPaginates(t *testing.T) {
	f := newAdminFixture(t)
	for i := range 250 {
		f.tn.AddUser(qliktest.User{Subject: fmt.Sprintf("bulk|%03d", i), Email: fmt.Sprintf("bulk%03d@example.com", i)})
	}
	f.tn.ResetCounters()
	users, err := f.api.FindUsers(t.Context(), `subject co "bulk|"`)
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 250 || users[0].Subject != "bulk|000" || users[249].Subject != "bulk|249" {
		t.Fatalf("got %d users", len(users))
	}
	seen := map[string]bool{}
	for _, u := range users {
		if seen[u.ID] {
			t.Fatalf("user %s twice", u.ID)
		}
		seen[u.ID] = true
	}
	if n := f.tn.Calls(qliktest.EndpointUsers); n != 3 {
		t.Errorf("%d pages fetched, want 3 of 100", n)
	}
	everyone, err := f.api.FindUsers(t.Context(), "")
	if err != nil || len(everyone) != 252 { // + ada + the admin's bot user
		t.Errorf("FindUsers(\"\") = %d, %v", len(everyone), err)
	}
}

func TestCreateUserAndMe(t *testing.T) {
	f := newAdminFixture(t)
	u, err := f.api.CreateUser(t.Context(), qlik.UserCreate{Name: "Grace", Email: "grace@example.com", Subject: "auth0|grace", Status: qlik.UserActive})
	if err != nil {
		t.Fatal(err)
	}
	if u.ID == "" || u.Subject != "auth0|grace" || u.Email != "grace@example.com" || u.Name != "Grace" || u.Status != "active" {
		t.Fatalf("created %+v", u)
	}
	tok, err := f.c.ImpersonationToken(t.Context(), f.creds, qlik.UserLookup{Field: qlik.FieldUserID, Value: u.ID}, "")
	if err != nil {
		t.Fatal(err)
	}
	me, err := adminWith(f.c, tok.AccessToken).Me(t.Context())
	if err != nil || me != u {
		t.Errorf("Me = %+v, %v; want %+v", me, err, u)
	}
	bot, err := f.api.Me(t.Context())
	if err != nil || bot.Subject != `qlikbot\`+f.admin.ID {
		t.Errorf("Me(admin) = %+v, %v", bot, err)
	}

	_, err = f.api.CreateUser(t.Context(), qlik.UserCreate{Subject: "auth0|grace"})
	wantQlikError(t, err, "users", 409)
	_, err = f.api.CreateUser(t.Context(), qlik.UserCreate{Subject: "auth0|x", Status: "deleted"})
	wantQlikError(t, err, "users", 400)
	if _, err := f.api.CreateUser(t.Context(), qlik.UserCreate{Email: "x@example.com"}); !errors.Is(err, qlik.ErrInvalidRequest) {
		t.Errorf("no subject: %v", err)
	}
	_, err = adminWith(f.c, "abc.def.ghi").Me(t.Context())
	wantQlikError(t, err, "users-me", 401)
	f.tn.RevokeToken(tok.AccessToken)
	_, err = adminWith(f.c, tok.AccessToken).Me(t.Context())
	wantQlikError(t, err, "users-me", 401)
}

func TestAdminCallsNeedAdminScope(t *testing.T) {
	f := newAdminFixture(t)
	userTok, err := f.c.ClientCredentialsToken(t.Context(), f.creds, "user_default")
	if err != nil {
		t.Fatal(err)
	}
	id := f.creds.ClientID
	calls := []struct {
		name, endpoint string
		call           func(bearer string) error
	}{
		{"FindUsers", "users", func(b string) error { _, err := adminWith(f.c, b).FindUsers(t.Context(), ""); return err }},
		{"CreateUser", "users", func(b string) error {
			_, err := adminWith(f.c, b).CreateUser(t.Context(), qlik.UserCreate{Subject: "auth0|s"})
			return err
		}},
		{"ListOAuthClients", "oauth-clients", func(b string) error {
			_, err := adminWith(f.c, b).ListOAuthClients(t.Context(), qlik.ListOptions{})
			return err
		}},
		{"GetOAuthClient", "oauth-clients", func(b string) error { _, err := adminWith(f.c, b).GetOAuthClient(t.Context(), id); return err }},
		{"CreateOAuthClient", "oauth-clients", func(b string) error {
			_, err := adminWith(f.c, b).CreateOAuthClient(t.Context(), qlik.OAuthClientCreate{AppType: "web", ClientName: "n"})
			return err
		}},
		{"UpdateOAuthClient", "oauth-clients", func(b string) error {
			_, err := adminWith(f.c, b).UpdateOAuthClient(t.Context(), id, []qlik.PatchOp{{Op: "remove", Path: "/description"}})
			return err
		}},
		{"DeleteOAuthClient", "oauth-clients", func(b string) error { return adminWith(f.c, b).DeleteOAuthClient(t.Context(), id) }},
		{"CreateClientSecret", "oauth-client-secrets", func(b string) error {
			_, err := adminWith(f.c, b).CreateClientSecret(t.Context(), id)
			return err
		}},
		{"DeleteClientSecret", "oauth-client-secrets", func(b string) error { return adminWith(f.c, b).DeleteClientSecret(t.Context(), id, "h") }},
		{"GetConsent", "oauth-client-consent", func(b string) error { _, err := adminWith(f.c, b).GetConsent(t.Context(), id); return err }},
		{"SetConsent", "oauth-client-consent", func(b string) error { return adminWith(f.c, b).SetConsent(t.Context(), id, qlik.ConsentTrusted) }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			err := c.call(userTok.AccessToken)
			wantQlikError(t, err, c.endpoint, 403)
			if strings.Contains(err.Error(), userTok.AccessToken) {
				t.Error("error shows the bearer token")
			}
			wantQlikError(t, c.call("not-a-token"), c.endpoint, 401)
			if err := c.call(""); !errors.Is(err, qlik.ErrInvalidRequest) {
				t.Errorf("empty bearer: %v", err)
			}
		})
	}
	if n := f.tn.WriteCalls(); n != 7*2 {
		t.Errorf("WriteCalls = %d; refused writes still count as calls", n)
	}
	if _, ok := f.tn.OAuthClient(id); !ok {
		t.Error("a refused delete deleted")
	}
}

// TestProvisionImpersonationClient walks the contract's M2M recipe: create,
// trust, impersonate; then secrets, update and delete.
func TestProvisionImpersonationClient(t *testing.T) {
	f := newAdminFixture(t)
	ctx := t.Context()
	f.tn.ResetCounters()
	oc, err := f.api.CreateOAuthClient(ctx, qlik.OAuthClientCreate{
		AppType:           qlik.AppTypeWeb,
		ClientName:        "broker m2m",
		Description:       "qlik-token-broker",
		AllowedGrantTypes: []string{qlik.GrantClientCredentials, qlik.GrantImpersonation},
		AllowedScopes:     []string{"user_default"},
		AllowedOrigins:    []string{"https://app.example.com"},
		RedirectURIs:      []string{"https://app.example.com/cb"},
		ClientURI:         "https://app.example.com",
		LogoURI:           "https://app.example.com/logo.png",
	})
	if err != nil {
		t.Fatal(err)
	}
	bot, _ := f.tn.TokenUser(f.bearer)
	if oc.ClientID == "" || oc.ClientSecret == "" || oc.ClientSecretHint == "" || oc.AppType != "web" ||
		oc.ClientName != "broker m2m" || oc.Description != "qlik-token-broker" || oc.OwnerID != bot.ID ||
		!oc.CreatedAt.Equal(start) || oc.ConsentMethod != qlik.ConsentRequired || oc.ClientURI == "" || oc.LogoURI == "" ||
		!slices.Equal(oc.AllowedGrantTypes, []string{qlik.GrantClientCredentials, qlik.GrantImpersonation}) ||
		!slices.Equal(oc.RedirectURIs, []string{"https://app.example.com/cb"}) {
		t.Fatalf("created %#v", oc)
	}
	if n := f.tn.WriteCalls(); n != 1 {
		t.Errorf("WriteCalls = %d after create", n)
	}

	// Impersonation fails until consent is trusted.
	_, err = f.c.ImpersonationToken(ctx, oc.Credentials(), f.byID, "")
	var qe *qlik.Error
	if !errors.As(err, &qe) || qe.StatusCode != 400 {
		t.Fatalf("untrusted impersonation: %v", err)
	}
	if m, err := f.api.GetConsent(ctx, oc.ClientID); err != nil || m != qlik.ConsentRequired {
		t.Fatalf("GetConsent = %q, %v", m, err)
	}
	if err := f.api.SetConsent(ctx, oc.ClientID, qlik.ConsentTrusted); err != nil {
		t.Fatal(err)
	}
	if m, err := f.api.GetConsent(ctx, oc.ClientID); err != nil || m != qlik.ConsentTrusted {
		t.Fatalf("GetConsent = %q, %v", m, err)
	}
	tok, err := f.c.ImpersonationToken(ctx, oc.Credentials(), f.byID, "")
	if err != nil {
		t.Fatal(err)
	}
	if u, err := f.tn.TokenUser(tok.AccessToken); err != nil || u.ID != f.user.ID {
		t.Errorf("token acts for %+v, %v", u, err)
	}

	got, err := f.api.GetOAuthClient(ctx, oc.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ClientSecret != "" || got.ClientID != oc.ClientID || got.ConsentMethod != qlik.ConsentTrusted ||
		got.ClientSecretHint != oc.ClientSecretHint || !slices.Equal(got.AllowedOrigins, oc.AllowedOrigins) {
		t.Errorf("GetOAuthClient = %#v", got)
	}

	// Update: 204 gives no secret.
	secret, err := f.api.UpdateOAuthClient(ctx, oc.ClientID, []qlik.PatchOp{
		{Op: "add", Path: "/allowedOrigins", Value: "https://b.example.com"},
		{Op: "replace", Path: "/description", Value: ""},
		{Op: "remove", Path: "/logoUri"},
	})
	if err != nil || secret != "" {
		t.Fatalf("UpdateOAuthClient = %q, %v", secret, err)
	}
	got, _ = f.api.GetOAuthClient(ctx, oc.ClientID)
	if !slices.Equal(got.AllowedOrigins, []string{"https://app.example.com", "https://b.example.com"}) || got.Description != "" || got.LogoURI != "" {
		t.Errorf("after update %#v", got)
	}
	_, err = f.api.UpdateOAuthClient(ctx, oc.ClientID, []qlik.PatchOp{{Op: "replace", Path: "/appType", Value: "spa"}})
	wantQlikError(t, err, "oauth-clients", 400)
	_, err = f.api.UpdateOAuthClient(ctx, "nope", []qlik.PatchOp{{Op: "remove", Path: "/description"}})
	wantQlikError(t, err, "oauth-clients", 404)

	// Secrets: rotate in a new one, delete the original by its hint.
	ns, err := f.api.CreateClientSecret(ctx, oc.ClientID)
	if err != nil || ns.ClientID != oc.ClientID || ns.ClientSecret == "" || ns.Hint == "" || !ns.CreatedAt.Equal(start) {
		t.Fatalf("CreateClientSecret = %#v, %v", ns, err)
	}
	if err := f.api.DeleteClientSecret(ctx, oc.ClientID, oc.ClientSecretHint); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.ClientCredentialsToken(ctx, oc.Credentials(), ""); err == nil {
		t.Error("the deleted secret still authenticates")
	}
	if _, err := f.c.ClientCredentialsToken(ctx, ns.Credentials(), ""); err != nil {
		t.Errorf("the new secret: %v", err)
	}
	wantQlikError(t, f.api.DeleteClientSecret(ctx, oc.ClientID, oc.ClientSecretHint), "oauth-client-secrets", 404)
	for range 4 {
		if _, err := f.api.CreateClientSecret(ctx, oc.ClientID); err != nil {
			t.Fatal(err)
		}
	}
	_, err = f.api.CreateClientSecret(ctx, oc.ClientID)
	wantQlikError(t, err, "oauth-client-secrets", 409)

	// Delete sends qlik-confirm-delete, or the fake would answer 400.
	if err := f.api.DeleteOAuthClient(ctx, oc.ClientID); err != nil {
		t.Fatal(err)
	}
	_, err = f.api.GetOAuthClient(ctx, oc.ClientID)
	wantQlikError(t, err, "oauth-clients", 404)
	wantQlikError(t, f.api.DeleteOAuthClient(ctx, oc.ClientID), "oauth-clients", 404)
	_, err = f.api.GetConsent(ctx, oc.ClientID)
	wantQlikError(t, err, "oauth-client-consent", 404)
	wantQlikError(t, f.api.SetConsent(ctx, oc.ClientID, qlik.ConsentTrusted), "oauth-client-consent", 404)
}

func TestCreateOAuthClientVariants(t *testing.T) {
	f := newAdminFixture(t)
	ctx := t.Context()
	trusted, err := f.api.CreateOAuthClient(ctx, qlik.OAuthClientCreate{
		AppType: qlik.AppTypeWeb, ClientName: "trusted at birth", ConsentMethod: qlik.ConsentTrusted,
		AllowedGrantTypes: []string{qlik.GrantImpersonation},
	})
	if err != nil || trusted.ConsentMethod != qlik.ConsentTrusted {
		t.Fatalf("%#v, %v", trusted, err)
	}
	if _, err := f.c.ImpersonationToken(ctx, trusted.Credentials(), f.byName, ""); err != nil {
		t.Errorf("impersonation through a client trusted at creation: %v", err)
	}

	keyed, err := f.api.CreateOAuthClient(ctx, qlik.OAuthClientCreate{
		AppType: qlik.AppTypeWeb, ClientName: "keyed", AllowedAuthMethods: []string{"private_key_jwt"},
		AllowedGrantTypes: []string{qlik.GrantClientCredentials},
	})
	if err != nil || keyed.ClientSecret != "" {
		t.Fatalf("%#v, %v", keyed, err)
	}
	// Adding client_secret makes one: 202 with the secret.
	secret, err := f.api.UpdateOAuthClient(ctx, keyed.ClientID, []qlik.PatchOp{
		{Op: "replace", Path: "/allowedAuthMethods", Value: []string{"private_key_jwt", "client_secret"}},
	})
	if err != nil || secret == "" {
		t.Fatalf("UpdateOAuthClient = %q, %v", secret, err)
	}
	if _, err := f.c.ClientCredentialsToken(ctx, qlik.Credentials{ClientID: keyed.ClientID, ClientSecret: secret}, ""); err != nil {
		t.Errorf("secret from 202: %v", err)
	}

	bad := []struct {
		name   string
		create qlik.OAuthClientCreate
		local  bool // refused before sending
	}{
		{"no appType", qlik.OAuthClientCreate{ClientName: "x"}, true},
		{"no clientName", qlik.OAuthClientCreate{AppType: "web"}, true},
		{"bad appType", qlik.OAuthClientCreate{AppType: "desktop", ClientName: "x"}, false},
		{"grants on spa", qlik.OAuthClientCreate{AppType: "spa", ClientName: "x", AllowedGrantTypes: []string{qlik.GrantClientCredentials}}, false},
		{"unknown grant", qlik.OAuthClientCreate{AppType: "web", ClientName: "x", AllowedGrantTypes: []string{"password"}}, false},
		{"unknown scope", qlik.OAuthClientCreate{AppType: "web", ClientName: "x", AllowedScopes: []string{"everything"}}, false},
		{"origin with path", qlik.OAuthClientCreate{AppType: "web", ClientName: "x", AllowedOrigins: []string{"https://a.example.com/x"}}, false},
		{"consent not trusted", qlik.OAuthClientCreate{AppType: "web", ClientName: "x", ConsentMethod: "always"}, false},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.api.CreateOAuthClient(ctx, tt.create)
			if tt.local {
				if !errors.Is(err, qlik.ErrInvalidRequest) {
					t.Errorf("err = %v, want ErrInvalidRequest", err)
				}
				return
			}
			wantQlikError(t, err, "oauth-clients", 400)
		})
	}
}

func TestListOAuthClients(t *testing.T) {
	f := newAdminFixture(t)
	ctx := t.Context()
	var made []string
	for i := range 7 {
		oc, err := f.api.CreateOAuthClient(ctx, qlik.OAuthClientCreate{AppType: "web", ClientName: fmt.Sprintf("batch %d", i)})
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, oc.ClientID)
	}
	if _, err := f.api.CreateOAuthClient(ctx, qlik.OAuthClientCreate{AppType: "spa", ClientName: `q"uote\d`}); err != nil {
		t.Fatal(err)
	}
	names := func(cs []qlik.OAuthClient) []string {
		var n []string
		for _, c := range cs {
			n = append(n, c.ClientName)
			if c.ClientSecret != "" {
				t.Errorf("list shows a secret for %s", c.ClientName)
			}
		}
		return n
	}
	tests := []struct {
		name      string
		opts      qlik.ListOptions
		want      []string
		wantPages int
	}{
		{"all, default page", qlik.ListOptions{}, nil, 1},
		{"filter across pages of 2", qlik.ListOptions{Limit: 2, Filter: `clientName sw "batch"`},
			[]string{"batch 0", "batch 1", "batch 2", "batch 3", "batch 4", "batch 5", "batch 6"}, 4},
		{"sorted", qlik.ListOptions{Limit: 3, Filter: `clientName sw "batch" and clientName ne "batch 3"`, Sort: "-clientName"},
			[]string{"batch 6", "batch 5", "batch 4", "batch 2", "batch 1", "batch 0"}, 2},
		{"escaped name", qlik.ListOptions{Filter: "clientName eq " + qlik.QuoteFilterValue(`q"uote\d`)}, []string{`q"uote\d`}, 1},
		{"by id", qlik.ListOptions{Filter: "clientId eq " + qlik.QuoteFilterValue(made[4])}, []string{"batch 4"}, 1},
		{"by appType", qlik.ListOptions{Filter: `appType eq "spa"`}, []string{`q"uote\d`}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.tn.ResetCounters()
			got, err := f.api.ListOAuthClients(ctx, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if len(got) != 10 || got[0].ClientID != f.creds.ClientID || got[1].ClientID != f.admin.ID {
					t.Errorf("got %q", names(got))
				}
			} else if !slices.Equal(names(got), tt.want) {
				t.Errorf("got %q, want %q", names(got), tt.want)
			}
			if n := f.tn.Calls(qliktest.EndpointOAuthClients); n != tt.wantPages {
				t.Errorf("%d requests, want %d", n, tt.wantPages)
			}
		})
	}
	all, err := f.api.ListOAuthClients(ctx, qlik.ListOptions{Limit: 100})
	if err != nil || len(all) != 10 {
		t.Errorf("all: %d, %v", len(all), err)
	}
	for _, opts := range []qlik.ListOptions{{Filter: `description eq "x"`}, {Sort: "owner"}, {Limit: 1000}} {
		_, err := f.api.ListOAuthClients(ctx, opts)
		wantQlikError(t, err, "oauth-clients", 400)
	}
	if _, err := f.api.ListOAuthClients(ctx, qlik.ListOptions{Limit: -1}); !errors.Is(err, qlik.ErrInvalidRequest) {
		t.Errorf("negative limit: %v", err)
	}
}

// TestNextLinks scripts list answers with injected faults to check how
// links.next is followed: relative and absolute links on the tenant are,
// links elsewhere are refused before any request.
func TestNextLinks(t *testing.T) {
	var foreignHits atomic.Int32
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		foreignHits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"data":[]}`)
	}))
	t.Cleanup(foreign.Close)

	page := func(id, next string) qliktest.Fault {
		links := `{}`
		if next != "" {
			b, _ := json.Marshal(next)
			links = `{"next":{"href":` + string(b) + `}}`
		}
		return qliktest.Fault{Status: 200, Body: `{"data":[{"clientId":"` + id + `","clientName":"` + id + `","appType":"web"}],"links":` + links + `}`}
	}
	tests := []struct {
		name    string
		faults  func(tenant string) []qliktest.Fault
		want    []string
		wantErr string // substring of an ErrMalformedResponse error; "" means success
	}{
		{"relative", func(string) []qliktest.Fault {
			return []qliktest.Fault{page("a", "/api/v1/oauth-clients?next=x"), page("b", "")}
		}, []string{"a", "b"}, ""},
		{"relative query only", func(string) []qliktest.Fault {
			return []qliktest.Fault{page("a", "?next=x"), page("b", "")}
		}, []string{"a", "b"}, ""},
		{"absolute on the tenant", func(tn string) []qliktest.Fault {
			return []qliktest.Fault{page("a", tn+"/api/v1/oauth-clients?next=x#frag"), page("b", "")}
		}, []string{"a", "b"}, ""},
		{"absolute, other host", func(string) []qliktest.Fault {
			return []qliktest.Fault{page("a", foreign.URL+"/api/v1/oauth-clients?next=x")}
		}, nil, "another host"},
		{"protocol-relative, other host", func(string) []qliktest.Fault {
			return []qliktest.Fault{page("a", "//"+strings.TrimPrefix(foreign.URL, "http://")+"/api/v1/oauth-clients")}
		}, nil, "another host"},
		{"other scheme", func(tn string) []qliktest.Fault {
			return []qliktest.Fault{page("a", "https"+strings.TrimPrefix(tn, "http")+"/api/v1/oauth-clients?next=x")}
		}, nil, "another host"},
		{"userinfo", func(tn string) []qliktest.Fault {
			return []qliktest.Fault{page("a", "http://u:p@"+strings.TrimPrefix(tn, "http://")+"/api/v1/oauth-clients?next=x")}
		}, nil, "userinfo"},
		{"other endpoint", func(string) []qliktest.Fault {
			return []qliktest.Fault{page("a", "/oauth/revoke?next=x")}
		}, nil, "another endpoint"},
		{"loop", func(string) []qliktest.Fault {
			return []qliktest.Fault{page("a", "?next=1"), page("b", "?next=1")}
		}, nil, "repeats"},
		{"invalid URL", func(string) []qliktest.Fault {
			return []qliktest.Fault{page("a", "http://[::1")}
		}, nil, "not a valid URL"},
		{"not JSON", func(string) []qliktest.Fault {
			return []qliktest.Fault{{Status: 200, Body: `{"data":`}}
		}, nil, "not the expected JSON"},
		{"no clientId", func(string) []qliktest.Fault {
			return []qliktest.Fault{{Status: 200, Body: `{"data":[{"clientName":"x"}]}`}}
		}, nil, "no clientId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAdminFixture(t)
			f.tn.InjectFault(qliktest.EndpointOAuthClients, tt.faults(f.tn.URL())...)
			got, err := f.api.ListOAuthClients(t.Context(), qlik.ListOptions{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				for _, c := range got {
					ids = append(ids, c.ClientID)
				}
				if !slices.Equal(ids, tt.want) {
					t.Errorf("got %q, want %q", ids, tt.want)
				}
				return
			}
			if !errors.Is(err, qlik.ErrMalformedResponse) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want ErrMalformedResponse %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "127.0.0.1") {
				t.Errorf("error quotes the link: %v", err)
			}
		})
	}
	if n := foreignHits.Load(); n != 0 {
		t.Errorf("the other host got %d requests", n)
	}
}

func TestListStopsAfterMaxPages(t *testing.T) {
	f := newAdminFixture(t)
	faults := make([]qliktest.Fault, 101)
	for i := range faults {
		faults[i] = qliktest.Fault{Status: 200, Body: fmt.Sprintf(`{"data":[],"links":{"next":{"href":"?next=%d"}}}`, i)}
	}
	f.tn.InjectFault(qliktest.EndpointUsers, faults...)
	_, err := f.api.FindUsers(t.Context(), "")
	if !errors.Is(err, qlik.ErrTooManyPages) {
		t.Fatalf("err = %v, want ErrTooManyPages", err)
	}
	if n := f.tn.Calls(qliktest.EndpointUsers); n != 100 {
		t.Errorf("%d requests, want 100", n)
	}
}

func TestAdminMalformedAnswers(t *testing.T) {
	f := newAdminFixture(t)
	ctx := t.Context()
	id := f.creds.ClientID
	tests := []struct {
		name string
		ep   qliktest.Endpoint
		body string
		call func() error
	}{
		{"user without id", qliktest.EndpointUsers, `{"data":[{"email":"x"}]}`, func() error { _, err := f.api.FindUsers(ctx, ""); return err }},
		{"create user not JSON", qliktest.EndpointUsers, `<html>`, func() error {
			_, err := f.api.CreateUser(ctx, qlik.UserCreate{Subject: "s"})
			return err
		}},
		{"me without id", qliktest.EndpointUsersMe, `{"subject":"x"}`, func() error { _, err := f.api.Me(ctx); return err }},
		{"client without id", qliktest.EndpointOAuthClients, `{"clientName":"x"}`, func() error { _, err := f.api.GetOAuthClient(ctx, id); return err }},
		{"create client not JSON", qliktest.EndpointOAuthClients, `[`, func() error {
			_, err := f.api.CreateOAuthClient(ctx, qlik.OAuthClientCreate{AppType: "web", ClientName: "x"})
			return err
		}},
		{"secret without value", qliktest.EndpointClientSecrets, `{"hint":"x"}`, func() error {
			_, err := f.api.CreateClientSecret(ctx, id)
			return err
		}},
		{"consent missing", qliktest.EndpointConnectionConfig, `{}`, func() error { _, err := f.api.GetConsent(ctx, id); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.tn.InjectFault(tt.ep, qliktest.Fault{Status: 200, Body: tt.body})
			if err := tt.call(); !errors.Is(err, qlik.ErrMalformedResponse) {
				t.Errorf("err = %v, want ErrMalformedResponse", err)
			}
		})
	}
	f.tn.InjectFault(qliktest.EndpointOAuthClients, qliktest.Fault{Status: 202, Body: `{}`})
	if _, err := f.api.UpdateOAuthClient(ctx, id, []qlik.PatchOp{{Op: "remove", Path: "/description"}}); !errors.Is(err, qlik.ErrMalformedResponse) {
		t.Errorf("202 without secret: %v", err)
	}
	f.tn.InjectFault(qliktest.EndpointOAuthClients, qliktest.Fault{Status: 503, RetryAfter: "7"})
	_, err := f.api.ListOAuthClients(ctx, qlik.ListOptions{})
	var qe *qlik.Error
	if !errors.As(err, &qe) || qe.StatusCode != 503 || qe.RetryAfter != 7*time.Second || !qe.Temporary() {
		t.Errorf("503: %v", err)
	}
}

func TestAdminInvalidIDs(t *testing.T) {
	f := newAdminFixture(t)
	ctx := t.Context()
	for _, id := range []string{"", ".", ".."} {
		if _, err := f.api.GetOAuthClient(ctx, id); !errors.Is(err, qlik.ErrInvalidRequest) {
			t.Errorf("GetOAuthClient(%q): %v", id, err)
		}
		if err := f.api.DeleteClientSecret(ctx, f.creds.ClientID, id); !errors.Is(err, qlik.ErrInvalidRequest) {
			t.Errorf("DeleteClientSecret(hint %q): %v", id, err)
		}
	}
	if _, err := f.api.UpdateOAuthClient(ctx, f.creds.ClientID, nil); !errors.Is(err, qlik.ErrInvalidRequest) {
		t.Errorf("empty patch: %v", err)
	}
	if err := f.api.SetConsent(ctx, f.creds.ClientID, ""); !errors.Is(err, qlik.ErrInvalidRequest) {
		t.Errorf("empty consent: %v", err)
	}
	// Path segments are escaped: a slash stays inside the id.
	f.tn.ResetCounters()
	_, err := f.api.GetOAuthClient(ctx, f.creds.ClientID+"/client-secrets")
	wantQlikError(t, err, "oauth-clients", 404)
	_, err = f.api.GetOAuthClient(ctx, "a?b#c")
	wantQlikError(t, err, "oauth-clients", 404)
	if n := f.tn.Calls(qliktest.EndpointOAuthClients); n != 2 {
		t.Errorf("Calls(oauth_clients) = %d, want 2", n)
	}
	wantQlikError(t, f.api.DeleteClientSecret(ctx, f.creds.ClientID, "a/b"), "oauth-client-secrets", 404)
}

// Transport errors name the failing operation but not the URL, whose query
// may hold an email.
func TestAdminTransportErrorHidesURL(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	c, err := qlik.New(srv.URL, qlik.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	_, err = adminWith(c, "token").FindUserByEmail(t.Context(), "ada@example.com")
	if err == nil || strings.Contains(err.Error(), "ada") || strings.Contains(err.Error(), "/api/v1") || !strings.Contains(err.Error(), "qlik: users:") {
		t.Errorf("err = %v", err)
	}
}

// TestMeFollowsOneRedirect: users/me is a 301; Me follows it on the tenant
// under /api/v1/users/ only, so the bearer never goes elsewhere.
func TestMeFollowsOneRedirect(t *testing.T) {
	for _, tc := range []struct{ to, want string }{
		{"abc", "abc"}, // relative to /api/v1/users/me, as the fake answers
		{"/api/v1/users/def", "def"},
		{"{base}/api/v1/users/gh", "gh"},
		{"https://evil.example/api/v1/users/x", ""},
		{"../../../oauth/token", ""},
		{"/api/v1/users/a/b", ""},
		{"me", ""},
	} {
		t.Run(tc.to, func(t *testing.T) {
			var seen []string
			var srv *httptest.Server
			srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen = append(seen, r.URL.Path)
				switch {
				case r.URL.Path == "/api/v1/users/me":
					w.Header().Set("Location", strings.ReplaceAll(tc.to, "{base}", srv.URL))
					w.WriteHeader(http.StatusMovedPermanently)
				case strings.HasPrefix(r.URL.Path, "/api/v1/users/"):
					_, _ = w.Write([]byte(`{"id":"` + strings.TrimPrefix(r.URL.Path, "/api/v1/users/") + `"}`))
				default:
					w.WriteHeader(http.StatusTeapot)
				}
			}))
			t.Cleanup(srv.Close)
			c, err := qlik.New(srv.URL, qlik.Options{})
			if err != nil {
				t.Fatal(err)
			}
			u, err := adminWith(c, "bearer").Me(t.Context())
			switch {
			case tc.want == "" && (!errors.Is(err, qlik.ErrMalformedResponse) || len(seen) != 1):
				t.Errorf("%+v, %v (requests %v); want refused after one request", u, err, seen)
			case tc.want != "" && (err != nil || u.ID != tc.want):
				t.Errorf("%+v, %v; want user %s", u, err, tc.want)
			}
		})
	}
}
