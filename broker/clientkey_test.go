package broker_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

func es384Key(t *testing.T, kid string) *qlik.SigningKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := qlik.NewSigningKey(priv, kid, "")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestQlikDirectoryReloadsItsKey: an admin client on a key whose file was
// rotated (the tenant holds only the new key) is refused once, re-reads
// the key and looks the user up; SigningKey reports the key in use.
func TestQlikDirectoryReloadsItsKey(t *testing.T) {
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	hc := qlik.NewHTTPClient(5 * time.Second)
	t.Cleanup(hc.CloseIdleConnections)
	client, err := qlik.New(tn.URL(), qlik.Options{HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	oldKey, newKey := es384Key(t, "old"), es384Key(t, "new")
	keys, _ := json.Marshal([]qlik.JWK{newKey.PublicJWK()})
	admin := tn.AddClient(qliktest.OAuthClient{AllowedGrants: []string{"client_credentials"}, AllowedScopes: []string{"admin_classic"},
		AllowedAuthMethods: []string{"private_key_jwt"}, PublicKeys: keys})
	ada := tn.AddUser(qliktest.User{Name: "Ada", Email: "ada@example.com", Status: "active"})
	reloads := 0
	d := &broker.QlikDirectory{Client: client, Admin: qlik.Credentials{ClientID: admin.ID, Key: oldKey},
		ReloadKey: func() (*qlik.SigningKey, error) { reloads++; return newKey, nil }}
	id, err := d.UserIDByEmail(t.Context(), "ada@example.com")
	if err != nil || id != ada.ID {
		t.Fatalf("UserIDByEmail = %q, %v", id, err)
	}
	if reloads != 1 || !d.SigningKey().Equal(newKey) {
		t.Errorf("%d reloads, signing with %v", reloads, d.SigningKey())
	}
	if got := tn.AssertionRefusals(); len(got) != 1 || got[0] != qliktest.RefusedKey {
		t.Errorf("refusals %q, want the old key's once", got)
	}
}
