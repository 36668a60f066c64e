package session

import (
	"net/http"
	"strings"
)

const bearerScheme = "Bearer"

// TokenFromRequest extracts the session token from `Authorization: Bearer <t>`
// (scheme case-insensitive) or else, when cookieName is not empty, from that
// cookie. The query string is never consulted: URLs end up in logs and
// Referer headers.
//
// Lengths are checked before anything else: an Authorization value longer
// than maxBytes plus the "Bearer " prefix, or a cookie value longer than
// maxBytes, is ReasonTooLarge (maxBytes <= 0 means DefaultMaxTokenBytes).
// Other failures: no token is ReasonMissing; another Authorization scheme is
// ReasonMalformed unless the cookie supplies a token (a Basic-auth proxy in
// front of the app must not lock users out); repeated Authorization headers
// or session cookies are ReasonMalformed, because which one counts would be
// ambiguous. Errors are *Error.
func TokenFromRequest(r *http.Request, cookieName string, maxBytes int) (string, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxTokenBytes
	}
	otherScheme := false
	switch auth := r.Header.Values("Authorization"); {
	case len(auth) > 1:
		return "", reject(ReasonMalformed, errDuplicateSource)
	case len(auth) == 1 && auth[0] != "":
		h := auth[0]
		if len(h) > maxBytes+len(bearerScheme)+1 {
			return "", reject(ReasonTooLarge, errTokenTooLarge)
		}
		scheme, token, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, bearerScheme) {
			token = strings.Trim(token, " ")
			if token == "" {
				return "", reject(ReasonMissing, errNoToken)
			}
			if len(token) > maxBytes {
				return "", reject(ReasonTooLarge, errTokenTooLarge)
			}
			return token, nil
		}
		otherScheme = true
	}
	if cookieName != "" {
		cookies := r.CookiesNamed(cookieName)
		for _, c := range cookies {
			if len(c.Value) > maxBytes {
				return "", reject(ReasonTooLarge, errTokenTooLarge)
			}
		}
		if len(cookies) > 1 {
			return "", reject(ReasonMalformed, errDuplicateSource)
		}
		if len(cookies) == 1 && cookies[0].Value != "" {
			return cookies[0].Value, nil
		}
	}
	if otherScheme {
		return "", reject(ReasonMalformed, errAuthScheme)
	}
	return "", reject(ReasonMissing, errNoToken)
}
