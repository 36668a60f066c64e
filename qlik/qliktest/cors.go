package qliktest

import (
	"net/http"
	"slices"
)

// CORS for browsers. The contract (section 5) has a browser that uses an
// OAuth client's tokens list its origin in the client's allowedOrigins; the
// tenant then lets that origin call /oauth/token and the APIs from a page.
// The fake answers for the union of every client's allowedOrigins, since a
// preflight names no client:
//
//   - a preflight (OPTIONS with Access-Control-Request-Method) from an
//     allowed origin gets 204 with Allow-Origin (the origin itself, never
//     "*"), Allow-Credentials (the token exchange of @qlik/api sends
//     credentials: "include"), the methods, the requested headers echoed,
//     and Max-Age 600; from any other origin 403 in the errors shape;
//   - any other request from an allowed origin gets Allow-Origin,
//     Allow-Credentials and Expose-Headers (Retry-After, Location); from
//     another origin it is served without CORS headers, so the browser
//     withholds the answer.
//
// Headers, methods and Max-Age are the fake's choice: the reference
// documents none of them. Preflights are not counted by Calls.
const corsMethods = "GET, POST, PUT, PATCH, DELETE"

// cors applies the rules above and reports whether it answered the request
// (a preflight).
func (t *Tenant) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
	h := w.Header()
	h.Add("Vary", "Origin")
	if !t.originAllowed(origin) {
		if preflight {
			writeError(w, http.StatusForbidden, "HTTP-403", "Forbidden.", "The origin is not in any OAuth client's allowedOrigins.")
		}
		return preflight
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	if !preflight {
		h.Set("Access-Control-Expose-Headers", "Retry-After, Location")
		return false
	}
	h.Set("Access-Control-Allow-Methods", corsMethods)
	if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
		h.Set("Access-Control-Allow-Headers", req)
	}
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
	return true
}

// originAllowed reports whether some client lists origin.
func (t *Tenant) originAllowed(origin string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.clients {
		if slices.Contains(c.AllowedOrigins, origin) {
			return true
		}
	}
	return false
}

// clientAllowsOrigin reports whether client id lists origin in its allowed
// origins.
func (t *Tenant) clientAllowsOrigin(id, origin string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.clients[id]
	return ok && slices.Contains(c.AllowedOrigins, origin)
}
