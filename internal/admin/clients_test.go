package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// adminTenant is a fake tenant with an admin client whose secret is in a
// file, and the environment that points the admin commands at it.
type adminTenant struct {
	tn    *qliktest.Tenant
	admin qliktest.OAuthClient
	dir   string
	env   map[string]string
}

func newAdminTenant(t *testing.T) *adminTenant {
	t.Helper()
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	admin := tn.AddAdminClient()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "admin-secret")
	if err := os.WriteFile(secretFile, []byte(admin.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &adminTenant{tn: tn, admin: admin, dir: dir, env: map[string]string{
		"QTB_TENANT_URL":               tn.URL(),
		"QTB_ADMIN_CLIENT_ID":          admin.ID,
		"QTB_ADMIN_CLIENT_SECRET_FILE": secretFile,
	}}
}

// run runs the program with a's environment plus env (an empty value
// removes a variable) and returns what it printed.
func (a *adminTenant) run(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	e := maps.Clone(a.env)
	for k, v := range env {
		if v == "" {
			delete(e, k)
		} else {
			e[k] = v
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	err = run(ctx, args, envFunc(e), &out, &errOut)
	// The admin secret never shows, whatever happened.
	if s := out.String() + errOut.String() + cliErrText(err); strings.Contains(s, a.admin.Secret) {
		t.Errorf("%v: the admin secret appears in the output:\n%s", args, s)
	}
	return out.String(), errOut.String(), err
}

func cliErrText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// writeFile writes a file under a's directory and returns its path.
func (a *adminTenant) writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(a.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// token mints a client_credentials token for c at the tenant.
func (a *adminTenant) token(t *testing.T, c qliktest.OAuthClient, scope string) string {
	t.Helper()
	qc, err := qlik.New(a.tn.URL(), qlik.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := qc.ClientCredentialsToken(context.Background(), qlik.Credentials{ClientID: c.ID, ClientSecret: c.Secret}, scope)
	if err != nil {
		t.Fatal(err)
	}
	return tok.AccessToken
}

// TestClientsCommands runs every clients command against a fake tenant and
// checks the tenant's state after each.
func TestClientsCommands(t *testing.T) {
	a := newAdminTenant(t)
	tn := a.tn

	// create, table: the secret is shown once, with a warning, and is the
	// one the tenant stored.
	out, _, err := a.run(t, nil, "clients", "create", "--name", "app-one", "--description", "first app",
		"--scope", "user_default", "--grant", "client_credentials,"+qlik.GrantImpersonation,
		"--origin", "https://a.example.com", "--origin", "https://b.example.com",
		"--redirect-uri", "https://a.example.com/callback", "--consent", "trusted")
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	one, ok := tn.OAuthClientByName("app-one")
	if !ok {
		t.Fatal("create: no client app-one at the tenant")
	}
	if one.AppType != "web" || one.Description != "first app" || one.ConsentMethod != "trusted" ||
		!slices.Equal(one.AllowedScopes, []string{"user_default"}) ||
		!slices.Equal(one.AllowedGrants, []string{"client_credentials", qlik.GrantImpersonation}) ||
		!slices.Equal(one.AllowedOrigins, []string{"https://a.example.com", "https://b.example.com"}) ||
		!slices.Equal(one.RedirectURIs, []string{"https://a.example.com/callback"}) {
		t.Fatalf("create: the tenant holds %+v", one)
	}
	if !strings.Contains(out, "Client secret: "+one.Secret+"\n") || !strings.Contains(out, "WARNING") || !strings.Contains(out, one.ID) {
		t.Fatalf("create: output lacks the id, the secret or the warning:\n%s", out)
	}

	// create, JSON: parses, carries the secret; the warning goes to stderr.
	out, stderr, err := a.run(t, nil, "clients", "create", "--name", "app-two", "--output", "json")
	if err != nil {
		t.Fatalf("create --output json: %v", err)
	}
	var two clientView
	if err := json.Unmarshal([]byte(out), &two); err != nil {
		t.Fatalf("create --output json does not parse: %v\n%s", err, out)
	}
	stored, _ := tn.OAuthClient(two.ClientID)
	if two.ClientSecret == "" || two.ClientSecret != stored.Secret || two.AppType != "web" || two.ConsentMethod != "required" {
		t.Fatalf("create --output json: %+v (tenant: %+v)", two, stored)
	}
	if !strings.Contains(stderr, "WARNING") {
		t.Errorf("create --output json: no warning on stderr: %q", stderr)
	}

	// list follows next links: the fake pages by 10.
	for range 12 {
		tn.AddClient(qliktest.OAuthClient{})
	}
	const total = 1 + 2 + 12 // the admin client, app-one, app-two, 12 more
	out, _, err = a.run(t, nil, "clients", "list", "--output", "json")
	if err != nil {
		t.Fatalf("list --output json: %v", err)
	}
	var all []clientView
	if err := json.Unmarshal([]byte(out), &all); err != nil || len(all) != total {
		t.Fatalf("list --output json: %d clients (%v), want %d", len(all), err, total)
	}
	for _, v := range all {
		if v.ClientSecret != "" {
			t.Fatal("list shows a client secret")
		}
	}
	out, _, err = a.run(t, nil, "clients", "list")
	if err != nil || !strings.Contains(out, "CLIENT ID") || !strings.Contains(out, "app-one") || !strings.Contains(out, one.ID) ||
		!strings.Contains(out, "15 clients") {
		t.Fatalf("list: %v\n%s", err, out)
	}

	// get: table and JSON.
	out, _, err = a.run(t, nil, "clients", "get", one.ID)
	if err != nil || !strings.Contains(out, "https://a.example.com, https://b.example.com") || !strings.Contains(out, "trusted") ||
		strings.Contains(out, one.Secret) {
		t.Fatalf("get: %v\n%s", err, out)
	}
	out, _, err = a.run(t, nil, "clients", "get", "--output", "json", one.ID) // flags before or after the id
	var got clientView
	if err != nil || json.Unmarshal([]byte(out), &got) != nil || got.ClientID != one.ID || got.ConsentMethod != "trusted" || got.ClientSecret != "" {
		t.Fatalf("get --output json: %v\n%s", err, out)
	}

	// update: --op/--path/--value and --patch.
	for _, tc := range []struct {
		args  []string
		check func(qliktest.OAuthClient) bool
	}{
		{[]string{"--op", "replace", "--path", "/clientName", "--value", "app-one-renamed"},
			func(c qliktest.OAuthClient) bool { return c.Name == "app-one-renamed" }},
		{[]string{"--op", "add", "--path", "/allowedOrigins", "--value", "https://c.example.com"},
			func(c qliktest.OAuthClient) bool {
				return len(c.AllowedOrigins) == 3 && c.AllowedOrigins[2] == "https://c.example.com"
			}},
		{[]string{"--op", "replace", "--path", "/allowedScopes", "--value", "user_default,apps:read"},
			func(c qliktest.OAuthClient) bool {
				return slices.Equal(c.AllowedScopes, []string{"user_default", "apps:read"})
			}},
		{[]string{"--op", "remove", "--path", "/description"},
			func(c qliktest.OAuthClient) bool { return c.Description == "" }},
		{[]string{"--patch", `[{"op":"replace","path":"/description","value":"patched"},{"op":"replace","path":"/redirectUris","value":[]}]`},
			func(c qliktest.OAuthClient) bool { return c.Description == "patched" && len(c.RedirectURIs) == 0 }},
	} {
		out, _, err := a.run(t, nil, append([]string{"clients", "update", one.ID}, tc.args...)...)
		c, _ := tn.OAuthClient(one.ID)
		if err != nil || !tc.check(c) || !strings.Contains(out, "updated client "+one.ID) {
			t.Fatalf("update %v: %v; tenant holds %+v\n%s", tc.args, err, c, out)
		}
	}

	// consent get / set.
	out, _, err = a.run(t, nil, "clients", "consent", "get", two.ClientID)
	if err != nil || strings.TrimSpace(out) != "required" {
		t.Fatalf("consent get: %v %q", err, out)
	}
	if _, _, err := a.run(t, nil, "clients", "consent", "set", two.ClientID, "trusted"); err != nil {
		t.Fatalf("consent set: %v", err)
	}
	if c, _ := tn.OAuthClient(two.ClientID); c.ConsentMethod != "trusted" {
		t.Fatalf("consent set: the tenant says %q", c.ConsentMethod)
	}
	out, _, err = a.run(t, nil, "clients", "consent", "get", two.ClientID, "--output", "json")
	var consent struct{ ClientID, ConsentMethod string }
	if err != nil || json.Unmarshal([]byte(out), &consent) != nil || consent.ConsentMethod != "trusted" || consent.ClientID != two.ClientID {
		t.Fatalf("consent get --output json: %v %s", err, out)
	}

	// secrets create / delete.
	out, _, err = a.run(t, nil, "clients", "secrets", "create", two.ClientID, "--output", "json")
	var sec struct{ ClientID, ClientSecret, Hint string }
	if err != nil || json.Unmarshal([]byte(out), &sec) != nil {
		t.Fatalf("secrets create: %v %s", err, out)
	}
	if c, _ := tn.OAuthClient(two.ClientID); sec.ClientSecret == "" || c.Secret != sec.ClientSecret || sec.Hint == "" {
		t.Fatalf("secrets create: printed %+v, the tenant's newest secret differs", sec.Hint)
	}
	out, _, err = a.run(t, nil, "clients", "secrets", "create", two.ClientID)
	if err != nil || !strings.Contains(out, "Client secret: ") || !strings.Contains(out, "WARNING") {
		t.Fatalf("secrets create (table): %v\n%s", err, out)
	}
	if _, _, err := a.run(t, nil, "clients", "secrets", "delete", two.ClientID, sec.Hint); err != nil {
		t.Fatalf("secrets delete: %v", err)
	}
	if _, _, err := a.run(t, nil, "clients", "secrets", "delete", two.ClientID, sec.Hint); err == nil {
		t.Fatal("secrets delete: the hint is still there")
	}

	// delete.
	out, _, err = a.run(t, nil, "clients", "delete", two.ClientID)
	if err != nil || !strings.Contains(out, "deleted client "+two.ClientID) {
		t.Fatalf("delete: %v %s", err, out)
	}
	if _, ok := tn.OAuthClient(two.ClientID); ok {
		t.Fatal("delete: the client is still at the tenant")
	}

	// Every run minted its own admin token and revoked it.
	if tn.Calls(qliktest.EndpointRevoke) == 0 {
		t.Error("the admin tokens were never revoked")
	}
}

// TestClientsErrors: every refusal names Qlik's code, title and detail,
// and run fails.
func TestClientsErrors(t *testing.T) {
	a := newAdminTenant(t)
	tn := a.tn
	c := tn.AddClient(qliktest.OAuthClient{Name: "victim"})
	for range 4 { // 5 secrets: Qlik's limit
		if _, _, err := a.run(t, nil, "clients", "secrets", "create", c.ID); err != nil {
			t.Fatal(err)
		}
	}
	badSecret := a.writeFile(t, "bad-secret", "not-the-secret")
	// A client that may not ask for admin_classic, and a token without it.
	noAdmin := tn.AddClient(qliktest.OAuthClient{AllowedGrants: []string{"client_credentials"}, AllowedScopes: []string{"user_default"}})
	noAdminSecret := a.writeFile(t, "no-admin-secret", noAdmin.Secret)
	weakToken := a.writeFile(t, "weak-token", a.token(t, noAdmin, ""))

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want []string // in the error
	}{
		{"400 bad admin secret", map[string]string{"QTB_ADMIN_CLIENT_SECRET_FILE": badSecret},
			[]string{"clients", "list"}, []string{"400", "OAUTH-14", "Invalid client_id", "refused the admin client", "traceId="}},
		{"400 bad admin secret (flags)", nil,
			[]string{"clients", "list", "--admin-client-id", a.admin.ID, "--admin-client-secret-file", badSecret}, []string{"400", "OAUTH-14"}},
		{"401 bad token", map[string]string{"QTB_ADMIN_CLIENT_ID": "", "QTB_ADMIN_CLIENT_SECRET_FILE": "", "QTB_ADMIN_TOKEN": "garbage"},
			[]string{"clients", "list"}, []string{"401", "HTTP-401", "invalid, expired or revoked"}},
		{"403 token without admin_classic", nil,
			[]string{"clients", "list", "--token-file", weakToken, "--admin-client-id", ""}, []string{"403", "HTTP-403", "lacks the scope admin_classic"}},
		{"403 token without admin_classic (env)", map[string]string{"QTB_ADMIN_CLIENT_ID": "", "QTB_ADMIN_CLIENT_SECRET_FILE": "", "QTB_ADMIN_TOKEN_FILE": weakToken},
			[]string{"clients", "get", c.ID}, []string{"403", "HTTP-403"}},
		{"admin client without admin_classic", map[string]string{"QTB_ADMIN_CLIENT_ID": noAdmin.ID, "QTB_ADMIN_CLIENT_SECRET_FILE": noAdminSecret},
			[]string{"clients", "list"}, []string{"400", "OAUTH-3", "allowed scope admin_classic"}},
		{"404 get", nil, []string{"clients", "get", "no-such-client"}, []string{"404", "HTTP-404", "No OAuth client with this id"}},
		{"404 update", nil, []string{"clients", "update", "no-such-client", "--op", "replace", "--path", "/clientName", "--value", "x"}, []string{"HTTP-404"}},
		{"404 delete", nil, []string{"clients", "delete", "no-such-client"}, []string{"HTTP-404"}},
		{"404 consent get", nil, []string{"clients", "consent", "get", "no-such-client"}, []string{"HTTP-404"}},
		{"404 consent set", nil, []string{"clients", "consent", "set", "no-such-client", "trusted"}, []string{"HTTP-404"}},
		{"404 secrets create", nil, []string{"clients", "secrets", "create", "no-such-client"}, []string{"HTTP-404"}},
		{"404 secrets delete", nil, []string{"clients", "secrets", "delete", c.ID, "nohint"}, []string{"HTTP-404", "No client secret with this hint"}},
		{"409 sixth secret", nil, []string{"clients", "secrets", "create", c.ID}, []string{"409", "HTTP-409", "maximum number of secrets", "secrets delete"}},
		{"400 bad patch path", nil, []string{"clients", "update", c.ID, "--op", "replace", "--path", "/nope", "--value", "x"},
			[]string{"400", "HTTP-400", "path is not one a patch may change"}},
		{"400 bad scope on create", nil, []string{"clients", "create", "--name", "x", "--scope", "no_such_scope"}, []string{"HTTP-400", "unknown scope"}},
		// Refused before any request.
		{"unknown command", nil, []string{"clients", "frobnicate"}, []string{"unknown command"}},
		{"missing id", nil, []string{"clients", "get"}, []string{"want arguments <id>"}},
		{"bad output", nil, []string{"clients", "list", "--output", "xml"}, []string{"--output"}},
		{"bad consent", nil, []string{"clients", "consent", "set", c.ID, "maybe"}, []string{"trusted or required"}},
		{"create without name", nil, []string{"clients", "create"}, []string{"--name is required"}},
		{"update without op", nil, []string{"clients", "update", c.ID}, []string{"--op"}},
		{"bad --patch", nil, []string{"clients", "update", c.ID, "--patch", "{"}, []string{"--patch"}},
		{"no tenant", map[string]string{"QTB_TENANT_URL": ""}, []string{"clients", "list"}, []string{"--tenant-url"}},
		{"no credentials", map[string]string{"QTB_ADMIN_CLIENT_ID": "", "QTB_ADMIN_CLIENT_SECRET_FILE": ""}, []string{"clients", "list"}, []string{"admin credentials are required"}},
		{"token and client", map[string]string{"QTB_ADMIN_TOKEN": "x"}, []string{"clients", "list"}, []string{"set one, not both"}},
		{"secret twice", map[string]string{"QTB_ADMIN_CLIENT_SECRET": "x"}, []string{"clients", "list"}, []string{"set one, not both"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := a.run(t, tc.env, tc.args...)
			if err == nil {
				t.Fatal("run succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.HasPrefix(tc.name, "4") {
				var te *tenantError
				var qe *qlik.Error
				if !errors.As(err, &te) || !errors.As(err, &qe) {
					t.Errorf("a tenant refusal is not a *tenantError wrapping *qlik.Error: %T", err)
				}
			}
		})
	}
	if c2, _ := tn.OAuthClient(c.ID); c2.Name != "victim" {
		t.Error("a refused update changed the client")
	}
}

// TestClientsAdminToken: a valid bearer token works in place of an admin
// client, from a flag or the environment.
func TestClientsAdminToken(t *testing.T) {
	a := newAdminTenant(t)
	tok := a.token(t, a.admin, "admin_classic")
	tokFile := a.writeFile(t, "admin-token", tok+"\n")
	for name, env := range map[string]map[string]string{
		"QTB_ADMIN_TOKEN":      {"QTB_ADMIN_CLIENT_ID": "", "QTB_ADMIN_CLIENT_SECRET_FILE": "", "QTB_ADMIN_TOKEN": tok},
		"QTB_ADMIN_TOKEN_FILE": {"QTB_ADMIN_CLIENT_ID": "", "QTB_ADMIN_CLIENT_SECRET_FILE": "", "QTB_ADMIN_TOKEN_FILE": tokFile},
	} {
		out, _, err := a.run(t, env, "clients", "list")
		if err != nil || !strings.Contains(out, a.admin.ID) {
			t.Errorf("%s: %v\n%s", name, err, out)
		}
	}
	// --token-file wins over an admin client in the environment.
	issued := a.tn.IssuedTokens()
	out, _, err := a.run(t, nil, "clients", "list", "--token-file", tokFile)
	if err != nil || !strings.Contains(out, a.admin.ID) {
		t.Fatalf("--token-file: %v\n%s", err, out)
	}
	if a.tn.IssuedTokens() != issued {
		t.Error("--token-file still minted a token with the admin client")
	}
	// A token given by the caller is not revoked.
	if _, err := a.tn.TokenUser(tok); err != nil {
		t.Errorf("the caller's token was revoked: %v", err)
	}
}

func TestClientsHelp(t *testing.T) {
	for _, args := range [][]string{{"clients", "-h"}, {"clients", "create", "-h"}, {"provision", "-h"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, envFunc(nil), &out, &out); err != nil || !strings.Contains(out.String(), "--tenant-url") {
			t.Errorf("%v: %v\n%s", args, err, out.String())
		}
	}
}
