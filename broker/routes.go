package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// APIConfig wires the HTTP API.
type APIConfig struct {
	Broker   *Broker
	Verifier *session.Verifier
	// SessionCookie, when set, is a cookie the session token may come in.
	SessionCookie string
	// AllowedOrigins lists the exact browser origins (scheme://host[:port])
	// allowed to call the API with credentials. Requests without an Origin
	// header (servers, curl) are not affected.
	AllowedOrigins []string
	// Ready reports whether the broker can serve; nil means always ready.
	Ready func(ctx context.Context) error
	// MaxBodyBytes caps request bodies; default 64 KiB.
	MaxBodyBytes int64
	// UserRatePerMinute, when positive, limits each identity's /v1/token
	// requests to this many per minute (a token bucket of UserBurst, at
	// least 1); beyond it the caller gets 429 with Retry-After. The same
	// bucket is the budget of token calls on the other roads: a proxied
	// request or a service token that misses the cache (budget.go).
	UserRatePerMinute float64
	UserBurst         int
	// ServiceVerifier verifies service credentials for POST
	// /v1/service/token; nil turns the endpoint off. Its ListClaim names
	// the tenants a credential may act in.
	ServiceVerifier *session.Verifier
	// Proxy tunes /v1/qlik/*; ProxyTransport carries its requests
	// (default: a clone of http.DefaultTransport).
	Proxy          ProxyConfig
	ProxyTransport http.RoundTripper
	Metrics        *metrics.Metrics
	Logger         *slog.Logger
}

// API is the broker's HTTP interface.
type API struct {
	broker         *Broker
	proxyCfg       ProxyConfig
	proxyTransport http.RoundTripper
	users          *userLimiter // nil: no per-identity limit
	reask          *refusalChecker
	origins        map[string]bool
	ready          func(ctx context.Context) error
	m              *metrics.Metrics
	series         seriesCache
	log            *slog.Logger
}

// NewAPI returns the echo instance serving the broker's routes. It panics on
// a missing Broker, Verifier or Metrics, or a user rate without a burst:
// that is a wiring bug.
func NewAPI(cfg APIConfig) *echo.Echo {
	if cfg.Broker == nil || cfg.Verifier == nil || cfg.Metrics == nil {
		panic("broker: NewAPI needs a Broker, a Verifier and Metrics")
	}
	if cfg.UserRatePerMinute > 0 && cfg.UserBurst < 1 {
		panic("broker: NewAPI: a user rate needs a UserBurst of at least 1")
	}
	a := &API{
		broker:         cfg.Broker,
		proxyCfg:       cfg.Proxy,
		proxyTransport: cfg.ProxyTransport,
		origins:        make(map[string]bool, len(cfg.AllowedOrigins)),
		ready:          cfg.Ready,
		m:              cfg.Metrics,
		log:            cfg.Logger,
	}
	for _, o := range cfg.AllowedOrigins {
		a.origins[o] = true
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if cfg.UserRatePerMinute > 0 {
		a.users = newUserLimiter(cfg.UserRatePerMinute/60, cfg.UserBurst, cfg.Broker.now)
	}
	if a.ready == nil {
		a.ready = func(context.Context) error { return nil }
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 10
	}
	if a.proxyCfg.Timeout <= 0 {
		a.proxyCfg.Timeout = 5 * time.Minute
	}
	if a.proxyCfg.MaxRequestBytes <= 0 {
		a.proxyCfg.MaxRequestBytes = 32 << 20
	}
	if a.proxyTransport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.ResponseHeaderTimeout = time.Minute
		a.proxyTransport = t
	}

	a.reask = newRefusalChecker(a.proxyTransport, cfg.Broker.now, a.log)

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = a.handleError
	// One global middleware: echo wraps global and route middleware
	// around the handler again on every request, one allocation each.
	e.Use(a.instrument)

	sessionMW := session.MiddlewareWithConfig(session.MiddlewareConfig{
		Verifier:   cfg.Verifier,
		CookieName: cfg.SessionCookie,
		ErrorHandler: func(c echo.Context, err error) error {
			a.m.SessionRejections.WithLabelValues(string(session.ReasonOf(err))).Inc()
			return err
		},
	})
	bodyLimit := middleware.BodyLimitWithConfig(middleware.BodyLimitConfig{Limit: strconv.FormatInt(cfg.MaxBodyBytes, 10) + "B"})
	var serviceMW echo.MiddlewareFunc
	if cfg.ServiceVerifier != nil {
		serviceMW = session.MiddlewareWithConfig(session.MiddlewareConfig{
			Verifier: cfg.ServiceVerifier,
			ErrorHandler: func(c echo.Context, err error) error {
				a.m.SessionRejections.WithLabelValues(string(session.ReasonOf(err))).Inc()
				return fmt.Errorf("%w: %w", errServiceCredential, err)
			},
		})
	}
	a.routes(e, sessionMW, serviceMW, bodyLimit)
	return e
}

// routes registers every route in one place. Route middleware is applied
// here, once, by chain: handed to echo, it would be wrapped around the
// handler again on every request (echo v4's Echo.add), an allocation per
// middleware per request.
func (a *API) routes(e *echo.Echo, sessionMW, serviceMW, bodyLimit echo.MiddlewareFunc) {
	e.GET("/healthz", a.healthz)
	e.GET("/readyz", a.readyz)

	e.OPTIONS("/v1/token", a.preflight)
	// refusedToken (reask.go) answers requests naming a refused token.
	token := chain(a.token, a.originGuard, bodyLimit, sessionMW, a.tenantOrigin, a.limitUser, a.refusedToken)
	e.GET("/v1/token", token)
	e.POST("/v1/token", token)
	e.DELETE("/v1/token", chain(a.logout, a.originGuard, bodyLimit, sessionMW, a.tenantOrigin))

	e.Any("/v1/qlik/*", chain(a.proxy, a.originGuard, sessionMW, a.tenantOrigin))
	if serviceMW != nil {
		// Server to server: no browser origins.
		e.POST("/v1/service/token", chain(a.serviceToken, a.noBrowser, bodyLimit, serviceMW))
	}
}

// chain wraps h in mw, the first outermost, as echo would per request.
func chain(h echo.HandlerFunc, mw ...echo.MiddlewareFunc) echo.HandlerFunc {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

func (a *API) token(c echo.Context) error {
	id, _ := session.IdentityFrom(c)
	ctx := c.Request().Context()
	var note *groupsNote
	if id.HasGroups {
		// The sync's writes spend the identity's budget; its outcome
		// becomes the X-QTB-Groups header.
		ctx, note = withGroupsNote(ctx, a.users, id)
	}
	tok, err := a.broker.token(ctx, id)
	if err != nil {
		return err
	}
	setGroupsHeader(c.Response().Header(), note)
	return a.writeToken(c, tok)
}

func (a *API) logout(c echo.Context) error {
	id, _ := session.IdentityFrom(c)
	if err := a.broker.Evict(c.Request().Context(), id); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (a *API) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

func (a *API) readyz(c echo.Context) error {
	if err := a.ready(c.Request().Context()); err != nil {
		a.log.WarnContext(c.Request().Context(), "not ready", "err", err)
		return c.JSON(http.StatusServiceUnavailable, errorBody{Error: "not_ready", Message: "the broker is not ready to serve tokens"})
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// limitUser applies the per-identity rate limit after the session is
// verified, before any token work.
func (a *API) limitUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if a.users == nil {
			return next(c)
		}
		id, _ := session.IdentityFrom(c)
		if wait, ok := a.users.allow(identityKey(id)); !ok {
			reject(a.m, CauseUserRateLimit)
			return &userRateLimitedError{retryAfter: wait}
		}
		return next(c)
	}
}

// jsonDecoder decodes a request body strictly.
func jsonDecoder(r *http.Request) *json.Decoder {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	return dec
}
