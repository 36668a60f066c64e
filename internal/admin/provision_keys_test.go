package admin

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// storedManifest reads the Secret manifest's entries.
func (p *provisionRun) storedManifest(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(p.secret)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p.secret)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("Secret manifest mode %v, %v", st.Mode(), err)
	}
	var m secretManifest
	if err := yaml.UnmarshalStrict(raw, &m); err != nil || m.Kind != "Secret" || len(m.Data) != 0 {
		t.Fatalf("secret manifest (%v):\n%s", err, raw)
	}
	return m.StringData
}

// storedKey parses the private key in the Secret manifest as the broker
// would (kid: the thumbprint).
func (p *provisionRun) storedKey(t *testing.T) *qlik.SigningKey {
	t.Helper()
	k, err := qlik.ParseSigningKey([]byte(p.storedManifest(t)[keyEntry]), "", "")
	if err != nil {
		t.Fatalf("stored key: %v", err)
	}
	return k
}

// client returns the client named qlik-token-broker as the tenant holds it.
func (p *provisionRun) client(t *testing.T) qlik.OAuthClient {
	t.Helper()
	oc, ok := p.tn.OAuthClientByName("qlik-token-broker")
	if !ok {
		t.Fatal("no client")
	}
	c, err := p.qlikClient(t).Admin(qlik.StaticTokenSource(p.adminToken(t))).GetOAuthClient(context.Background(), oc.ID)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *provisionRun) qlikClient(t *testing.T) *qlik.Client {
	t.Helper()
	c, err := qlik.New(p.tn.URL(), qlik.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *provisionRun) adminToken(t *testing.T) *qlik.Token {
	t.Helper()
	tok, err := p.qlikClient(t).ClientCredentialsToken(context.Background(), qlik.Credentials{ClientID: p.admin.ID, ClientSecret: p.admin.Secret}, "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// tokenWith reports whether creds get an impersonation token for a user.
func (p *provisionRun) tokenWith(t *testing.T, creds qlik.Credentials) error {
	t.Helper()
	_, err := p.qlikClient(t).ImpersonationToken(context.Background(), creds, qlik.UserLookup{Field: qlik.FieldSubject, Value: "ada"}, "")
	return err
}

func kids(c qlik.OAuthClient) []string {
	var out []string
	for _, k := range c.PublicKeys {
		out = append(out, k.KeyID)
	}
	return out
}

// TestProvisionPrivateKeyJWT: create with a generated key, a second run
// makes no write, the stored key gets tokens, drift is reported and fixed
// only with --fix, rotation keeps both keys working until --finish, and
// `clients get` shows the kids and algorithms.
func TestProvisionPrivateKeyJWT(t *testing.T) {
	p := newProvisionRun(t)
	tn := p.tn
	tn.AddUser(qliktest.User{Subject: "ada", Name: "Ada"})
	out, err := p.provision(t, "--auth", "private-key-jwt")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Fatalf("the private key was printed:\n%s", out)
	}
	entries := p.storedManifest(t)
	if entries["client-secret"] != "" || entries[keyEntry] == "" {
		t.Fatalf("Secret entries: client-secret %t, %s %t", entries["client-secret"] != "", keyEntry, entries[keyEntry] != "")
	}
	k1 := p.storedKey(t)
	c := p.client(t)
	if !slices.Equal(c.AllowedAuthMethods, []string{"private_key_jwt"}) || !slices.Equal(kids(c), []string{k1.KeyID()}) || c.PublicKeys[0].Algorithm != "RS256" {
		t.Fatalf("client %+v", c)
	}
	reg := p.readRegistry(t).Tenants[0]
	if reg.ClientSecretFile != "" || reg.ClientKeyFile != p.mountDir+"/"+keyEntry || reg.ClientKeyID != "" {
		t.Errorf("registry entry %+v", reg)
	}
	if err := p.tokenWith(t, qlik.Credentials{ClientID: c.ClientID, Key: k1}); err != nil {
		t.Fatalf("the written Secret's key: %v", err)
	}

	// Twice: no write at the tenant, no file changed.
	writes, files := tn.WriteCalls(), readFiles(t, p.registry, p.secret)
	if out, err := p.provision(t, "--auth", "private-key-jwt"); err != nil || !strings.HasPrefix(out, "nothing to do") {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if n := tn.WriteCalls() - writes; n != 0 {
		t.Errorf("second run made %d writes", n)
	}
	if files != readFiles(t, p.registry, p.secret) {
		t.Error("second run changed the files")
	}

	// Drift: the key is gone from the client. Reported, fixed only with --fix.
	tn.SetPublicKeys(c.ClientID, []byte(`[]`))
	writes = tn.WriteCalls()
	if out, err := p.provision(t, "--auth", "private-key-jwt"); err == nil || !strings.Contains(err.Error(), "publicKeys lack "+k1.KeyID()) {
		t.Fatalf("drift: %v\n%s", err, out)
	}
	if n := tn.WriteCalls() - writes; n != 0 {
		t.Errorf("drift without --fix made %d writes", n)
	}
	if out, err := p.provision(t, "--auth", "private-key-jwt", "--fix"); err != nil || !slices.Equal(kids(p.client(t)), []string{k1.KeyID()}) {
		t.Fatalf("--fix: %v\n%s", err, out)
	}

	// Rotation: both keys work during the overlap, only the new after --finish.
	if out, err := p.provision(t, "--auth", "private-key-jwt", "--rotate-key", "--key-alg", "ES384"); err != nil {
		t.Fatalf("--rotate-key: %v\n%s", err, out)
	}
	k2 := p.storedKey(t)
	if k2.Equal(k1) || k2.Algorithm() != "ES384" || !slices.Equal(kids(p.client(t)), []string{k1.KeyID(), k2.KeyID()}) {
		t.Fatalf("after --rotate-key: kids %v, stored %v", kids(p.client(t)), k2)
	}
	for _, k := range []*qlik.SigningKey{k1, k2} {
		if err := p.tokenWith(t, qlik.Credentials{ClientID: c.ClientID, Key: k}); err != nil {
			t.Errorf("during the overlap, %s: %v", k.KeyID(), err)
		}
	}
	out, err = p.clientsGet(t, c.ClientID)
	if err != nil || !strings.Contains(out, k1.KeyID()+" (RS256)") || !strings.Contains(out, k2.KeyID()+" (ES384)") {
		t.Errorf("clients get: %v\n%s", err, out)
	}
	if out, err := p.provision(t, "--auth", "private-key-jwt", "--finish"); err != nil || !slices.Equal(kids(p.client(t)), []string{k2.KeyID()}) {
		t.Fatalf("--finish: %v\n%s", err, out)
	}
	if err := p.tokenWith(t, qlik.Credentials{ClientID: c.ClientID, Key: k1}); err == nil {
		t.Error("the old key still works after --finish")
	}
	if err := p.tokenWith(t, qlik.Credentials{ClientID: c.ClientID, Key: k2}); err != nil {
		t.Errorf("the new key after --finish: %v", err)
	}
	writes = tn.WriteCalls()
	if out, err := p.provision(t, "--auth", "private-key-jwt", "--finish"); err != nil || !strings.HasPrefix(out, "nothing to do") || tn.WriteCalls() != writes {
		t.Errorf("--finish again: %v\n%s", err, out)
	}
}

// TestProvisionSwitchSecretToKeyAndBack: an existing secret-based client
// moves to a key (secret still accepted until --finish), then back.
func TestProvisionSwitchSecretToKeyAndBack(t *testing.T) {
	p := newProvisionRun(t)
	p.tn.AddUser(qliktest.User{Subject: "ada", Name: "Ada"})
	if out, err := p.provision(t); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	oldSecret := p.storedSecret(t)
	c := p.client(t)

	out, err := p.provision(t, "--auth", "private-key-jwt")
	if err == nil || !strings.Contains(err.Error(), "allowedAuthMethods lacks private_key_jwt") || !strings.Contains(err.Error(), "client key unknown") {
		t.Fatalf("without --fix: %v\n%s", err, out)
	}
	if out, err := p.provision(t, "--auth", "private-key-jwt", "--fix"); err != nil {
		t.Fatalf("--fix: %v\n%s", err, out)
	}
	k := p.storedKey(t)
	c = p.client(t)
	if !slices.Equal(c.AllowedAuthMethods, []string{"client_secret", "private_key_jwt"}) || p.storedManifest(t)["client-secret"] != "" {
		t.Fatalf("after the switch: %v, Secret %v", c.AllowedAuthMethods, p.storedManifest(t))
	}
	if reg := p.readRegistry(t).Tenants[0]; reg.ClientSecretFile != "" || reg.ClientKeyFile == "" {
		t.Errorf("registry %+v", reg)
	}
	// Brokers not yet restarted keep working with the secret.
	if err := p.tokenWith(t, qlik.Credentials{ClientID: c.ClientID, ClientSecret: oldSecret}); err != nil {
		t.Errorf("the secret during the switch: %v", err)
	}
	if err := p.tokenWith(t, qlik.Credentials{ClientID: c.ClientID, Key: k}); err != nil {
		t.Errorf("the key: %v", err)
	}
	if out, err := p.provision(t, "--auth", "private-key-jwt", "--finish"); err != nil {
		t.Fatalf("--finish: %v\n%s", err, out)
	}
	if c = p.client(t); !slices.Equal(c.AllowedAuthMethods, []string{"private_key_jwt"}) {
		t.Fatalf("after --finish: %v", c.AllowedAuthMethods)
	}
	if err := p.tokenWith(t, qlik.Credentials{ClientID: c.ClientID, ClientSecret: oldSecret}); err == nil {
		t.Error("the secret still works after --finish")
	}

	// And back: client_secret is enabled again, the tenant makes a secret.
	if out, err := p.provision(t, "--fix"); err != nil {
		t.Fatalf("back to a secret: %v\n%s", err, out)
	}
	sec := p.storedSecret(t)
	if p.storedManifest(t)[keyEntry] != "" {
		t.Error("the Secret still holds the private key")
	}
	if reg := p.readRegistry(t).Tenants[0]; reg.ClientSecretFile == "" || reg.ClientKeyFile != "" {
		t.Errorf("registry %+v", reg)
	}
	if err := p.tokenWith(t, qlik.Credentials{ClientID: c.ClientID, ClientSecret: sec}); err != nil {
		t.Errorf("the new secret: %v", err)
	}
}

// clientsGet runs `clients get id`.
func (p *provisionRun) clientsGet(t *testing.T, id string) (string, error) {
	t.Helper()
	out, _, err := p.run(t, nil, "clients", "get", id)
	return out, err
}
