package qliktest

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"
)

// EngineReply is the fake engine's answer to each text message on
// /app/{appId}: which app the socket was opened on, whom the bearer token of
// the handshake acts for, and the message as received. A test reads it to
// see that a proxy carried both the messages and the right user's token.
type EngineReply struct {
	AppID   string `json:"appId"`
	UserID  string `json:"userId"`
	Subject string `json:"subject"`
	Echo    string `json:"echo"`
}

// handleEngine answers GET /app/{appId}, a stand-in for the engine
// websocket. Contract section 6 has browsers open the real one themselves
// after a token exchange; this endpoint exists only so a proxy's websocket
// pass-through can be tested against a real websocket. It checks the bearer
// token before upgrading, as /api/v1/users/me does (401 with the errors body
// otherwise), answers 426 to a request that is not a websocket upgrade, and
// then answers every text message with an EngineReply. The token is not
// checked again while the socket is open. A binary message closes the socket
// with 1003; Close drops open sockets without a close frame.
func (t *Tenant) handleEngine(w http.ResponseWriter, r *http.Request) {
	u, crossOrigin, ok := t.engineUser(w, r) // exchange.go
	if !ok {
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("Upgrade", "websocket")
		writeError(w, http.StatusUpgradeRequired, "HTTP-426", "Upgrade required.", "The engine is reached over a websocket.")
		return
	}
	// A browser's Origin must match the host (Accept's default check); a
	// proxy that drops Origin passes.
	// An allowed origin of the tenant's clients is accepted as well.
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: crossOrigin})
	if err != nil {
		return // Accept has answered
	}
	defer conn.CloseNow()

	// Close waits for handlers, so it drops open sockets rather than wait
	// for their clients to leave (or to answer a close frame).
	stop := make(chan struct{})
	var dropper sync.WaitGroup
	dropper.Go(func() {
		select {
		case <-t.done:
			_ = conn.CloseNow()
		case <-stop:
		}
	})
	defer dropper.Wait()
	defer close(stop)

	ctx := r.Context() // not cancelled before this handler returns: the connection is hijacked
	appID := r.PathValue("appId")
	for {
		typ, msg, err := conn.Read(ctx)
		if err != nil {
			return // the peer closed (the library has answered its close frame) or went away
		}
		if typ != websocket.MessageText {
			_ = conn.Close(websocket.StatusUnsupportedData, "text messages only")
			return
		}
		reply, _ := json.Marshal(EngineReply{AppID: appID, UserID: u.ID, Subject: u.Subject, Echo: string(msg)})
		if err := conn.Write(ctx, websocket.MessageText, reply); err != nil {
			return
		}
	}
}
