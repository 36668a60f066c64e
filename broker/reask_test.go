package broker_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// refusedClaim is the header value a page sends to name token as refused.
func refusedClaim(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// reask asks for the raw token, naming refused (when set) as refused.
func (e *env) reask(session, refused string) (*http.Response, string) {
	e.t.Helper()
	h := map[string]string{"Accept": "text/plain"}
	if refused != "" {
		h[broker.RefusedTokenHeader] = refusedClaim(refused)
	}
	resp, body := e.do("POST", "/v1/token", session, h)
	return resp, string(body)
}

// TestReaskRefusedTokenIsReplaced: a token revoked at the tenant behind
// the broker's back, named by its hash on the next request, is checked
// with one users/me call, evicted and replaced by a fresh token, which
// later requests get too.
func TestReaskRefusedTokenIsReplaced(t *testing.T) {
	e := newEnv(t, envOptions{})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	_, old := e.reask(sess, "")
	e.tenant.RevokeToken(old) // not through the broker
	e.tenant.ResetCounters()

	resp, fresh := e.reask(sess, old)
	if resp.StatusCode != 200 || fresh == old || e.tokenUser(fresh) != ada.ID {
		t.Fatalf("re-ask: %d, fresh token %v", resp.StatusCode, fresh != old)
	}
	if got := resp.Header.Get("X-QTB-Refused-Token-Result"); got != "refused" {
		t.Errorf("result %q, want refused", got)
	}
	if n := e.tenant.Calls(qliktest.EndpointUsersMe); n != 1 {
		t.Errorf("%d users/me checks, want 1", n)
	}
	if n := e.tenant.UserTokenCalls(ada.ID); n != 1 {
		t.Errorf("%d token calls for the fresh token, want 1", n)
	}
	if _, again := e.reask(sess, ""); again != fresh {
		t.Error("the next request did not get the fresh token")
	}
	// Naming the dead token again (a second tab) is a mismatch now: the
	// fresh token, no check, no token call.
	resp, got := e.reask(sess, old)
	if got != fresh || resp.Header.Get("X-QTB-Refused-Token-Result") != "mismatch" ||
		e.tenant.Calls(qliktest.EndpointUsersMe) != 1 || e.tenant.UserTokenCalls(ada.ID) != 1 {
		t.Errorf("second tab: same fresh token %v, result %q, %d checks, %d token calls", got == fresh,
			resp.Header.Get("X-QTB-Refused-Token-Result"), e.tenant.Calls(qliktest.EndpointUsersMe), e.tenant.UserTokenCalls(ada.ID))
	}
}

// TestReaskFalseClaimCostsNoTokenCall: a claim about a token the broker
// does not hold is answered with the current token and no tenant call; a
// claim about a token the tenant still accepts costs one users/me call
// and no token call; beyond three checks in a row an identity's claims are
// answered unchecked until the limit refills; a malformed claim is 400.
func TestReaskFalseClaimCostsNoTokenCall(t *testing.T) {
	e := newEnv(t, envOptions{})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	_, tok := e.reask(sess, "")
	e.tenant.ResetCounters()
	checks := func() int { return e.tenant.Calls(qliktest.EndpointUsersMe) }

	for _, tc := range []struct {
		name, claim, result string
		checks              int
	}{
		{"unknown token", "not-a-token-we-gave", "mismatch", 0},
		{"valid token", tok, "accepted", 1},
		{"valid token again", tok, "accepted", 2},
		{"and again", tok, "accepted", 3},
		{"once too often", tok, "limited", 3},
	} {
		resp, got := e.reask(sess, tc.claim)
		if resp.StatusCode != 200 || got != tok {
			t.Errorf("%s: %d, same token %v", tc.name, resp.StatusCode, got == tok)
		}
		if r := resp.Header.Get("X-QTB-Refused-Token-Result"); r != tc.result {
			t.Errorf("%s: result %q, want %q", tc.name, r, tc.result)
		}
		if n := checks(); n != tc.checks {
			t.Errorf("%s: %d checks, want %d", tc.name, n, tc.checks)
		}
	}
	e.clock.Advance(10 * time.Second)
	if resp, got := e.reask(sess, tok); got != tok || resp.Header.Get("X-QTB-Refused-Token-Result") != "accepted" || checks() != 4 {
		t.Errorf("after the limit refilled: same %v, result %q, %d checks, want accepted and 4",
			got == tok, resp.Header.Get("X-QTB-Refused-Token-Result"), checks())
	}
	if n := e.tenant.Calls(qliktest.EndpointToken); n != 0 {
		t.Errorf("false claims cost %d token calls, want 0", n)
	}
	for result, want := range map[string]float64{"mismatch": 1, "accepted": 4, "limited": 1, "refused": 0} {
		if got := testutil.ToFloat64(e.metrics.RefusedTokenClaims.WithLabelValues(result)); got != want {
			t.Errorf("refused_claims_total{result=%q} = %v, want %v", result, got, want)
		}
	}

	for _, bad := range []string{"abc", "sha256:abc", "sha1:" + strings.Repeat("0", 64), "sha256:" + strings.Repeat("A", 64), "sha256:" + strings.Repeat("g", 64)} {
		resp, body := e.do("GET", "/v1/token", sess, map[string]string{broker.RefusedTokenHeader: bad})
		if resp.StatusCode != 400 || decodeErrorBody(t, body).Error != "bad_request" {
			t.Errorf("claim %q: %d %s, want 400 bad_request", bad, resp.StatusCode, body)
		}
	}
	if checks() != 4 || e.tenant.Calls(qliktest.EndpointToken) != 0 {
		t.Error("malformed claims reached the tenant")
	}
}

// TestReaskUncheckable: when the tenant cannot answer the check (5xx),
// the same token is answered, nothing is evicted, and the verdict is not
// remembered.
func TestReaskUncheckable(t *testing.T) {
	e := newEnv(t, envOptions{})
	ada := e.addUser("Ada")
	sess := e.session(ada.ID)
	_, tok := e.reask(sess, "")
	e.tenant.InjectFault(qliktest.EndpointUsersMe, qliktest.Fault{Status: 503})
	resp, got := e.reask(sess, tok)
	if got != tok || resp.Header.Get("X-QTB-Refused-Token-Result") != "unchecked" {
		t.Errorf("tenant down: same %v, result %q", got == tok, resp.Header.Get("X-QTB-Refused-Token-Result"))
	}
	if resp, _ := e.reask(sess, tok); resp.Header.Get("X-QTB-Refused-Token-Result") != "accepted" {
		t.Errorf("after an unchecked claim the next one was %q, want a real check", resp.Header.Get("X-QTB-Refused-Token-Result"))
	}
	if n := e.tenant.UserTokenCalls(ada.ID); n != 1 {
		t.Errorf("%d token calls, want 1", n)
	}
}

// TestReaskEvictsOnEveryReplica: a refusal named at replica A replaces
// the token that replica B holds in its L1 too.
func TestReaskEvictsOnEveryReplica(t *testing.T) {
	d := newDeployment(t, 2, nil)
	d.waitSubscribed()
	a, b := d.replicas[0], d.replicas[1]
	ada := a.addUser("Ada")
	sess := a.session(ada.ID)
	_, old := getToken(a.srv.Client(), a.srv.URL, sess)
	if _, tok := getToken(b.srv.Client(), b.srv.URL, sess); tok != old {
		t.Fatal("B does not serve A's token")
	}
	d.tenant.RevokeToken(old)
	resp, fresh := a.reask(sess, old)
	if resp.StatusCode != 200 || fresh == old {
		t.Fatalf("re-ask at A: %d, fresh %v", resp.StatusCode, fresh != old)
	}
	start := time.Now()
	for {
		_, tok := getToken(b.srv.Client(), b.srv.URL, sess)
		if tok == fresh {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("B still serves the refused token five seconds after A replaced it")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := d.tenant.UserTokenCalls(ada.ID); n != 2 {
		t.Errorf("%d token calls over both replicas, want 2 (the first and the replacement)", n)
	}
}

// TestReaskFromTheBrowser: the preflight allows the header, and pages may
// read Retry-After and the result header.
func TestReaskFromTheBrowser(t *testing.T) {
	const origin = "https://app.example.com"
	e := newEnv(t, envOptions{origins: []string{origin}})
	resp, _ := e.do("OPTIONS", "/v1/token", "", map[string]string{"Origin": origin,
		"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-qtb-refused-token"})
	if resp.StatusCode != 204 || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), broker.RefusedTokenHeader) {
		t.Errorf("preflight: %d, Allow-Headers %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Headers"))
	}
	ada := e.addUser("Ada")
	resp, _ = e.do("POST", "/v1/token", e.session(ada.ID), map[string]string{"Origin": origin})
	if got := resp.Header.Get("Access-Control-Expose-Headers"); resp.StatusCode != 200 ||
		!strings.Contains(got, "Retry-After") || !strings.Contains(got, "X-QTB-Refused-Token-Result") {
		t.Errorf("token answer: %d, Expose-Headers %q", resp.StatusCode, got)
	}
}
