package broker_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// wsPaths lets the proxy reach the engine as well as the REST API.
func wsPaths(cfg *broker.Config) { cfg.Tenants[0].ProxyPaths = []string{"/api/v1/", "/app/"} }

func restPaths(cfg *broker.Config) { cfg.Tenants[0].ProxyPaths = []string{"/api/v1/"} }

// wsCtx bounds a test's websocket I/O so a broken pass-through fails the
// test instead of hanging it. Nothing asserts on time.
func wsCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// dialWS opens a websocket to the broker at path with header. On a refused
// handshake it returns the answer, its body read.
func (e *env) dialWS(ctx context.Context, path string, header http.Header) (*websocket.Conn, *http.Response, error) {
	e.t.Helper()
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+path, &websocket.DialOptions{
		HTTPClient: e.srv.Client(),
		HTTPHeader: header,
	})
	if err == nil {
		e.t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

func bearer(session string) http.Header { return http.Header{"Authorization": {"Bearer " + session}} }

// exchange sends msg and returns the engine's reply.
func exchange(t *testing.T, ctx context.Context, c *websocket.Conn, msg string) qliktest.EngineReply {
	t.Helper()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	typ, raw, err := c.Read(ctx)
	var r qliktest.EngineReply
	if err != nil || typ != websocket.MessageText || json.Unmarshal(raw, &r) != nil {
		t.Fatalf("reply to %q: %v %v %s", msg, err, typ, raw)
	}
	return r
}

// TestProxyWebsocket: an engine websocket opened through /v1/qlik/app/<id>
// carries messages both ways as the session's user, whether the session
// comes as a bearer token from a server or as a cookie from an allowed
// browser origin. The tenant sees the broker's token for that user, and
// none of the caller's credentials, cookies or Origin; a client closing
// gets its close handshake answered through the proxy; two users' sockets
// open at once do not cross.
func TestProxyWebsocket(t *testing.T) {
	const origin = "https://oem.example.com"
	var rec *recorder
	e := newEnv(t, envOptions{
		proxy:    broker.ProxyConfig{Websocket: true},
		tune:     wsPaths,
		cookie:   "oem_session",
		origins:  []string{origin},
		proxyURL: func(u string) string { rec = newRecorder(t, u); return rec.srv.URL },
	})
	ada, grace := e.addUser("Ada"), e.addUser("Grace")
	ctx := wsCtx(t)
	for _, tc := range []struct {
		name   string
		user   qliktest.User
		header func(session string) http.Header
	}{
		{"bearer session", ada, bearer},
		{"another user's session", grace, bearer},
		{"session cookie from an allowed origin", ada, func(s string) http.Header {
			return http.Header{"Cookie": {"oem_session=" + s}, "Origin": {origin}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sess := e.session(tc.user.ID)
			before := len(rec.seen())
			c, resp, err := e.dialWS(ctx, "/v1/qlik/app/app-1?reloadUri=x", tc.header(sess))
			if err != nil {
				t.Fatalf("dial: %v %v", err, resp)
			}
			for _, msg := range []string{`{"jsonrpc":"2.0","id":1,"method":"OpenDoc","handle":-1,"params":["app-1"]}`, "second", ""} {
				got := exchange(t, ctx, c, msg)
				want := qliktest.EngineReply{AppID: "app-1", UserID: tc.user.ID, Subject: tc.user.Subject, Echo: msg}
				if got != want {
					t.Fatalf("reply %+v, want %+v", got, want)
				}
			}
			if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
				t.Fatalf("close handshake through the proxy: %v", err)
			}

			seen := rec.seen()[before:]
			if len(seen) != 1 || seen[0].URL.Path != "/app/app-1" || seen[0].URL.RawQuery != "reloadUri=x" {
				t.Fatalf("the tenant saw %d requests: %v", len(seen), seen)
			}
			h := seen[0].Header
			auth := h.Get("Authorization")
			if !strings.HasPrefix(auth, "Bearer ") || e.tokenUser(strings.TrimPrefix(auth, "Bearer ")) != tc.user.ID {
				t.Fatalf("the tenant got Authorization %.20q..., not the user's impersonation token", auth)
			}
			if strings.Contains(auth, sess) || h.Get("Cookie") != "" || h.Get("Origin") != "" {
				t.Fatalf("caller credentials reached the tenant: %v", h)
			}
		})
	}

	// Two users' sockets open at once each stay their own user's.
	adaWS, _, err := e.dialWS(ctx, "/v1/qlik/app/app-1", bearer(e.session(ada.ID)))
	if err != nil {
		t.Fatal(err)
	}
	graceWS, _, err := e.dialWS(ctx, "/v1/qlik/app/app-2", bearer(e.session(grace.ID)))
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"a", "b"} {
		if got := exchange(t, ctx, graceWS, msg); got.UserID != grace.ID || got.AppID != "app-2" {
			t.Fatalf("Grace's socket answered %+v", got)
		}
		if got := exchange(t, ctx, adaWS, msg); got.UserID != ada.ID || got.AppID != "app-1" {
			t.Fatalf("Ada's socket answered %+v", got)
		}
	}
	if n := e.tenant.Calls(qliktest.EndpointEngine); n != 5 {
		t.Fatalf("engine handshakes %d, want 5", n)
	}

	// Each socket counts as one 101 when it has closed, and its lifetime
	// is kept out of the latency histogram.
	adaWS.Close(websocket.StatusNormalClosure, "")
	graceWS.Close(websocket.StatusNormalClosure, "")
	switched := e.metrics.HTTPRequests.WithLabelValues("/v1/qlik/*", http.MethodGet, "101")
	for testutil.ToFloat64(switched) != 5 {
		select {
		case <-ctx.Done():
			t.Fatalf("101s counted: %v, want 5", testutil.ToFloat64(switched))
		case <-time.After(10 * time.Millisecond):
		}
	}
	if n := histogramCount(t, e, "qlik_token_broker_http_request_duration_seconds", "/v1/qlik/*"); n != 0 {
		t.Fatalf("%d websocket lifetimes observed as request latency", n)
	}
}

// histogramCount is the sample count of a histogram's route series.
func histogramCount(t *testing.T, e *env, name, route string) uint64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" && l.GetValue() == route {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}

// TestProxyWebsocketRefused: an upgrade the broker must not pass is refused
// before anything reaches the tenant: websocket pass-through off, a path
// outside /app/, /app/ outside the tenant's proxy paths, no session, a
// foreign origin.
func TestProxyWebsocketRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		on     bool
		paths  func(*broker.Config)
		path   string
		header func(session string) http.Header
		status int
		code   string
	}{
		{"pass-through off", false, wsPaths, "/v1/qlik/app/app-1", bearer, 403, "websocket_not_allowed"},
		{"REST path", true, wsPaths, "/v1/qlik/api/v1/users/me", bearer, 403, "websocket_not_allowed"},
		{"/app/ not in the tenant's own proxy paths", true, restPaths, "/v1/qlik/app/app-1", bearer, 403, "path_not_allowed"},
		{"default paths, pass-through off", false, nil, "/v1/qlik/app/app-1", bearer, 403, "path_not_allowed"},
		{"no session", true, wsPaths, "/v1/qlik/app/app-1", func(string) http.Header { return nil }, 401, "invalid_session"},
		{"foreign origin", true, wsPaths, "/v1/qlik/app/app-1", func(s string) http.Header {
			h := bearer(s)
			h.Set("Origin", "https://evil.example.com")
			return h
		}, 403, "origin_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rec *recorder
			e := newEnv(t, envOptions{
				proxy:    broker.ProxyConfig{Websocket: tc.on},
				tune:     tc.paths,
				proxyURL: func(u string) string { rec = newRecorder(t, u); return rec.srv.URL },
			})
			ada := e.addUser("Ada")
			_, resp, err := e.dialWS(wsCtx(t), tc.path, tc.header(e.session(ada.ID)))
			if err == nil || resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("dial: %v %v, want %d", err, resp, tc.status)
			}
			var body errorBody
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Error != tc.code {
				t.Fatalf("error body %+v (%v), want %q", body, err, tc.code)
			}
			if n := len(rec.seen()); n != 0 {
				t.Fatalf("%d requests reached the tenant", n)
			}
			if n := e.tenant.Calls(qliktest.EndpointEngine); n != 0 {
				t.Fatalf("%d handshakes reached the engine", n)
			}
		})
	}
}

// TestProxyWebsocketDefaultPaths: with the default proxy paths, turning
// websockets on lets them reach /app/, and nothing else gets there.
func TestProxyWebsocketDefaultPaths(t *testing.T) {
	e := newEnv(t, envOptions{proxy: broker.ProxyConfig{Websocket: true}})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	ctx := wsCtx(t)
	c, resp, err := e.dialWS(ctx, "/v1/qlik/app/app-1", bearer(sess))
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	defer c.CloseNow()
	if got := exchange(t, ctx, c, "hi"); got.UserID != ada.ID {
		t.Fatalf("reply %+v, want Ada's", got)
	}
	resp, body := e.do(http.MethodGet, "/v1/qlik/app/app-1", sess, nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "path_not_allowed") {
		t.Fatalf("plain GET of /app/: %d %s, want 403 path_not_allowed", resp.StatusCode, body)
	}
}

// TestProxyWebsocketFreshToken: when the tenant refuses the handshake with
// 401 (the cached token was revoked), the broker retries it once with a
// fresh token and the socket opens as the user.
func TestProxyWebsocketFreshToken(t *testing.T) {
	e := newEnv(t, envOptions{proxy: broker.ProxyConfig{Websocket: true}, tune: wsPaths})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	_, body := e.do("GET", "/v1/token", sess, nil)
	e.tenant.RevokeToken(decodeTokenBody(t, body).AccessToken)

	ctx := wsCtx(t)
	c, resp, err := e.dialWS(ctx, "/v1/qlik/app/app-1", bearer(sess))
	if err != nil {
		t.Fatalf("dial after revocation: %v %v", err, resp)
	}
	if got := exchange(t, ctx, c, "hello"); got.UserID != ada.ID {
		t.Fatalf("reply %+v, want user %s", got, ada.ID)
	}
	if n := e.tenant.Calls(qliktest.EndpointEngine); n != 2 {
		t.Fatalf("engine handshakes %d, want 2 (refused, then with a fresh token)", n)
	}
	if n := e.tenant.UserTokenCalls(ada.ID); n != 2 {
		t.Fatalf("token calls %d, want 2", n)
	}
}

// TestProxyWebsocketOutlivesTimeout: the proxy timeout bounds requests,
// not websockets. With a timeout spent before the tenant is called, a plain
// request fails (502, or a cut connection: the write deadline is spent too)
// while a socket opens and carries messages.
func TestProxyWebsocketOutlivesTimeout(t *testing.T) {
	e := newEnv(t, envOptions{proxy: broker.ProxyConfig{Websocket: true, Timeout: time.Nanosecond}, tune: wsPaths})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/qlik/api/v1/users/me", nil)
	req.Header.Set("Authorization", "Bearer "+sess)
	if resp, err := e.srv.Client().Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("a request past the timeout succeeded: the timeout is not in force")
		}
	}
	ctx := wsCtx(t)
	c, resp, err := e.dialWS(ctx, "/v1/qlik/app/app-1", bearer(sess))
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	for _, msg := range []string{"one", "two"} {
		if got := exchange(t, ctx, c, msg); got.Echo != msg || got.UserID != ada.ID {
			t.Fatalf("reply %+v", got)
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// TestProxyWebsocketTenantCloses: the engine's close frame reaches the
// client through the proxy with its code, and a tenant that goes away ends
// the client's socket rather than leaving it hanging.
func TestProxyWebsocketTenantCloses(t *testing.T) {
	e := newEnv(t, envOptions{proxy: broker.ProxyConfig{Websocket: true}, tune: wsPaths})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	ctx := wsCtx(t)

	c, resp, err := e.dialWS(ctx, "/v1/qlik/app/app-1", bearer(sess))
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	if err := c.Write(ctx, websocket.MessageBinary, []byte{0}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Fatalf("the engine's close 1003 did not reach the client: %v", err)
	}

	c, resp, err = e.dialWS(ctx, "/v1/qlik/app/app-2", bearer(sess))
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	exchange(t, ctx, c, "open")
	e.tenant.Close()
	if _, _, err := c.Read(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("the socket outlived the tenant: %v", err)
	}
}

// TestProxyOtherUpgrades: only a websocket may switch protocols. Any other
// Upgrade, or a list that merely names websocket, reaches the tenant as a
// plain request without Upgrade or Connection, so nothing else can be
// tunnelled through the proxy.
func TestProxyOtherUpgrades(t *testing.T) {
	var rec *recorder
	e := newEnv(t, envOptions{
		proxy:    broker.ProxyConfig{Websocket: true},
		tune:     wsPaths,
		proxyURL: func(u string) string { rec = newRecorder(t, u); return rec.srv.URL },
	})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	for _, tc := range []struct {
		name, path, upgrade string
		status              int
	}{
		// users/<id>, not users/me: that one is a redirect (a second request).
		{"h2c to the REST API", "/v1/qlik/api/v1/users/" + ada.ID, "h2c", 200},
		{"a protocol list to the engine", "/v1/qlik/app/app-1", "websocket, h2c", 426},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(rec.seen())
			resp, body := e.do("GET", tc.path, sess, map[string]string{
				"Connection": "Upgrade, HTTP2-Settings", "Upgrade": tc.upgrade, "HTTP2-Settings": "AAMAAABkAAQAoAAAAAIAAAAA",
				"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
			})
			if resp.StatusCode != tc.status {
				t.Fatalf("%d %s, want %d", resp.StatusCode, body, tc.status)
			}
			seen := rec.seen()[before:]
			if len(seen) != 1 {
				t.Fatalf("the tenant saw %d requests", len(seen))
			}
			if h := seen[0].Header; h.Get("Upgrade") != "" || h.Get("Connection") != "" {
				t.Fatalf("the upgrade reached the tenant: %v", h)
			}
		})
	}
	if n := e.tenant.Calls(qliktest.EndpointEngine); n != 1 {
		t.Fatalf("engine calls %d, want 1", n)
	}
}
