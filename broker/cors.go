package broker

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// The broker owns CORS (exact origins, checked before any token work)
// rather than echo's CORS middleware, which turns wildcards into regexes.

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
		// A page's getAccessToken honours Retry-After on 429/503 (not a
		// CORS-safelisted header, so unreadable unless exposed).
		h[echo.HeaderAccessControlExposeHeaders] = hdrExposed
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
	h.Set(echo.HeaderAccessControlAllowHeaders, "Authorization, Content-Type, Accept, "+RefusedTokenHeader)
	h.Set(echo.HeaderAccessControlMaxAge, "600")
	return c.NoContent(http.StatusNoContent)
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
