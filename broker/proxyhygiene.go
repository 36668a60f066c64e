package broker

import (
	"net/http"
	"strings"
)

// What the proxy lets through, and what not, beyond the path allow-list.

// clientIPHeaders name the caller's address (or a proxy's claim about it).
// None reaches a tenant: the tenant sees the broker, and a client must not
// be able to plant an address the tenant might trust or log.
var clientIPHeaders = []string{
	"Forwarded", "X-Real-IP", "True-Client-IP", "CF-Connecting-IP", "X-Client-IP",
	"X-Cluster-Client-IP", "Fastly-Client-IP", "Client-IP", "X-ProxyUser-IP",
	"X-Envoy-External-Address", "X-Appengine-User-IP", "Akamai-Origin-Hop",
	"X-Original-Forwarded-For", "X-Originating-IP", "X-Remote-IP", "X-Remote-Addr",
	"Via",
}

// dropClientIP removes every client-address header from a request to the
// tenant: those listed and any X-Forwarded-*.
func dropClientIP(h http.Header) {
	for _, name := range clientIPHeaders {
		h.Del(name)
	}
	for name := range h {
		if strings.HasPrefix(name, "X-Forwarded-") {
			delete(h, name)
		}
	}
}

// dropCORS removes the tenant's CORS headers from its answer: the broker
// owns CORS (originGuard), and a tenant's "Access-Control-Allow-Origin: *"
// appended to the broker's would give the browser two.
func dropCORS(h http.Header) {
	for name := range h {
		if strings.HasPrefix(name, "Access-Control-") {
			delete(h, name)
		}
	}
}

// isWebsocketHandshake reports whether r is a complete websocket opening
// handshake (RFC 6455 section 4.1): a GET with Connection naming upgrade,
// Upgrade naming websocket, and a Sec-WebSocket-Key and -Version.
// httputil.ReverseProxy switches protocols only when both Connection and
// Upgrade say so and otherwise strips Upgrade and sends a plain request,
// so deciding on Upgrade alone would let a plain request through the
// websocket's allow-list.
func isWebsocketHandshake(r *http.Request) bool {
	return r.Method == http.MethodGet &&
		headerHasToken(r.Header, "Connection", "upgrade") &&
		strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), "websocket") &&
		r.Header.Get("Sec-WebSocket-Key") != "" && r.Header.Get("Sec-WebSocket-Version") != ""
}

// claimsWebsocket reports whether r asks for a websocket at all.
func claimsWebsocket(r *http.Request) bool {
	return strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), "websocket")
}

// headerHasToken reports whether any comma-separated value of header name
// is token, case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}
