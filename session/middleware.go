package session

import (
	"net/http"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
)

// MiddlewareConfig configures the session middleware.
type MiddlewareConfig struct {
	// Skipper defines a function to skip the middleware.
	// Optional. Default: middleware.DefaultSkipper.
	Skipper middleware.Skipper

	// Verifier verifies the session token. Required: MiddlewareWithConfig
	// panics without one.
	Verifier *Verifier

	// CookieName, when set, is read when the request has no Bearer token.
	// Optional.
	CookieName string

	// ErrorHandler is called with the *Error when the token is missing or
	// rejected; its result is returned by the middleware (the next handler
	// is not called). Optional. Default: a 401 *echo.HTTPError whose
	// Internal is the *Error, with a WWW-Authenticate: Bearer header.
	ErrorHandler func(c echo.Context, err error) error
}

// identityKey is the echo.Context key under which the middleware stores the
// Identity; it is namespaced to avoid clashes with other middleware.
const identityKey = "github.com/qtb-dev/qlik-token-broker/session.Identity"

// Middleware returns session middleware with the default configuration,
// reading only the Authorization header.
func Middleware(v *Verifier) echo.MiddlewareFunc {
	return MiddlewareWithConfig(MiddlewareConfig{Verifier: v})
}

// MiddlewareWithConfig returns session middleware that verifies the request's
// session token and stores the Identity for IdentityFrom. It is stored once,
// in the echo context: a copy of the request with a new context would cost
// three allocations on every request (measured: docs/benchmarks.md). It
// panics when cfg.Verifier is nil.
func MiddlewareWithConfig(cfg MiddlewareConfig) echo.MiddlewareFunc {
	if cfg.Verifier == nil {
		panic("session: middleware requires a Verifier")
	}
	if cfg.Skipper == nil {
		cfg.Skipper = middleware.DefaultSkipper
	}
	if cfg.ErrorHandler == nil {
		cfg.ErrorHandler = defaultErrorHandler
	}
	maxBytes := cfg.Verifier.MaxTokenBytes()

	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if cfg.Skipper(c) {
				return next(c)
			}
			req := c.Request()
			raw, err := TokenFromRequest(req, cfg.CookieName, maxBytes)
			if err != nil {
				return cfg.ErrorHandler(c, err)
			}
			id, err := cfg.Verifier.Verify(req.Context(), raw)
			if err != nil {
				return cfg.ErrorHandler(c, err)
			}
			c.Set(identityKey, id)
			return next(c)
		}
	}
}

func defaultErrorHandler(c echo.Context, err error) error {
	c.Response().Header().Set(echo.HeaderWWWAuthenticate, bearerScheme)
	return echo.NewHTTPError(http.StatusUnauthorized).SetInternal(err)
}

// IdentityFrom returns the Identity stored by the middleware.
func IdentityFrom(c echo.Context) (Identity, bool) {
	id, ok := c.Get(identityKey).(Identity)
	return id, ok
}
