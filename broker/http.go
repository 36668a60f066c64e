package broker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
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
	// UserRate, when positive, limits each identity's /v1/token requests
	// to this many per second (token bucket of UserBurst, default 10);
	// beyond it the caller gets 429 with Retry-After.
	UserRate  float64
	UserBurst int
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
	origins        map[string]bool
	ready          func(ctx context.Context) error
	m              *metrics.Metrics
	series         seriesCache
	log            *slog.Logger
}

// NewAPI returns the echo instance serving the broker's routes. It panics on
// a missing Broker, Verifier or Metrics: that is a wiring bug.
func NewAPI(cfg APIConfig) *echo.Echo {
	if cfg.Broker == nil || cfg.Verifier == nil || cfg.Metrics == nil {
		panic("broker: NewAPI needs a Broker, a Verifier and Metrics")
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
	if cfg.UserRate > 0 {
		a.users = newUserLimiter(cfg.UserRate, cfg.UserBurst, cfg.Broker.now)
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
				return err
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
	token := chain(a.token, a.originGuard, bodyLimit, sessionMW, a.tenantOrigin, a.limitUser)
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

// renderTokenHead renders the JSON answer for tok up to the value of
// "expires_in", the seconds left, which is all that changes between two
// answers with the same token:
//
//	{"access_token":"…","token_type":"bearer","scope":"…","expires_at":"…","expires_in":
//
// It runs once per token entering the process, so answers from L1 cost no
// JSON encoding (echo's reflective encoder was a quarter of an L1 hit's
// CPU). Strings are escaped exactly as encoding/json escapes them.
func renderTokenHead(tok qlik.Token) []byte {
	const expiresAtLayout = "2006-01-02T15:04:05.000Z07:00"
	b := make([]byte, 0, len(`{"access_token":"","token_type":"bearer","scope":"","expires_at":"","expires_in":`)+
		len(tok.AccessToken)+len(tok.Scope)+len(expiresAtLayout)+16)
	b = append(b, `{"access_token":`...)
	b = appendJSONString(b, tok.AccessToken)
	b = append(b, `,"token_type":"bearer","scope":`...)
	b = appendJSONString(b, tok.Scope)
	b = append(b, `,"expires_at":"`...)
	b = tok.ExpiresAt.UTC().AppendFormat(b, expiresAtLayout)
	return append(b, `","expires_in":`...)
}

// accessTokenAt is where the access token starts in a rendered head.
const accessTokenAt = len(`{"access_token":"`)

// appendJSONString appends s as a JSON string. Strings of printable ASCII
// without characters encoding/json escapes (every JWT and scope) are
// copied as they are; anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string: cannot fail
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func (a *API) token(c echo.Context) error {
	id, _ := session.IdentityFrom(c)
	tok, err := a.broker.token(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return a.writeToken(c, tok)
}

// Header values set on every request or token answer, shared rather than
// allocated each time (Header.Set allocates its one-element slice).
// Nothing writes into a header value in place, and Header.Add on one of
// these appends to a full slice, which copies it.
var (
	hdrNoStore    = []string{"no-store"}
	hdrNoCache    = []string{"no-cache"}
	hdrJSON       = []string{echo.MIMEApplicationJSON}
	hdrText       = []string{echo.MIMETextPlainCharsetUTF8}
	hdrNoSniff    = []string{"nosniff"}
	hdrNoReferer  = []string{"no-referrer"}
	hdrVaryOrigin = []string{echo.HeaderOrigin}
)

// answerBufs holds the buffers JSON token answers are assembled in.
var answerBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// writeToken sends a token as JSON, or as raw text when asked.
func (a *API) writeToken(c echo.Context, tok *cached) error {
	h := c.Response().Header()
	h["Cache-Control"] = hdrNoStore
	h["Pragma"] = hdrNoCache
	if prefersText(c.Request().Header.Get(echo.HeaderAccept)) {
		h[echo.HeaderContentType] = hdrText // Blob keeps a set Content-Type
		return c.Blob(http.StatusOK, echo.MIMETextPlainCharsetUTF8, tok.text)
	}
	h[echo.HeaderContentType] = hdrJSON
	buf := answerBufs.Get().(*[]byte)
	body := append((*buf)[:0], tok.jsonHead...)
	body = strconv.AppendInt(body, int64(tok.tok.ExpiresAt.Sub(a.broker.now())/time.Second), 10)
	body = append(body, "}\n"...)
	err := c.Blob(http.StatusOK, echo.MIMEApplicationJSON, body)
	*buf = body
	answerBufs.Put(buf)
	return err
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

// prefersText reports whether an Accept header asks for text/plain before
// any JSON type, which is what a qlik-embed getAccessToken wrapper wants.
func prefersText(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		mt, _, _ := strings.Cut(part, ";")
		switch strings.ToLower(strings.TrimSpace(mt)) {
		case "text/plain":
			return true
		case "application/json", "*/*", "application/*":
			return false
		}
	}
	return false
}

// userRateLimitedError is a caller over its per-identity rate.
type userRateLimitedError struct{ retryAfter time.Duration }

func (e *userRateLimitedError) Error() string { return "broker: identity over its request rate" }

// limitUser applies the per-identity rate limit after the session is
// verified, before any token work.
func (a *API) limitUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if a.users == nil {
			return next(c)
		}
		id, _ := session.IdentityFrom(c)
		if wait, ok := a.users.allow(id.Tenant + "\x00" + id.UserField + "\x00" + id.UserValue); !ok {
			a.m.Rejections.WithLabelValues(metrics.RejectUserRateLimit).Inc()
			return &userRateLimitedError{retryAfter: wait}
		}
		return next(c)
	}
}

// noBrowser refuses browser requests to server-to-server endpoints.
func (a *API) noBrowser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if c.Request().Header.Get(echo.HeaderOrigin) != "" {
			a.m.OriginRejections.Inc()
			return errOriginNotAllowed
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

// errOriginNotAllowed is returned for a browser request from an origin that
// is not on the allow-list.
var errOriginNotAllowed = errors.New("broker: origin not allowed")

// originGuard rejects a disallowed Origin before any session or token work
// and sets the CORS response headers for an allowed one. echo's CORS
// middleware would still run the handler for a disallowed origin.
func (a *API) originGuard(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		if _, ok := h[echo.HeaderVary]; ok {
			h.Add(echo.HeaderVary, echo.HeaderOrigin)
		} else {
			h[echo.HeaderVary] = hdrVaryOrigin
		}
		origin := c.Request().Header.Get(echo.HeaderOrigin)
		if origin == "" {
			return next(c)
		}
		if !a.origins[origin] && !a.broker.anyTenantAllows(origin) {
			a.m.OriginRejections.Inc()
			return errOriginNotAllowed
		}
		h.Set(echo.HeaderAccessControlAllowOrigin, origin)
		h.Set(echo.HeaderAccessControlAllowCredentials, "true")
		return next(c)
	}
}

// tenantOrigin refuses an origin that some tenant allows but not the
// session's own, once the session says which tenant it is.
func (a *API) tenantOrigin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		origin := c.Request().Header.Get(echo.HeaderOrigin)
		if origin == "" || a.origins[origin] {
			return next(c)
		}
		id, _ := session.IdentityFrom(c)
		if !a.broker.originAllowed(id, origin) {
			a.m.OriginRejections.Inc()
			c.Response().Header().Del(echo.HeaderAccessControlAllowOrigin)
			c.Response().Header().Del(echo.HeaderAccessControlAllowCredentials)
			return errOriginNotAllowed
		}
		return next(c)
	}
}

// preflight answers CORS preflight requests for /v1/token.
func (a *API) preflight(c echo.Context) error {
	h := c.Response().Header()
	h.Add(echo.HeaderVary, echo.HeaderOrigin)
	h.Add(echo.HeaderVary, echo.HeaderAccessControlRequestMethod)
	h.Add(echo.HeaderVary, echo.HeaderAccessControlRequestHeaders)
	origin := c.Request().Header.Get(echo.HeaderOrigin)
	if origin == "" || !a.origins[origin] && !a.broker.anyTenantAllows(origin) {
		a.m.OriginRejections.Inc()
		return errOriginNotAllowed
	}
	h.Set(echo.HeaderAccessControlAllowOrigin, origin)
	h.Set(echo.HeaderAccessControlAllowCredentials, "true")
	h.Set(echo.HeaderAccessControlAllowMethods, "GET, POST, DELETE")
	h.Set(echo.HeaderAccessControlAllowHeaders, "Authorization, Content-Type, Accept")
	h.Set(echo.HeaderAccessControlMaxAge, "600")
	return c.NoContent(http.StatusNoContent)
}

// instrument is the middleware every request goes through: it sets the
// security headers and records request count and latency by route
// template (a proxied websocket counts as a 101 when it closes, without
// a latency). It renders errors itself so the status it records is the
// one sent.
func (a *API) instrument(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		h := c.Response().Header()
		h["X-Content-Type-Options"] = hdrNoSniff
		h["Referrer-Policy"] = hdrNoReferer
		if err := next(c); err != nil {
			c.Error(err)
		}
		route := c.Path()
		if route == "" || c.Response().Status == http.StatusNotFound && route == "/*" {
			route = "unmatched"
		}
		status := c.Response().Status
		s := a.series.get(a.m, route, methodLabel(c.Request().Method), status)
		s.requests.Inc()
		if status != http.StatusSwitchingProtocols { // a websocket's lifetime is not a latency
			s.duration.Observe(time.Since(start).Seconds())
		}
		return nil
	}
}

// methodLabel bounds the method label: a client may send any token as a
// method, and every distinct label value is a new series.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// httpSeries are the request metrics of one route, method and status,
// resolved once: a label lookup hashes every label value on each call.
type httpSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

type seriesKey struct {
	route, method string
	code          int
}

// seriesCache maps label values to resolved series. Routes, methods and
// statuses are bounded sets, so it is too.
type seriesCache struct {
	mu sync.RWMutex
	m  map[seriesKey]httpSeries
}

func (sc *seriesCache) get(m *metrics.Metrics, route, method string, code int) httpSeries {
	k := seriesKey{route, method, code}
	sc.mu.RLock()
	s, ok := sc.m[k]
	sc.mu.RUnlock()
	if ok {
		return s
	}
	s = httpSeries{
		requests: m.HTTPRequests.WithLabelValues(route, method, strconv.Itoa(code)),
		duration: m.HTTPDuration.WithLabelValues(route),
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.m == nil {
		sc.m = make(map[seriesKey]httpSeries)
	}
	sc.m[k] = s
	return s
}

// errorBody is the JSON body of every error response.
type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// apiError is an error as the caller sees it.
type apiError struct {
	status     int
	code       string
	message    string
	retryAfter time.Duration
}

// handleError is the one place errors become HTTP responses. Internal detail
// goes to the log, never to the caller.
func (a *API) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	ae := classify(err)
	ctx := c.Request().Context()
	switch {
	case ae.status >= 500:
		a.log.ErrorContext(ctx, "request failed", "route", c.Path(), "status", ae.status, "code", ae.code, "err", err)
	case ae.status == http.StatusUnauthorized || ae.status == http.StatusForbidden:
		a.log.InfoContext(ctx, "request refused", "route", c.Path(), "status", ae.status, "code", ae.code, "err", err)
	default:
		a.log.DebugContext(ctx, "request rejected", "route", c.Path(), "status", ae.status, "code", ae.code, "err", err)
	}
	h := c.Response().Header()
	if ae.status == http.StatusUnauthorized {
		h.Set(echo.HeaderWWWAuthenticate, `Bearer realm="qlik-token-broker", error="invalid_token"`)
	}
	if ae.retryAfter > 0 {
		h.Set(echo.HeaderRetryAfter, strconv.Itoa(int((ae.retryAfter+time.Second-1)/time.Second)))
	}
	h.Set("Cache-Control", "no-store")
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(ae.status)
		return
	}
	_ = c.JSON(ae.status, errorBody{Error: ae.code, Message: ae.message})
}

// classify maps an error to what the caller is told.
func classify(err error) apiError {
	var (
		se *session.Error
		qe *qlik.Error
		he *echo.HTTPError
		ue *UnavailableError
		re *userRateLimitedError
	)
	switch {
	case errors.As(err, &re):
		return apiError{status: http.StatusTooManyRequests, code: "rate_limited",
			message: "too many token requests for this user; retry later", retryAfter: re.retryAfter}
	case errors.As(err, &ue):
		return classifyUnavailable(ue)
	case errors.Is(err, errPathNotAllowed):
		return apiError{status: http.StatusForbidden, code: "path_not_allowed",
			message: "this path may not be reached through the broker"}
	case errors.Is(err, errWebsocketOff):
		return apiError{status: http.StatusForbidden, code: "websocket_not_allowed",
			message: "websocket pass-through is off for this path"}
	case errors.Is(err, errServiceScope):
		return apiError{status: http.StatusForbidden, code: "tenant_not_allowed",
			message: "this service credential may not act in that tenant"}
	case errors.Is(err, errBadRequest):
		return apiError{status: http.StatusBadRequest, code: "bad_request",
			message: `the body must be {"tenant": "...", "user_lookup": {"field": "userId"|"subject", "value": "..."}}`}
	case errors.Is(err, ErrUnknownTenant):
		return apiError{status: http.StatusForbidden, code: "unknown_tenant",
			message: "the session names no tenant this broker serves"}
	case errors.Is(err, ErrUnknownUser):
		return apiError{status: http.StatusForbidden, code: "unknown_user",
			message: "the Qlik tenant has no active user matching this session"}
	case errors.Is(err, ErrInvalidClient):
		return apiError{status: http.StatusBadGateway, code: "upstream_misconfigured",
			message: "the Qlik tenant refused the broker's OAuth client credentials; an operator must fix them"}
	case errors.As(err, &se):
		return apiError{status: http.StatusUnauthorized, code: "invalid_session",
			message: "the session token was rejected (" + string(se.Reason) + ")"}
	case errors.Is(err, errOriginNotAllowed):
		return apiError{status: http.StatusForbidden, code: "origin_not_allowed",
			message: "this origin may not call the token broker"}
	case errors.As(err, &qe):
		return classifyUpstream(qe)
	case errors.Is(err, qlik.ErrMalformedResponse), errors.Is(err, ErrTokenTooShortLived):
		return apiError{status: http.StatusBadGateway, code: "upstream_malformed",
			message: "the Qlik tenant sent an unusable token response"}
	case errors.Is(err, context.DeadlineExceeded):
		return apiError{status: http.StatusGatewayTimeout, code: "upstream_timeout",
			message: "the Qlik tenant did not answer in time"}
	case errors.Is(err, context.Canceled):
		// The caller went away; the status is for the logs and metrics.
		return apiError{status: 499, code: "canceled", message: "request canceled"}
	case errors.As(err, &he):
		return classifyEcho(he)
	case errors.Is(err, ErrFetchPanicked):
		return apiError{status: http.StatusInternalServerError, code: "internal", message: "internal error"}
	}
	if errors.Is(err, ErrUpstream) {
		return apiError{status: http.StatusBadGateway, code: "upstream_unavailable",
			message: "the Qlik tenant could not be reached"}
	}
	return apiError{status: http.StatusInternalServerError, code: "internal", message: "internal error"}
}

func classifyUnavailable(ue *UnavailableError) apiError {
	ae := apiError{status: http.StatusServiceUnavailable, retryAfter: ue.RetryAfter}
	switch ue.Cause {
	case metrics.RejectCooldown:
		ae.code, ae.message = "upstream_rate_limited", "the Qlik tenant is rate limiting token requests; retry later"
	case metrics.RejectBreakerOpen:
		ae.code, ae.message = "upstream_unavailable", "the Qlik tenant is failing; retry later"
	default:
		ae.code, ae.message = "upstream_busy", "too many token requests are waiting for the Qlik tenant; retry later"
	}
	return ae
}

func classifyUpstream(qe *qlik.Error) apiError {
	switch {
	case qe.StatusCode == http.StatusTooManyRequests:
		return apiError{status: http.StatusServiceUnavailable, code: "upstream_rate_limited",
			message: "the Qlik tenant is rate limiting token requests; retry later", retryAfter: qe.RetryAfter}
	case qe.StatusCode == http.StatusForbidden:
		return apiError{status: http.StatusForbidden, code: "user_forbidden",
			message: "the Qlik tenant refused a token for this user (disabled, or too many tokens)"}
	case qe.StatusCode >= 500:
		return apiError{status: http.StatusBadGateway, code: "upstream_unavailable",
			message: "the Qlik tenant failed to issue a token"}
	default:
		return apiError{status: http.StatusBadGateway, code: "upstream_rejected",
			message: "the Qlik tenant rejected the token request"}
	}
}

func classifyEcho(he *echo.HTTPError) apiError {
	code := map[int]string{
		http.StatusNotFound:              "not_found",
		http.StatusMethodNotAllowed:      "method_not_allowed",
		http.StatusRequestEntityTooLarge: "request_too_large",
		http.StatusUnauthorized:          "invalid_session",
		http.StatusBadRequest:            "bad_request",
		http.StatusBadGateway:            "upstream_unavailable",
		http.StatusGatewayTimeout:        "upstream_timeout",
	}[he.Code]
	if code == "" {
		code = "error"
	}
	return apiError{status: he.Code, code: code, message: strings.ToLower(http.StatusText(he.Code))}
}
