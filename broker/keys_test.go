package broker

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// TestKeyNamesAreStable pins how a user's Redis key names are made, since
// replicas of different versions share Redis across an upgrade: HMAC-SHA256
// under the keyring's name key of client id, lookup field, value and scope,
// each followed by a 0 byte; base64url without padding, in a hash tag. A
// remembered name is the same as a derived one, long parts included.
func TestKeyNamesAreStable(t *testing.T) {
	keyring, err := cache.ParseKeyring("k1:" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32))))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{
		Tenants: []Tenant{{ID: "acme", Issuer: noIssuer{}, Credentials: qlik.Credentials{ClientID: "client-1"}, Scope: "user_default"}},
		Keyring: keyring,
		Metrics: metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	up := b.tenants.Load().only
	for _, user := range []qlik.UserLookup{
		{Field: qlik.FieldUserID, Value: "64f1c2d3e4a5b6c7d8e9f0a1"},
		{Field: qlik.FieldSubject, Value: strings.Repeat("auth0|", 60)}, // past the 256-byte buffer
	} {
		mac := hmac.New(sha256.New, keyring.NameKey())
		for _, part := range []string{"client-1", user.Field, user.Value, "user_default"} {
			mac.Write([]byte(part))
			mac.Write([]byte{0})
		}
		tag := ":{" + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)) + "}"
		for _, when := range []string{"derived", "remembered"} {
			k := b.keysFor(up, user)
			if k.token != "qtb:tok:acme"+tag || k.lease() != "qtb:lock:acme"+tag {
				t.Fatalf("%s names for %.20s: %q, %q; want qtb:tok:acme%s and qtb:lock:acme%s", when, user.Value, k.token, k.lease(), tag, tag)
			}
		}
	}
}
