package broker

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// Sentinel errors of the broker, to branch on with errors.Is; classify
// maps them to HTTP statuses.
var (
	// ErrUpstream wraps every failed call to the tenant; errors.As finds
	// the *qlik.Error or network error beneath it.
	ErrUpstream = errors.New("broker: upstream call failed")
	// ErrTokenTooShortLived means the tenant issued a token with less than
	// MinTokenTTL to live, so it cannot be served.
	ErrTokenTooShortLived = errors.New("broker: tenant issued a token that expires too soon")
	// ErrFetchPanicked means the upstream call panicked; the panic is logged.
	ErrFetchPanicked = errors.New("broker: token fetch panicked")
	// ErrUnknownTenant means the session names no tenant this broker serves.
	ErrUnknownTenant = errors.New("broker: unknown tenant")
	// ErrUnknownUser means the tenant has no active user for the lookup.
	ErrUnknownUser = errors.New("broker: the tenant does not know this user")
	// ErrInvalidClient means the tenant refused the broker's own client
	// credentials: an operator must fix them.
	ErrInvalidClient = errors.New("broker: the tenant refused the client credentials")
	// ErrInvalidTenantID means a tenant id that cannot name a tenant in
	// Redis key names and metric labels (see ValidTenantID).
	ErrInvalidTenantID = errors.New("broker: invalid tenant id")
)

// Errors the package keeps to itself; each is answered by classify.
var (
	errBadCachedToken   = errors.New("broker: malformed cached token")
	errSharedRate       = errors.New("broker: the tenant's shared rate limit has no room before the deadline")
	errOriginNotAllowed = errors.New("broker: origin not allowed")
	errPathNotAllowed   = errors.New("broker: proxy path not allowed")
	errWebsocketOff     = errors.New("broker: websocket pass-through is off")
	errServiceScope     = errors.New("broker: service credential not scoped to this tenant")
	errBadRequest       = errors.New("broker: bad request body")
	// errServiceCredential marks a *session.Error from the service
	// credentials' verifier, so the caller is told which token failed.
	errServiceCredential = errors.New("broker: service credential rejected")
	// errRefusedAgain: a token minted after a 401 got a 401 too.
	errRefusedAgain = errors.New("broker: the tenant refused a fresh token too")
	// errLoggedOut: the user logged out while their token was fetched;
	// it was revoked, not served.
	errLoggedOut = errors.New("broker: logged out while the token was fetched")
	// errLogoutIncomplete: Redis could not be reached during a logout and
	// no token was found to revoke here; it is retried in the background.
	errLogoutIncomplete = errors.New("broker: logout could not reach Redis")
	// errGroupsSync: the session's groups could not be synced and the
	// user holds no token to answer meanwhile (groupsync.go).
	errGroupsSync = errors.New("broker: groups sync failed")
	// errGroupsPartial: the tenant applied only part of a membership
	// patch (207).
	errGroupsPartial = errors.New("broker: the tenant applied part of the groups patch")
)

// statusClientClosed is the status recorded when the caller went away
// before the answer (nginx's 499); nobody reads the body.
const statusClientClosed = 499

// Cause is why a token request was refused without a token from the
// tenant. Its String is the label value of the rejections metric: this is
// the one place causes become labels.
type Cause uint8

// The causes of a refusal. The first four are the guard's, carried by an
// UnavailableError (a 503 with Retry-After).
const (
	// CauseCooldown: the tenant answered 429 and its Retry-After has not
	// passed (here or at another replica).
	CauseCooldown Cause = iota + 1
	// CauseBreakerOpen: the tenant keeps failing; it is not asked for a
	// while.
	CauseBreakerOpen
	// CauseQueueTimeout: no concurrency slot or local rate token came
	// before the deadline.
	CauseQueueTimeout
	// CauseSharedRate: the replicas' shared rate limit had no room before
	// the deadline.
	CauseSharedRate
	// CauseUserRateLimit: one identity asked too often (a 429).
	CauseUserRateLimit
	// CauseUnknownUser: the tenant does not know the Qlik user.
	CauseUnknownUser
	// CauseInvalidClient: the tenant refused the broker's client
	// credentials.
	CauseInvalidClient
	// CauseRememberedRefusal: the tenant refused this user moments ago;
	// the refusal is answered again without asking.
	CauseRememberedRefusal
)

// String returns the cause's label value in the rejections metric.
func (c Cause) String() string {
	switch c {
	case CauseCooldown:
		return metrics.RejectCooldown
	case CauseBreakerOpen:
		return metrics.RejectBreakerOpen
	case CauseQueueTimeout:
		return metrics.RejectQueueTimeout
	case CauseSharedRate:
		return metrics.RejectSharedRate
	case CauseUserRateLimit:
		return metrics.RejectUserRateLimit
	case CauseUnknownUser:
		return metrics.RejectUnknownUser
	case CauseInvalidClient:
		return metrics.RejectInvalidClient
	case CauseRememberedRefusal:
		return metrics.RejectRememberedRefusal
	}
	return "unknown"
}

// reject counts a refusal by its cause.
func reject(m *metrics.Metrics, c Cause) {
	m.Rejections.WithLabelValues(c.String()).Inc()
}

// UnavailableError is a token request refused because the tenant may not
// be asked now; the caller should retry after RetryAfter.
type UnavailableError struct {
	// Cause is one of CauseCooldown, CauseBreakerOpen, CauseQueueTimeout
	// and CauseSharedRate.
	Cause      Cause
	RetryAfter time.Duration
	Err        error
}

// Error says which cause refused the call, and why when known.
func (e *UnavailableError) Error() string {
	msg := "broker: tenant not asked (" + e.Cause.String() + ")"
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the error that caused the refusal, if any.
func (e *UnavailableError) Unwrap() error { return e.Err }

// userRateLimitedError is a caller over its per-identity rate.
type userRateLimitedError struct{ retryAfter time.Duration }

func (e *userRateLimitedError) Error() string { return "broker: identity over its request rate" }

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
	case errors.Is(err, errGroupsSync) && !errors.Is(err, context.Canceled):
		return apiError{status: http.StatusBadGateway, code: "groups_sync_failed",
			message: "the user's Qlik groups could not be brought in step with the session; retry later", retryAfter: 5 * time.Second}
	case errors.Is(err, errLoggedOut):
		return apiError{status: http.StatusConflict, code: "logged_out",
			message: "the session logged out while its token was being fetched; ask again"}
	case errors.Is(err, errLogoutIncomplete):
		return apiError{status: http.StatusServiceUnavailable, code: "logout_incomplete",
			message: "the token cache could not be reached; the logout is retried, ask again to confirm", retryAfter: 5 * time.Second}
	case errors.Is(err, errRefusedAgain):
		return apiError{status: http.StatusBadGateway, code: "upstream_rejected",
			message: "the Qlik tenant refused a fresh token for this request too"}
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
	case errors.As(err, &se) && errors.Is(err, errServiceCredential):
		return apiError{status: http.StatusUnauthorized, code: "invalid_session",
			message: "the service credential was rejected (" + string(se.Reason) + ")"}
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
		return apiError{status: statusClientClosed, code: "canceled", message: "request canceled"}
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
	case CauseCooldown:
		ae.code, ae.message = "upstream_rate_limited", "the Qlik tenant is rate limiting token requests; retry later"
	case CauseBreakerOpen:
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
