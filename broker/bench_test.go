package broker_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// benchBroker is a broker on a real fake tenant, warmed with one user.
type benchBroker struct {
	broker   *broker.Broker
	verifier *session.Verifier
	metrics  *metrics.Metrics
	id       session.Identity
	session  string
}

func newBenchBroker(b *testing.B, shared broker.Shared, l1 bool, keyring *cache.Keyring) *benchBroker {
	b.Helper()
	return newBenchBrokerGroups(b, shared, l1, keyring, nil)
}

// newBenchBrokerGroups is newBenchBroker whose user's session carries
// groups (nil: no groups claim), synced once while warming.
func newBenchBrokerGroups(b *testing.B, shared broker.Shared, l1 bool, keyring *cache.Keyring, groups []string) *benchBroker {
	b.Helper()
	tn, err := qliktest.New()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(tn.Close)
	oc := tn.AddClient(qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"})
	user := tn.AddUser(qliktest.User{Name: "Ada", Status: "active"})
	qc, err := qlik.New(tn.URL(), qlik.Options{})
	if err != nil {
		b.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{})
	cfg := broker.Config{
		Tenants: []broker.Tenant{{ID: "acme", Issuer: qc, Credentials: qlik.Credentials{ClientID: oc.ID, ClientSecret: oc.Secret}, Scope: "user_default"}},
		Shared:  shared,
		Keyring: keyring,
		Metrics: m,
	}
	cfg.NoL1 = !l1
	if groups != nil {
		admin := tn.AddAdminClient()
		dir := &broker.QlikDirectory{Client: qc, Admin: qlik.Credentials{ClientID: admin.ID, ClientSecret: admin.Secret}}
		cfg.Tenants[0].Groups = dir.Groups()
		cfg.Tenants[0].GroupsClaim = "groups"
		cfg.Tenants[0].GroupsPrefix = "acme-"
	}
	br, err := broker.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	v, err := session.NewVerifier(context.Background(), session.Config{HMACSecret: hmacKey})
	if err != nil {
		b.Fatal(err)
	}
	sess, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": user.ID, "exp": 4102444800}).SignedString(hmacKey)
	if err != nil {
		b.Fatal(err)
	}
	bb := &benchBroker{broker: br, verifier: v, metrics: m, session: sess,
		id: session.Identity{UserField: "userId", UserValue: user.ID, Groups: groups, HasGroups: groups != nil}}
	if _, err := br.Token(context.Background(), bb.id); err != nil {
		b.Fatal(err)
	}
	return bb
}

func benchRedis(b *testing.B) *cache.Redis {
	r, err := cache.NewRedis(cache.RedisOptions{URL: redistest.Start(b).URL()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}

// BenchmarkToken measures Broker.Token on a cached token, per tier.
func BenchmarkToken(b *testing.B) {
	for _, bc := range []struct {
		name string
		make func(b *testing.B) *benchBroker
	}{
		{"L1", func(b *testing.B) *benchBroker { return newBenchBroker(b, nil, true, nil) }},
		{"L1+Redis", func(b *testing.B) *benchBroker { return newBenchBroker(b, benchRedis(b), true, nil) }},
		{"RedisOnly", func(b *testing.B) *benchBroker { return newBenchBroker(b, benchRedis(b), false, nil) }},
		{"RedisOnlySealed", func(b *testing.B) *benchBroker {
			return newBenchBroker(b, benchRedis(b), false, newKeyring(&testing.T{}, "k1"))
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			bb := bc.make(b)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bb.broker.Token(ctx, bb.id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTokenGroups is BenchmarkToken for a session carrying an
// unchanged groups claim: what the groups check adds to a cached token.
func BenchmarkTokenGroups(b *testing.B) {
	groups := []string{"acme-admins", "acme-sales"}
	for _, bc := range []struct {
		name   string
		shared bool
	}{{"L1", false}, {"L1+Redis", true}} {
		b.Run(bc.name, func(b *testing.B) {
			var shared broker.Shared
			if bc.shared {
				shared = benchRedis(b)
			}
			bb := newBenchBrokerGroups(b, shared, true, nil, groups)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bb.broker.Token(ctx, bb.id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTokenHandler measures the whole /v1/token handler in process
// (session verification, routing, metrics, JSON) on a cached token.
func BenchmarkTokenHandler(b *testing.B) {
	for _, bc := range []struct {
		name         string
		shared       bool
		l1           bool
		sessionCache time.Duration
	}{{"L1", false, true, 0}, {"L1+SessionCache", false, true, 30 * time.Second}, {"RedisOnly", true, false, 0}} {
		b.Run(bc.name, func(b *testing.B) {
			var shared broker.Shared
			if bc.shared {
				shared = benchRedis(b)
			}
			bb := newBenchBroker(b, shared, bc.l1, nil)
			verifier := bb.verifier
			if bc.sessionCache > 0 {
				v, err := session.NewVerifier(context.Background(), session.Config{HMACSecret: hmacKey, VerifiedCacheTTL: bc.sessionCache})
				if err != nil {
					b.Fatal(err)
				}
				verifier = v
			}
			api := broker.NewAPI(broker.APIConfig{Broker: bb.broker, Verifier: verifier, Metrics: bb.metrics})
			req := httptest.NewRequest("GET", "/v1/token", nil)
			req.Header.Set("Authorization", "Bearer "+bb.session)
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				api.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
}
