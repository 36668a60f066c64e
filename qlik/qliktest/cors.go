package qliktest

import (
	"net/http"
	"slices"
)

// CORS: a browser page calls the tenant directly with the token the broker
// gave it (REST with a bearer header, the token exchange, the engine
// websocket, the runtime's modules). Qlik lets a page do that when its
// origin is in an OAuth client's allowedOrigins (contract sections 5 and 6;
// field notes: "Browsers using an impersonation client's tokens need their
// origin in the client's allowedOrigins, or the tenant rejects them").
//
// The fake's reading, where the public material is silent: an origin is
// allowed when any client of the tenant lists it (exactly: scheme, host and
// port); the answer then carries Access-Control-Allow-Origin: <origin> and
// Access-Control-Allow-Credentials: true (@qlik/api's token exchange is sent
// with credentials: "include"). A preflight from an allowed origin is 204
// with the requested method and headers allowed for 10 minutes; from any
// other origin it is 403 with the errors body and no CORS headers. Other
// requests from a disallowed origin are served without CORS headers, so the
// browser withholds the answer, as any server does. Preflights are answered
// before routing: they are not counted by Calls and take no faults.

// originAllowed reports whether some client of the tenant lists origin in
// its allowed origins.
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

// cors sets the CORS headers of an answer to an allowed origin and answers
// preflight requests; it reports whether it answered.
func (t *Tenant) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	h := w.Header()
	h.Add("Vary", "Origin")
	preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
	allowed := t.originAllowed(origin)
	if allowed {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if !preflight {
		return false
	}
	if !allowed {
		writeError(w, http.StatusForbidden, "HTTP-403", "Forbidden.", "The origin is not an allowed origin of any OAuth client.")
		return true
	}
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE")
	if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
		h.Set("Access-Control-Allow-Headers", req)
	}
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
	return true
}
