package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// call sends method /v1/token to a broker process and returns the status
// and body.
func (p *brokerProcess) call(t *testing.T, method, session string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+p.api+"/v1/token", nil)
	req.Header.Set("Authorization", "Bearer "+session)
	req.Header.Set("Accept", "text/plain")
	client := &http.Client{Timeout: 20 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// TestLogoutThroughRedisOutage runs two broker processes (and a third that
// never served the user) on one real Redis. A logout while Redis is paused
// (CLIENT PAUSE) and while it is dead revokes the token at the tenant and
// answers 204; the replica that served nothing answers 503
// logout_incomplete; once Redis is back no replica serves the old token.
func TestLogoutThroughRedisOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	rs := redistest.Start(t)
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	oc := tn.AddClient(qliktest.OAuthClient{ID: "client-e2e", Secret: "e2e-client-secret"})
	ada := tn.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Status: "active"})
	secretFile := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(secretFile, []byte(oc.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hmacKey := "an-hmac-key-of-at-least-32-bytes-long!"
	env := map[string]string{
		"QTB_TENANT_URL":          tn.URL(),
		"QTB_CLIENT_ID":           oc.ID,
		"QTB_CLIENT_SECRET_FILE":  secretFile,
		"QTB_SESSION_HMAC_SECRET": hmacKey,
		"QTB_USER_CLAIM":          "qlik_subject",
		"QTB_USER_LOOKUP":         "subject",
		"QTB_REDIS_URL":           rs.URL(),
	}
	session, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "app-user-1", "qlik_subject": ada.Subject, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(hmacKey))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := startBroker(t, bin, env), startBroker(t, bin, env), startBroker(t, bin, env)
	rdb := rs.Client(t)

	// noLongerServed waits (bounded) until neither replica serves old, then
	// checks a few more answers: Redis is back, so no replica may.
	noLongerServed := func(old string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for _, p := range []*brokerProcess{a, b} {
			for p.token(t, session) == old {
				if time.Now().After(deadline) {
					t.Fatalf("a replica still serves the logged-out token:\n%s", p.stderr.String())
				}
				time.Sleep(50 * time.Millisecond) // the logout's retry and the invalidation are in flight
			}
		}
		for range 5 {
			for _, p := range []*brokerProcess{a, b} {
				if p.token(t, session) == old {
					t.Fatal("a replica served the logged-out token again")
				}
			}
		}
	}
	revoked := func(tok string) bool { _, err := tn.TokenUser(tok); return err != nil }

	const pause = 7 * time.Second
	for _, outage := range []string{"paused", "killed"} {
		old := a.token(t, session)
		if b.token(t, session) != old {
			t.Fatal("the replicas serve different tokens")
		}
		revokes := tn.Calls(qliktest.EndpointRevoke)
		switch outage {
		case "paused":
			// Long enough for both logouts below; it then ends by itself
			// (a new connection to send CLIENT UNPAUSE would be paused).
			if err := rdb.Do(t.Context(), "CLIENT", "PAUSE", strconv.Itoa(int(pause/time.Millisecond)), "ALL").Err(); err != nil {
				t.Fatal(err)
			}
		case "killed":
			rs.Stop()
		}
		start := time.Now()
		status, body := a.call(t, "DELETE", session)
		took := time.Since(start)
		if status != http.StatusNoContent || !revoked(old) {
			t.Fatalf("%s: logout at the replica holding the token: %d %s, revoked %v\n%s", outage, status, body, revoked(old), a.stderr.String())
		}
		// The replica that never served the user has nothing to revoke and
		// cannot read Redis: it says so.
		status, body = c.call(t, "DELETE", session)
		var eb struct{ Error, Message string }
		if status != http.StatusServiceUnavailable || json.Unmarshal(body, &eb) != nil || eb.Error != "logout_incomplete" {
			t.Fatalf("%s: logout at a replica that cannot see the token: %d %s", outage, status, body)
		}
		t.Logf("Redis %s: logout answered 204 in %v, %d revoke calls; the replica that saw nothing answered %d %s",
			outage, took.Round(time.Millisecond), tn.Calls(qliktest.EndpointRevoke)-revokes, status, eb.Error)
		switch outage {
		case "paused":
			time.Sleep(time.Until(start.Add(pause))) // until Redis answers again
		case "killed":
			rs.Restart(t)
		}
		noLongerServed(old)
	}
}
