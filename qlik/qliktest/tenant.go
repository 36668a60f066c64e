// Package qliktest is an in-process fake Qlik Cloud tenant that follows
// shared/qlik-api.md: /oauth/token, /oauth/revoke, the users API
// (/api/v1/users, /api/v1/users/{id} with its membership patches,
// /api/v1/users/me), the groups API (/api/v1/groups, groups.go,
// membership.go) and the OAuth clients API
// (/api/v1/oauth-clients and its client-secrets and connection-configs/me)
// over real HTTP, with real ES384 JWT access tokens, an injectable clock,
// latency, a per-tenant Tier-2 rate limit, a FIFO queue of injected faults per
// endpoint and call counters. It shares no code with package qlik, so a
// misunderstanding of the contract cannot hide in both. It speaks the dialect
// of Qlik's own JavaScript client, @qlik/api (see node/).
//
// As a test aid beyond the contract it also serves /app/{appId}, a minimal
// engine websocket: the bearer token is checked before the upgrade, and each
// text message is answered with an EngineReply naming the app and the
// token's user. The contract leaves the real engine websocket to the browser
// (section 6); this one exists to test a proxy's websocket pass-through.
// It also takes the browser's way in, /app/{appId}?accessToken=<temporary>,
// after the token-exchange grant of /oauth/token (exchange.go). For
// browsers it answers CORS for the clients' allowed origins (cors.go) and,
// after ServeEmbedRuntime, serves a stand-in for Qlik's embed runtime built
// on @qlik/api (embedruntime.go).
//
// Every method is safe for concurrent use; nothing panics on bad input.
//
// Errors are answered in Qlik's dialect (dialect.go): an errors array with
// service-prefixed codes, status typed as each API types it, and a traceId.
// Where the contract is UNCONFIRMED or leaves a choice, the tenant answers:
// 400 OAUTH-14 for a failed client authentication (401 with
// WithClientAuthFailureStatus), 401 for an impersonated user that does not
// exist, 400 for a grant the client may not use, 400 for impersonation
// through a client whose consent method is not trusted, client
// authentication before anything else, and 200 for revoking an unknown
// token (RFC 7009). Other readings can be scripted with InjectFault.
//
// The admin APIs take a bearer token: 401 when it is missing, invalid,
// expired or revoked, 403 unless its scope holds admin_classic (or, for
// /api/v1/users, admin.users). The OAuth clients API codes its errors
// "HTTP-<status>". List endpoints page with limit and opaque next/prev
// cursors and answer absolute links (@qlik/api fetches links.next.href as
// is). The users filter is the reference's: SCIM eq (and co on name, email
// and subject), and, or, parentheses, status terms grouped, compared
// case-insensitively; the OAuth clients filter also takes ne, sw, ew, pr and
// not. Users have the reference's five statuses. GET /api/v1/users/me
// answers 301 to the user's own /api/v1/users/{id}, as documented. Browsers
// from an OAuth client's allowedOrigins get CORS answers (cors.go). PATCH
// of a client answers 202 with a new clientSecret exactly when it adds
// client_secret to the allowedAuthMethods of a web client that lacked it,
// the trigger @qlik/api's documentation names; otherwise 204.
package qliktest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Tenant is a fake Qlik Cloud tenant served on a loopback listener. It is
// also an http.Handler, so it can be mounted on another server.
type Tenant struct {
	// Fixed at construction.
	now       func() time.Time
	lifetime  time.Duration
	latency   time.Duration
	rateLimit int
	// clientAuthStatus is the status of a failed client authentication
	// (WithClientAuthFailureStatus); 0 means errInvalidClient's.
	clientAuthStatus int
	quota            quota // quota.go
	key              *ecdsa.PrivateKey
	mux              *http.ServeMux
	srv              *http.Server
	url              string
	done             chan struct{} // closed by Close: unblocks latency and hangs
	served           chan struct{} // closed when Serve returns

	mu         sync.Mutex
	closed     bool
	handlers   sync.WaitGroup // ServeHTTP calls in flight; Add only under mu while !closed
	clients    map[string]*clientRecord
	users      map[string]*User
	userSeq    map[string]int64     // user id -> creation order
	seq        int64                // last creation order handed out
	subjects   map[string]string    // subject -> user id
	revoked    map[string]time.Time // jti -> exp, pruned once expired
	faults     map[Endpoint][]Fault
	rateWindow []time.Time // accepted Tier-2 requests in the last minute, oldest first
	calls      map[Endpoint]int
	routeCalls map[Call]int // calls.go; made on the first call
	writes     int
	userCalls  map[string]int
	issued     int
	assertions assertionState

	exchange exchangeState                // token exchange (exchange.go)
	groups   groupState                   // groups and memberships (groups.go, membership.go), under mu
	runtime  atomic.Pointer[embedRuntime] // ServeEmbedRuntime (embedruntime.go)
}

// Option configures a Tenant.
type Option func(*Tenant)

// WithClock sets the tenant clock, which drives token iat/exp, expiry checks
// and the rate-limit window. The default is time.Now.
func WithClock(now func() time.Time) Option {
	return func(t *Tenant) {
		if now != nil {
			t.now = now
		}
	}
}

// WithTokenLifetime sets how long issued tokens live (default 6h). JWT expiry
// has one-second resolution, so the lifetime is truncated to whole seconds,
// with a minimum of one second.
func WithTokenLifetime(d time.Duration) Option {
	return func(t *Tenant) { t.lifetime = max(d.Truncate(time.Second), time.Second) }
}

// WithLatency delays every answer of /oauth/token and /oauth/revoke, faults
// included, by d of real time. The wait ends early when the request is
// cancelled or the tenant closes.
func WithLatency(d time.Duration) Option {
	return func(t *Tenant) { t.latency = max(d, 0) }
}

// WithRateLimit limits /oauth/token plus /oauth/revoke and the admin writes
// of Qlik's Tier 2 (POST /api/v1/users, PATCH /api/v1/users/{id}, POST
// /api/v1/groups) to perMinute accepted requests in any sliding minute of
// the tenant clock; beyond it they get 429 with Retry-After. 0 (the
// default) turns it off.
func WithRateLimit(perMinute int) Option {
	return func(t *Tenant) { t.rateLimit = max(perMinute, 0) }
}

// New starts a tenant on 127.0.0.1 at a free port. Call Close when done,
// typically with t.Cleanup(tn.Close).
func New(opts ...Option) (*Tenant, error) {
	return NewOnAddr("127.0.0.1:0", opts...)
}

// NewOnAddr starts a tenant listening on addr, e.g. "127.0.0.1:8443" for a demo.
func NewOnAddr(addr string, opts ...Option) (*Tenant, error) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("qliktest: generating signing key: %w", err)
	}
	t := &Tenant{
		now:       time.Now,
		lifetime:  6 * time.Hour,
		key:       key,
		done:      make(chan struct{}),
		served:    make(chan struct{}),
		clients:   make(map[string]*clientRecord),
		users:     make(map[string]*User),
		userSeq:   make(map[string]int64),
		subjects:  make(map[string]string),
		revoked:   make(map[string]time.Time),
		faults:    make(map[Endpoint][]Fault),
		calls:     make(map[Endpoint]int),
		userCalls: make(map[string]int),
	}
	for _, o := range opts {
		o(t)
	}
	t.compress()
	t.mux = t.newMux()

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("qliktest: %w", err)
	}
	t.url = "http://" + dialable(ln.Addr())
	t.srv = &http.Server{
		Handler:           t,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // aborted connections are intended
	}
	go func() {
		defer close(t.served)
		_ = t.srv.Serve(ln)
	}()
	return t, nil
}

// dialable names a listener address a client can dial: an unspecified host
// (":8080", "0.0.0.0:8080") becomes the IPv4 loopback.
func dialable(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// URL returns the tenant base URL, e.g. "http://127.0.0.1:40123".
func (t *Tenant) URL() string { return t.url }

// Close stops the server, drops open connections, unblocks hung and delayed
// handlers and waits for them to return. It is safe to call more than once.
func (t *Tenant) Close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	t.mu.Unlock()

	close(t.done)
	// Shutdown rather than Close: it also waits for connection goroutines
	// that outlive their handler (net/http lingers up to 500ms closing a
	// connection whose request body was cut short), which goleak would
	// report. Hung handlers have been released above, so this is quick; the
	// bound covers clients that connect and never send a request.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if t.srv.Shutdown(ctx) != nil {
		_ = t.srv.Close()
	}
	t.handlers.Wait()
	<-t.served
}

// maxRequestBytes caps request bodies.
const maxRequestBytes = 64 << 10

// route binds a method and path to a handler. Patterns are http.ServeMux
// patterns without a method, so later routes may use wildcards
// ("/api/v1/oauth-clients/{id}") and read them with r.PathValue.
type route struct {
	method   string
	pattern  string
	endpoint Endpoint
	kind     routeKind
	handle   http.HandlerFunc
}

// routeKind says how serveRoute treats a route.
type routeKind int

const (
	plain routeKind = iota
	tier2           // /oauth/*: subject to WithLatency and WithRateLimit
	write           // an admin API call that changes state: counted by WriteCalls
)

// tier2Write is an admin write that section 9 puts in Tier 2: counted by
// WriteCalls, and subject to the quota and WithRateLimit (not WithLatency).
const tier2Write = write + 1

// routes is the routing table: one line per endpoint and method.
func (t *Tenant) routes() []route {
	const clients, client = "/api/v1/oauth-clients", "/api/v1/oauth-clients/{id}"
	return []route{
		{http.MethodPost, "/oauth/token", EndpointToken, tier2, t.handleToken},
		{http.MethodPost, "/oauth/revoke", EndpointRevoke, tier2, t.handleRevoke},
		{http.MethodGet, "/api/v1/users/me", EndpointUsersMe, plain, t.handleUsersMe},
		{http.MethodGet, "/api/v1/users/{id}", EndpointUsers, plain, t.handleGetUser},
		{http.MethodGet, "/api/v1/users", EndpointUsers, plain, t.handleListUsers},
		{http.MethodPost, "/api/v1/users", EndpointUsers, tier2Write, t.handleCreateUser},
		{http.MethodPatch, "/api/v1/users/{id}", EndpointUserPatch, tier2Write, t.handlePatchUser},
		{http.MethodGet, "/api/v1/groups", EndpointGroups, plain, t.handleListGroups},
		{http.MethodPost, "/api/v1/groups", EndpointGroups, tier2Write, t.handleCreateGroup},
		{http.MethodGet, "/api/v1/groups/{id}", EndpointGroups, plain, t.handleGetGroup},
		{http.MethodGet, clients, EndpointOAuthClients, plain, t.handleListClients},
		{http.MethodPost, clients, EndpointOAuthClients, write, t.handleCreateClient},
		{http.MethodGet, client, EndpointOAuthClients, plain, t.handleGetClient},
		{http.MethodPatch, client, EndpointOAuthClients, write, t.handlePatchClient},
		{http.MethodDelete, client, EndpointOAuthClients, write, t.handleDeleteClient},
		{http.MethodPost, client + "/client-secrets", EndpointClientSecrets, write, t.handleCreateSecret},
		{http.MethodDelete, client + "/client-secrets/{hint}", EndpointClientSecrets, write, t.handleDeleteSecret},
		{http.MethodGet, client + "/connection-configs/me", EndpointConnectionConfig, plain, t.handleGetConsent},
		{http.MethodPatch, client + "/connection-configs/me", EndpointConnectionConfig, write, t.handlePatchConsent},
		{http.MethodGet, "/resources/autogenerated/product-info.json", EndpointProductInfo, plain, handleProductInfo},
		{http.MethodGet, "/app/{appId}", EndpointEngine, plain, t.handleEngine},
		{http.MethodGet, "/api/v1/apps/{appId}", EndpointApps, plain, t.handleAppInfo},
		{http.MethodGet, "/qlik-embed/{file...}", EndpointEmbedRuntime, plain, t.handleEmbedRuntime},
	}
}

// handleProductInfo answers what @qlik/api fetches before its first REST call
// to a host outside *.qlikcloud.com to tell Qlik Cloud from Qlik Sense
// Enterprise on Windows. Any deploymentType other than the Windows and
// cloud-console ones reads as Qlik Cloud; the values here are the fake's own.
func handleProductInfo(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"composition":  map[string]string{"productName": "Qlik Cloud (qliktest)", "deploymentType": "qliktest"},
		"externalUrls": map[string]string{},
	})
}

// newMux matches paths with a ServeMux and methods itself, so that 404 and
// 405 get the contract's JSON errors body rather than ServeMux's plain text.
func (t *Tenant) newMux() *http.ServeMux {
	byPattern := make(map[string][]route)
	var patterns []string
	for _, rt := range t.routes() {
		if _, ok := byPattern[rt.pattern]; !ok {
			patterns = append(patterns, rt.pattern)
		}
		byPattern[rt.pattern] = append(byPattern[rt.pattern], rt)
	}
	mux := http.NewServeMux()
	for _, p := range patterns {
		rts := byPattern[p]
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			for _, rt := range rts {
				if rt.method == r.Method {
					t.serveRoute(rt, w, r)
					return
				}
			}
			allowed := make([]string, 0, len(rts))
			for _, rt := range rts {
				allowed = append(allowed, rt.method)
			}
			sort.Strings(allowed)
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			writeErrorBody(w, http.StatusMethodNotAllowed, "HTTP-405", "Method not allowed.",
				fmt.Sprintf("%s is not allowed on %s.", r.Method, p), usersPath(r.URL.Path))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErrorBody(w, http.StatusNotFound, "HTTP-404", "Not found.", "No such endpoint.", usersPath(r.URL.Path))
	})
	return mux
}

// ServeHTTP serves the tenant API; after Close it answers 503.
func (t *Tenant) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "HTTP-503", "Service unavailable.", "The tenant is closed.")
		return
	}
	t.handlers.Add(1)
	t.mu.Unlock()
	defer t.handlers.Done()
	if t.cors(w, r) {
		return // a preflight (cors.go)
	}
	t.mux.ServeHTTP(w, r)
}

// serveRoute counts the call, then lets a queued fault answer instead of the
// route; otherwise applies Tier-2 latency and rate limiting and runs it.
func (t *Tenant) serveRoute(rt route, w http.ResponseWriter, r *http.Request) {
	t.mu.Lock()
	t.calls[rt.endpoint]++
	if t.routeCalls == nil {
		t.routeCalls = make(map[Call]int)
	}
	t.routeCalls[callOf(rt)]++
	if rt.kind == write || rt.kind == tier2Write {
		t.writes++
	}
	fault, faulted := t.popFaultLocked(rt.endpoint)
	t.mu.Unlock()

	// Read the body before any waiting: net/http only watches for the
	// client going away (and cancels r.Context) once the body is consumed.
	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	r.Body = io.NopCloser(bytes.NewReader(body))

	if rt.kind == tier2 && t.latency > 0 && !t.wait(w, r, t.latency) {
		return
	}
	if faulted {
		t.serveFault(w, r, fault)
		return
	}
	if readErr != nil {
		badRequest("The request body could not be read or is too large.").write(w)
		return
	}
	if rt.kind == tier2 || rt.kind == tier2Write {
		if wait, ok := t.admit(); !ok {
			secs := int((wait + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			writeErrorBody(w, http.StatusTooManyRequests, "HTTP-429", "API rate limit reached.",
				fmt.Sprintf("You need to wait %d seconds until limit is lifted.", secs), usersPath(r.URL.Path))
			return
		}
	}
	rt.handle(w, r)
}

// wait blocks for d, the request's end or Close, and reports whether the
// handler should go on answering. On Close the connection is dropped, since a
// handler that returns without writing would send an empty 200.
func (t *Tenant) wait(w http.ResponseWriter, r *http.Request, d time.Duration) bool {
	var timeout <-chan time.Time
	if d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-timeout:
		return true
	case <-r.Context().Done():
		return false
	case <-t.done:
		abort(w)
		return false
	}
}

// abort drops the connection without an answer. When the writer cannot be
// hijacked (HTTP/2, a recorder) it panics with http.ErrAbortHandler, which
// net/http recovers and turns into a reset.
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// randomHex returns n random bytes as 2n hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return hex.EncodeToString(b)
}

// Calls returns how many requests reached ep with the right method, faulted
// and rate-limited ones included.
func (t *Tenant) Calls(ep Endpoint) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.calls[ep]
}

// UserTokenCalls returns how many impersonation token requests resolved to
// the user with id userID, whatever their outcome after that (disabled user,
// scope refused, success).
func (t *Tenant) UserTokenCalls(userID string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.userCalls[userID]
}

// IssuedTokens returns how many tokens /oauth/token issued, both grants.
func (t *Tenant) IssuedTokens() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.issued
}

// WriteCalls returns how many requests reached an admin API method that
// changes state (POST, PATCH, DELETE under /api/v1/users, /api/v1/groups
// and /api/v1/oauth-clients), refused and faulted ones included: a
// provisioning run that finds everything in place should make none.
func (t *Tenant) WriteCalls() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.writes
}

// ResetCounters zeroes Calls, CallsTo, WriteCalls, UserTokenCalls,
// IssuedTokens and Exchanges and empties UserPatches. Tenant state
// (clients, users, groups, tokens, faults, rate-limit window) is kept.
func (t *Tenant) ResetCounters() {
	t.exchange.resetCount()
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.calls)
	clear(t.routeCalls)
	t.groups.patches = nil
	clear(t.userCalls)
	t.writes = 0
	t.issued = 0
}
