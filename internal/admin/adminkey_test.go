package admin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestClientsAdminClientKey: the admin commands authenticate with a Private
// Key JWT admin client (flags or environment), send no secret, revoke the
// token they minted, and refuse a secret and a key together.
func TestClientsAdminClientKey(t *testing.T) {
	a := newAdminTenant(t)
	priv, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	keyFile := a.writeFile(t, "admin-key.pem", string(pemBytes))
	key, err := qlik.ParseSigningKey(pemBytes, "admin-kid", "")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := json.Marshal([]qlik.JWK{key.PublicJWK()})
	if err != nil {
		t.Fatal(err)
	}
	kc := a.tn.AddClient(qliktest.OAuthClient{
		ID:                 "admin-by-key",
		Name:               "admin-by-key",
		AllowedGrants:      []string{"client_credentials"},
		AllowedScopes:      []string{"admin_classic"},
		AllowedAuthMethods: []string{"private_key_jwt"},
		PublicKeys:         keys,
	})
	noSecret := map[string]string{"QTB_ADMIN_CLIENT_SECRET_FILE": "", "QTB_ADMIN_CLIENT_ID": kc.ID}

	for name, tc := range map[string]struct {
		env  map[string]string
		args []string
	}{
		"flags": {noSecret, []string{"--admin-client-key-file", keyFile, "--admin-client-key-id", "admin-kid"}},
		"environment": {map[string]string{"QTB_ADMIN_CLIENT_SECRET_FILE": "", "QTB_ADMIN_CLIENT_ID": kc.ID,
			"QTB_ADMIN_CLIENT_KEY_FILE": keyFile, "QTB_ADMIN_CLIENT_KEY_ID": "admin-kid", "QTB_ADMIN_CLIENT_KEY_ALG": "ES384"}, nil},
	} {
		issued, revoked := a.tn.IssuedTokens(), a.tn.Calls(qliktest.EndpointRevoke)
		out, errOut, err := a.run(t, tc.env, append([]string{"clients", "list"}, tc.args...)...)
		if err != nil || !strings.Contains(out, kc.ID) {
			t.Fatalf("%s: %v\n%s%s", name, err, out, errOut)
		}
		if got := a.tn.IssuedTokens() - issued; got != 1 {
			t.Errorf("%s: %d tokens minted, want 1", name, got)
		}
		if got := a.tn.Calls(qliktest.EndpointRevoke) - revoked; got != 1 {
			t.Errorf("%s: %d revokes, want the run's own token revoked once", name, got)
		}
		if strings.Contains(out+errOut, string(pemBytes)) || strings.Contains(out+errOut, "PRIVATE KEY") {
			t.Errorf("%s: the key appears in the output", name)
		}
	}

	// The wrong kid is refused by the tenant, and the error names neither key nor file content.
	_, _, err = a.run(t, noSecret, "clients", "list", "--admin-client-key-file", keyFile, "--admin-client-key-id", "other-kid")
	if err == nil {
		t.Error("a key the tenant does not know was accepted")
	} else if strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Errorf("the error shows the key: %v", err)
	}

	for name, tc := range map[string]struct {
		env  map[string]string
		args []string
		want string
	}{
		"secret flag and key flag":          {nil, []string{"--admin-client-secret-file", a.env["QTB_ADMIN_CLIENT_SECRET_FILE"], "--admin-client-key-file", keyFile}, "not both"},
		"secret and key in the environment": {map[string]string{"QTB_ADMIN_CLIENT_KEY_FILE": keyFile}, nil, "not both"},
		"key id without key file":           {nil, []string{"--admin-client-key-id", "k"}, "need --admin-client-key-file"},
		"unreadable key file":               {noSecret, []string{"--admin-client-key-file", a.writeFile(t, "junk.pem", "not a key")}, "admin client key"},
		"key without client id":             {map[string]string{"QTB_ADMIN_CLIENT_ID": "", "QTB_ADMIN_CLIENT_SECRET_FILE": ""}, []string{"--admin-client-key-file", keyFile}, "--admin-client-id"},
	} {
		issued := a.tn.IssuedTokens()
		_, _, err := a.run(t, tc.env, append([]string{"clients", "list"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, tc.want)
		}
		if a.tn.IssuedTokens() != issued {
			t.Errorf("%s: a token was minted", name)
		}
	}
}
