package broker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// DefaultProxyPaths is what the proxy may reach when a tenant lists none:
// the REST API, not /oauth or anything else.
var DefaultProxyPaths = []string{"/api/v1/"}

// websocketPaths is where a websocket may go at a tenant with the default
// proxy paths, when websockets are on: the engine.
var websocketPaths = []string{"/app/"}

// ProxyConfig tunes the reverse proxy to the tenants, /v1/qlik/*.
type ProxyConfig struct {
	// Timeout bounds one proxied request, streaming included. It does not
	// bound a websocket, whose handshake the transport bounds. Default 5m.
	Timeout time.Duration
	// MaxRequestBytes caps a request body. Default 32 MiB.
	MaxRequestBytes int64
	// Websocket lets engine websockets (/app/...) through. A tenant with
	// its own proxy paths must list /app/; with the default paths, turning
	// this on is enough (only websockets may then reach /app/). Default off.
	Websocket bool
}

// proxyAnswerGrace is how long past the proxy timeout the answer may still
// be written: the 504 of a request the timeout ended.
const proxyAnswerGrace = 5 * time.Second

// replayLimit is the largest request body kept in memory so the request
// can be sent again after a 401; larger bodies stream and are not retried.
const replayLimit = 1 << 20

type proxyCtxKey struct{}

// proxyCall is what the transport needs to retry one request.
type proxyCall struct {
	id    session.Identity
	token string
}

// proxy forwards /v1/qlik/<path> to the session's tenant as its user: the
// caller's credentials and cookies never reach Qlik, Qlik's cookies never
// reach the caller, bodies stream both ways, and a 401 from Qlik (a token
// revoked or expired early) is retried once with a fresh token.
func (a *API) proxy(c echo.Context) error {
	req := c.Request()
	id, _ := session.IdentityFrom(c)
	up, err := a.broker.tenantFor(id)
	if err != nil {
		return err
	}
	// Only a complete handshake is a websocket; a request that names
	// websocket in Upgrade but is not one is refused, before any token
	// work, rather than forwarded as a plain request.
	websocket := isWebsocketHandshake(req)
	if !websocket && claimsWebsocket(req) {
		return errWebsocketOff
	}
	paths := up.tenant.proxyPaths()
	if websocket && a.proxyCfg.Websocket && len(up.tenant.ProxyPaths) == 0 {
		// Turning websockets on is what lets them reach /app/ at a tenant
		// with the default paths; a tenant's own list still rules.
		paths = websocketPaths
	}
	target, err := proxyPath(c.Param("*"), paths)
	if err != nil {
		return err
	}
	if websocket && (!a.proxyCfg.Websocket || !strings.HasPrefix(target, "/app/")) {
		return errWebsocketOff
	}
	// The proxy's fill and its retry after a 401 spend the identity's
	// budget of token calls.
	req = req.WithContext(withBudget(req.Context(), a.users, identityKey(id)))
	tok, err := a.broker.Token(req.Context(), id)
	if err != nil {
		return err
	}
	base, err := url.Parse(up.tenant.URL)
	if err != nil {
		return err
	}

	// Timeout bounds a request, streaming included, but not a websocket:
	// ReverseProxy closes a switched connection when the request's context
	// ends, so a deadline here would cut every engine session at Timeout
	// (5m by default), however busy. The handshake is bounded by the
	// transport (ResponseHeaderTimeout); the socket then lives as long as
	// both ends keep it. net/http clears the server's read and write
	// deadlines, and the one set below, when the connection is hijacked.
	ctx, cancel := req.Context(), context.CancelFunc(func() {})
	if !websocket {
		ctx, cancel = context.WithTimeout(ctx, a.proxyCfg.Timeout)
	}
	defer cancel()
	// The server's write timeout suits token responses, not exports.
	// A little past Timeout, so that a request the timeout ends still gets
	// its 504.
	_ = http.NewResponseController(c.Response().Writer).SetWriteDeadline(time.Now().Add(a.proxyCfg.Timeout + proxyAnswerGrace))
	call := &proxyCall{id: id, token: tok.AccessToken}
	ctx = context.WithValue(ctx, proxyCtxKey{}, call)
	req = req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		req.Body = http.MaxBytesReader(c.Response().Writer, req.Body, a.proxyCfg.MaxRequestBytes)
	}

	start := time.Now()
	status := 0
	rp := &httputil.ReverseProxy{
		Transport: &retryTransport{base: a.proxyTransport, api: a},
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(base)
			pr.Out.URL.Path, pr.Out.URL.RawPath = target, ""
			pr.Out.URL.RawQuery = pr.In.URL.RawQuery
			pr.Out.Host = base.Host
			for _, h := range []string{"Authorization", "Cookie", "Origin", "Referer"} {
				pr.Out.Header.Del(h)
			}
			dropClientIP(pr.Out.Header)
			pr.Out.Header.Set("Authorization", "Bearer "+call.token)
			if !websocket {
				// ReverseProxy would tunnel any protocol the tenant switched
				// to (h2c, "websocket, x"...), past the check above, which
				// lets only a websocket to /app/ switch. Other upgrades go
				// as plain requests: a server may ignore Upgrade.
				pr.Out.Header.Del("Upgrade")
				pr.Out.Header.Del("Connection")
			}
			replayable(pr.Out)
		},
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del("Set-Cookie")
			dropCORS(resp.Header)
			status = resp.StatusCode
			if status == http.StatusSwitchingProtocols {
				// ReverseProxy writes the 101 on the hijacked connection,
				// past echo's Response: record it for the request metrics.
				c.Response().Status = status
			}
			a.m.ProxyDuration.WithLabelValues(up.tenant.ID).Observe(time.Since(start).Seconds())
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) && c.Request().Context().Err() != nil {
				// The caller went away: its own doing, not the tenant's.
				// 499 as on the token route, logged at debug by classify.
				status = statusClientClosed
				c.Error(err)
				return
			}
			status = http.StatusBadGateway
			var mbe *http.MaxBytesError
			switch {
			case errors.As(err, &mbe):
				status = http.StatusRequestEntityTooLarge
			case errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded:
				status = http.StatusGatewayTimeout
			}
			a.log.WarnContext(r.Context(), "proxied request failed", "tenant", up.tenant.ID, "err", err)
			c.Error(echo.NewHTTPError(status))
		},
	}
	rp.ServeHTTP(c.Response(), req)
	if status == 0 {
		status = c.Response().Status
	}
	a.m.ProxyRequests.WithLabelValues(up.tenant.ID, methodClass(req.Method), strconv.Itoa(status/100)+"xx").Inc()
	return nil
}

// proxyPath cleans the requested path and checks it against the allow-list.
// Traversal (.., encoded or not) cannot climb out of an allowed prefix
// because the check is on the cleaned path.
func proxyPath(raw string, allowed []string) (string, error) {
	unescaped, err := url.PathUnescape(raw)
	if err != nil || strings.ContainsAny(unescaped, "\\\x00") {
		return "", errPathNotAllowed
	}
	p := path.Clean("/" + unescaped)
	if strings.HasSuffix(raw, "/") && p != "/" {
		p += "/"
	}
	for _, prefix := range allowed {
		if strings.HasPrefix(p, prefix) {
			return p, nil
		}
	}
	return "", errPathNotAllowed
}

func (t Tenant) proxyPaths() []string {
	if len(t.ProxyPaths) == 0 {
		return DefaultProxyPaths
	}
	return t.ProxyPaths
}

// replayable keeps a small request body in memory so the request can be
// sent again after a 401.
func replayable(out *http.Request) {
	if out.Body == nil || out.Body == http.NoBody {
		out.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
		return
	}
	if out.ContentLength < 0 || out.ContentLength > replayLimit {
		return // streams; no retry
	}
	raw, err := io.ReadAll(io.LimitReader(out.Body, replayLimit+1))
	out.Body.Close()
	if err != nil || int64(len(raw)) > replayLimit {
		out.Body = io.NopCloser(io.MultiReader(bytes.NewReader(raw), errReader{err}))
		return
	}
	out.Body = io.NopCloser(bytes.NewReader(raw))
	out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) {
	if e.err == nil {
		return 0, io.EOF
	}
	return 0, e.err
}

// retryTransport sends a request again, once, with a fresh token when the
// tenant answers 401 and the body can be replayed.
type retryTransport struct {
	base http.RoundTripper
	api  *API
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || req.GetBody == nil {
		return resp, err
	}
	call, _ := req.Context().Value(proxyCtxKey{}).(*proxyCall)
	if call == nil {
		return resp, nil
	}
	fresh, ferr := t.api.broker.Reissue(req.Context(), call.id, call.token)
	body, berr := req.GetBody()
	if ferr != nil || berr != nil {
		t.api.log.WarnContext(req.Context(), "proxy: no fresh token after a 401", "err", errors.Join(ferr, berr))
		return resp, nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	again := req.Clone(req.Context())
	again.Body = body
	call.token = fresh.AccessToken
	again.Header.Set("Authorization", "Bearer "+fresh.AccessToken)
	return t.base.RoundTrip(again)
}

func methodClass(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return "read"
	}
	return "write"
}
