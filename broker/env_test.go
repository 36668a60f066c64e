package broker_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/internal/clocktest"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
	"github.com/qtb-dev/qlik-token-broker/session"
)

var hmacKey = []byte("0123456789abcdef0123456789abcdef-test-key")

// clock is a settable clock shared by the verifier, broker and tenant: the
// project's one test clock, under the name the broker tests use.
type clock = clocktest.Clock

func newClock() *clock { return clocktest.New(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)) }

// env is one broker in front of one fake tenant.
type env struct {
	t       *testing.T
	clock   *clock
	tenant  *qliktest.Tenant
	client  qliktest.OAuthClient
	reg     *prometheus.Registry
	metrics *metrics.Metrics
	broker  *broker.Broker
	srv     *httptest.Server
	shared  broker.Shared // nil: L1 only
}

type envOptions struct {
	session   session.Config // key material and checks; Now is filled in
	shared    broker.Shared  // nil: L1 only
	keyring   *cache.Keyring
	tune      func(*broker.Config)
	origins   []string
	cookie    string
	userRate  float64                           // per-identity requests per second; 0: off
	userBurst int                               // its bucket; 0: 10
	issuer    func(broker.Issuer) broker.Issuer // wraps the real client
	proxyURL  func(tenantURL string) string     // the URL the proxy uses for the tenant
	proxy     broker.ProxyConfig                // /v1/qlik/* tuning; zero: NewAPI's defaults
	service   *session.Config                   // service credential verifier
	logs      io.Writer
	tenantOpt []qliktest.Option
	// Replicas of one deployment share these; nil makes new ones.
	clock  *clock
	tenant *qliktest.Tenant
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	clk := o.clock
	if clk == nil {
		clk = newClock()
	}
	tn := o.tenant
	if tn == nil {
		var err error
		tn, err = qliktest.New(append([]qliktest.Option{qliktest.WithClock(clk.Now)}, o.tenantOpt...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tn.Close)
		tn.AddClient(qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"})
	}
	oc := qliktest.OAuthClient{ID: "client-1", Secret: "secret-1"}

	if o.session.HMACSecret == nil && o.session.PublicKeyPEM == nil && o.session.JWKSURL == "" {
		o.session.HMACSecret = hmacKey
	}
	o.session.Now = clk.Now
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	v, err := session.NewVerifier(ctx, o.session)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)

	qc, err := qlik.New(tn.URL(), qlik.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{Version: "test"})
	var issuer broker.Issuer = qc
	if o.issuer != nil {
		issuer = o.issuer(qc)
	}
	upstream := broker.DefaultUpstreamConfig()
	cfg := broker.Config{
		Tenants:  []broker.Tenant{{ID: "acme", URL: tn.URL(), Issuer: issuer, Credentials: qlik.Credentials{ClientID: oc.ID, ClientSecret: oc.Secret}, Scope: "user_default"}},
		Shared:   o.shared,
		Keyring:  o.keyring,
		Metrics:  m,
		Now:      clk.Now,
		Upstream: &upstream,
	}
	if o.proxyURL != nil {
		cfg.Tenants[0].URL = o.proxyURL(tn.URL())
	}
	var logger *slog.Logger
	if o.logs != nil {
		logger = slog.New(slog.NewJSONHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		cfg.Logger = logger
	}
	if o.tune != nil {
		o.tune(&cfg)
	}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	var sv *session.Verifier
	if o.service != nil {
		o.service.Now = clk.Now
		if sv, err = session.NewVerifier(ctx, *o.service); err != nil {
			t.Fatal(err)
		}
	}
	if o.userBurst == 0 {
		o.userBurst = 10
	}
	api := broker.NewAPI(broker.APIConfig{
		Broker: b, Verifier: v, SessionCookie: o.cookie, AllowedOrigins: o.origins,
		Ready: v.Ready, Metrics: m, UserRatePerMinute: o.userRate * 60, UserBurst: o.userBurst, ServiceVerifier: sv, Logger: logger, Proxy: o.proxy,
	})
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	if o.shared != nil {
		runCtx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = b.Run(runCtx) }()
		t.Cleanup(func() { stop(); <-done })
	}
	return &env{t: t, clock: clk, tenant: tn, client: oc, reg: reg, metrics: m, broker: b, srv: srv, shared: o.shared}
}

func newRedisStore(t *testing.T) *cache.Redis {
	t.Helper()
	return newRedisClient(t, cache.RedisOptions{URL: redistest.Start(t).URL()})
}

// newRedisClient is one replica's connection to a shared Redis.
func newRedisClient(t *testing.T, opts cache.RedisOptions) *cache.Redis {
	t.Helper()
	r, err := cache.NewRedis(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// session mints an HS256 session token for the user id, valid an hour.
func (e *env) session(userID string) string {
	e.t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": userID, "iat": e.clock.Now().Unix(), "exp": e.clock.Now().Add(time.Hour).Unix(),
	}).SignedString(hmacKey)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// do sends a request to the broker API.
func (e *env) do(method, path, session string, header map[string]string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if session != "" {
		req.Header.Set("Authorization", "Bearer "+session)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, body
}

type tokenBody struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	Scope       string `json:"scope"`
	ExpiresAt   string `json:"expires_at"`
	ExpiresIn   int64  `json:"expires_in"`
}

func decodeTokenBody(t *testing.T, body []byte) tokenBody {
	t.Helper()
	var tb tokenBody
	if err := json.Unmarshal(body, &tb); err != nil {
		t.Fatalf("token body %q: %v", body, err)
	}
	return tb
}

type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

func decodeErrorBody(t *testing.T, body []byte) errorBody {
	t.Helper()
	var eb errorBody
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error == "" || eb.Message == "" {
		t.Fatalf("error body %q is not {error, message}: %v", body, err)
	}
	return eb
}

// tokenUser asks the fake tenant whom the token acts for.
func (e *env) tokenUser(accessToken string) string {
	e.t.Helper()
	u, err := e.tenant.TokenUser(accessToken)
	if err != nil {
		e.t.Fatalf("tenant does not accept the token: %v", err)
	}
	return u.ID
}

func (e *env) addUser(name string) qliktest.User {
	return e.tenant.AddUser(qliktest.User{Name: name, Subject: "idp|" + name, Email: strings.ToLower(name) + "@example.com", Status: "active"})
}
