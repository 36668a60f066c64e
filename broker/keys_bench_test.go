package broker

import (
	"encoding/base64"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// noIssuer stands in for a tenant that is never called: key derivation
// needs the tenant's configuration only.
type noIssuer struct{ Issuer }

// BenchmarkKeyName measures naming a user's cache entries, with sealing on
// (the HMAC keyed by the keyring's name key): remembered is every request
// after a user's first (the name cache), derived is a user's first
// request or one after the name cache started over (an HMAC-SHA256).
func BenchmarkKeyName(b *testing.B) {
	keyring, err := cache.ParseKeyring("k1:" + base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if err != nil {
		b.Fatal(err)
	}
	br, err := New(Config{
		Tenants: []Tenant{{ID: "acme", Issuer: noIssuer{}, Credentials: qlik.Credentials{ClientID: "client-1"}, Scope: "user_default"}},
		Keyring: keyring,
		Metrics: metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{}),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	up := br.tenants.Load().only
	users := make([]qlik.UserLookup, 1000)
	for i := range users {
		users[i] = qlik.UserLookup{Field: qlik.FieldUserID, Value: "64f1c2d3e4a5b6c7d8e9" + strconv.Itoa(i)}
	}

	b.Run("remembered", func(b *testing.B) {
		for _, u := range users {
			br.keysFor(up, u)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			br.keysFor(up, users[i%len(users)])
			i++
		}
	})
	b.Run("derived", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			u := users[i%len(users)]
			_ = br.appendHashTag(make([]byte, 0, 64), up.tenant.Credentials.ClientID, u.Field, u.Value, up.tenant.Scope)
			i++
		}
	})
}
