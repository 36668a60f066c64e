package qlik_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

const (
	secretSentinel = "SECRET-sentinel-7f3a"
	tokenSentinel  = "TOKEN-sentinel-91bc"
)

// renderings formats v every way a value typically reaches a log. Token has
// no MarshalJSON on purpose: callers may serialise it to cache it.
func renderings(t *testing.T, v any) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		out[verb] = fmt.Sprintf(verb, v)
	}
	out["struct %+v"] = fmt.Sprintf("%+v", struct{ V any }{v})
	for name, h := range map[string]func(*bytes.Buffer) slog.Handler{
		"slog json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"slog text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var b bytes.Buffer
		slog.New(h(&b)).Info("msg", "v", v)
		out[name] = b.String()
	}
	return out
}

func TestFormattingRedacts(t *testing.T) {
	creds := qlik.Credentials{ClientID: "client-1", ClientSecret: secretSentinel}
	tok := qlik.Token{AccessToken: tokenSentinel, TokenType: "bearer", Scope: "user_default", ExpiresAt: start}
	tests := []struct {
		name  string
		v     any
		wantV string // what %v must show
	}{
		{"Credentials", creds, "ClientID=client-1 ClientSecret=REDACTED"},
		{"*Credentials", &creds, "ClientID=client-1 ClientSecret=REDACTED"},
		{"Token", tok, `Token{TokenType=bearer Scope="user_default" ExpiresAt=2024-03-17T18:21:41Z AccessToken=REDACTED}`},
		{"*Token", &tok, `Token{TokenType=bearer Scope="user_default" ExpiresAt=2024-03-17T18:21:41Z AccessToken=REDACTED}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := renderings(t, tt.v)
			if r["%v"] != tt.wantV {
				t.Errorf("%%v = %s, want %s", r["%v"], tt.wantV)
			}
			for how, s := range r {
				if strings.Contains(s, secretSentinel) || strings.Contains(s, tokenSentinel) {
					t.Errorf("%s leaks: %s", how, s)
				}
				if !strings.Contains(s, "REDACTED") {
					t.Errorf("%s shows no redaction marker: %s", how, s)
				}
			}
		})
	}
}

func TestCredentialsJSONRedacts(t *testing.T) {
	b, err := json.Marshal(qlik.Credentials{ClientID: "c", ClientSecret: secretSentinel})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"client_id":"c","client_secret":"REDACTED"}` {
		t.Errorf("got %s", b)
	}
}

// TestErrorsNeverLeak drives every error path with sentinel secrets and
// tokens, including a tenant that echoes them back in its error body.
func TestErrorsNeverLeak(t *testing.T) {
	f := newFixture(t, qlik.Options{MaxBodyBytes: 4096})
	f.tn.SetClientSecret(f.creds.ClientID, secretSentinel)
	creds := qlik.Credentials{ClientID: f.creds.ClientID, ClientSecret: secretSentinel}
	wrong := qlik.Credentials{ClientID: f.creds.ClientID, ClientSecret: secretSentinel + "-wrong"}
	echo := `{"errors":[{"code":"X","title":"Bad.","detail":"got client_secret ` + secretSentinel + ` token ` + tokenSentinel + `"}]}`
	tests := []struct {
		name  string
		fault *qliktest.Fault
		call  func() error
	}{
		{"wrong secret", nil, func() error {
			_, err := f.c.ImpersonationToken(t.Context(), wrong, f.byID, "")
			return err
		}},
		{"tenant echoes secrets in detail", &qliktest.Fault{Status: 400, Body: echo}, func() error {
			_, err := f.c.ImpersonationToken(t.Context(), creds, f.byID, "")
			return err
		}},
		{"revoke echoes token", nil, func() error {
			f.tn.InjectFault(qliktest.EndpointRevoke, qliktest.Fault{Status: 400, Body: echo})
			return f.c.Revoke(t.Context(), creds, tokenSentinel)
		}},
		{"malformed success carrying a token", &qliktest.Fault{Status: 200,
			Body: `{"access_token":"` + tokenSentinel + `","token_type":"bearer"}`}, func() error {
			_, err := f.c.ImpersonationToken(t.Context(), creds, f.byID, "")
			return err
		}},
		{"bad JSON after a token", &qliktest.Fault{Status: 200,
			Body: `{"access_token":"` + tokenSentinel + `",`}, func() error {
			_, err := f.c.ImpersonationToken(t.Context(), creds, f.byID, "")
			return err
		}},
		{"oversized success", &qliktest.Fault{Status: 200,
			Body: `{"access_token":"` + tokenSentinel + strings.Repeat("x", 5000) + `","expires_in":60}`}, func() error {
			_, err := f.c.ImpersonationToken(t.Context(), creds, f.byID, "")
			return err
		}},
		{"dropped connection", &qliktest.Fault{CloseConn: true}, func() error {
			_, err := f.c.ImpersonationToken(t.Context(), creds, f.byID, "")
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.fault != nil {
				f.tn.InjectFault(qliktest.EndpointToken, *tt.fault)
			}
			err := tt.call()
			if err == nil {
				t.Fatal("want an error")
			}
			for how, s := range map[string]string{"Error()": err.Error(), "%+v": fmt.Sprintf("%+v", err)} {
				if strings.Contains(s, secretSentinel) || strings.Contains(s, tokenSentinel) {
					t.Errorf("%s leaks: %s", how, s)
				}
			}
		})
	}
	// The real tenant then still works with the sentinel secret.
	if _, err := f.c.ImpersonationToken(t.Context(), creds, f.byID, ""); err != nil {
		t.Fatal(err)
	}
}

func TestAdminTypesRedact(t *testing.T) {
	oc := qlik.OAuthClient{
		ClientID: "client-1", ClientName: "broker", AppType: "web", ClientSecret: secretSentinel,
		ClientSecretHint: "8f2a", AllowedScopes: []string{"user_default"}, CreatedAt: start,
	}
	cs := qlik.ClientSecret{ClientID: "client-1", ClientSecret: secretSentinel, Hint: "8f2a", CreatedAt: start}
	for name, v := range map[string]any{"OAuthClient": oc, "*OAuthClient": &oc, "ClientSecret": cs, "*ClientSecret": &cs} {
		t.Run(name, func(t *testing.T) {
			r := renderings(t, v)
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			r["json"] = string(b)
			for how, s := range r {
				if strings.Contains(s, secretSentinel) {
					t.Errorf("%s leaks: %s", how, s)
				}
				if !strings.Contains(s, "REDACTED") || !strings.Contains(s, "client-1") || !strings.Contains(s, "8f2a") {
					t.Errorf("%s lost the redaction marker or the useful fields: %s", how, s)
				}
			}
		})
	}
	if got := fmt.Sprintf("%#v", oc); !strings.HasPrefix(got, "qlik.OAuthClient{") {
		t.Errorf("%%#v = %s", got)
	}
	// The secret stays usable in code, and an OAuthClient without one shows none.
	if oc.Credentials().ClientSecret != secretSentinel || cs.Credentials().ClientSecret != secretSentinel {
		t.Error("Credentials lost the secret")
	}
	if s := fmt.Sprint(qlik.OAuthClient{ClientID: "c"}); strings.Contains(s, "REDACTED") {
		t.Errorf("empty secret shown as redacted: %s", s)
	}
	// Errors of the admin calls never carry the bearer token.
	var qe *qlik.Error
	f := newFixture(t, qlik.Options{})
	_, err := adminWith(f.c, tokenSentinel).ListOAuthClients(t.Context(), qlik.ListOptions{Filter: `clientName eq "x"`})
	if !errors.As(err, &qe) || qe.StatusCode != 401 || strings.Contains(fmt.Sprintf("%+v", err), tokenSentinel) {
		t.Errorf("err = %v", err)
	}
}
