package qliktest_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// dialEngine opens the engine websocket of appID with token as bearer. The
// context only bounds a hang; nothing asserts on time.
func (h *harness) dialEngine(ctx context.Context, appID, token string) (*websocket.Conn, error) {
	h.t.Helper()
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.tn.URL(), "http")+"/app/"+appID, &websocket.DialOptions{
		HTTPClient: h.hc,
		HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		if resp != nil {
			return nil, errors.New(resp.Status)
		}
		return nil, err
	}
	h.t.Cleanup(func() { c.CloseNow() })
	return c, nil
}

// TestEngineWebsocketRefused: without a valid token, or without an
// upgrade, the engine answers with the errors body and never switches
// protocols; every attempt is counted.
func TestEngineWebsocketRefused(t *testing.T) {
	h := newHarness(t)
	revoked := h.issue()
	h.tn.RevokeToken(revoked)
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
		"Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	with := func(h http.Header, token string) http.Header {
		h = h.Clone()
		if h == nil {
			h = http.Header{}
		}
		h.Set("Authorization", "Bearer "+token)
		return h
	}
	for _, tc := range []struct {
		name   string
		header http.Header
		status int
	}{
		{"no token", upgrade, http.StatusUnauthorized},
		{"not a token", with(upgrade, "not-a-jwt"), http.StatusUnauthorized},
		{"revoked token", with(upgrade, revoked), http.StatusUnauthorized},
		{"valid token, no upgrade", with(nil, h.issue()), http.StatusUpgradeRequired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.tn.Calls(qliktest.EndpointEngine)
			r := h.mustDo(http.MethodGet, "/app/app-1", "", "", tc.header)
			wantError(t, r, tc.status, "HTTP-"+strconv.Itoa(tc.status))
			if n := h.tn.Calls(qliktest.EndpointEngine) - before; n != 1 {
				t.Fatalf("counted %d calls, want 1", n)
			}
		})
	}
}

// TestEngineWebsocketSession: each text message is answered with the app, the
// token's user and the message; a binary message closes with 1003, and
// Close drops open sockets rather than wait for their clients.
func TestEngineWebsocketSession(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := h.dialEngine(ctx, "app-1", h.issue())
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{`{"jsonrpc":"2.0","id":1,"method":"GetActiveDoc","handle":-1,"params":[]}`, "two", ""} {
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		typ, raw, err := c.Read(ctx)
		var got qliktest.EngineReply
		if err != nil || typ != websocket.MessageText || json.Unmarshal(raw, &got) != nil {
			t.Fatalf("reply to %q: %v %v %s", msg, err, typ, raw)
		}
		if want := (qliktest.EngineReply{AppID: "app-1", UserID: h.user.ID, Subject: h.user.Subject, Echo: msg}); got != want {
			t.Fatalf("reply %+v, want %+v", got, want)
		}
	}

	if err := c.Write(ctx, websocket.MessageBinary, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Fatalf("after a binary message: %v, want close 1003", err)
	}

	other, err := h.dialEngine(ctx, "app-2", h.issue())
	if err != nil {
		t.Fatal(err)
	}
	h.tn.Close()
	if _, _, err := other.Read(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("after Close the socket is still open: %v", err)
	}
	if n := h.tn.Calls(qliktest.EndpointEngine); n != 2 {
		t.Fatalf("counted %d handshakes, want 2", n)
	}
}
