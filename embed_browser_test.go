package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// The placeholders of examples/embed/index.html the browser tests fill in.
const (
	embedBrokerPlaceholder = `content="https://broker.example.com"`
	embedScriptPlaceholder = `https://cdn.jsdelivr.net/npm/@qlik/embed-web-components@1.6.0/dist/index.min.js`
	embedHostPlaceholder   = `https://<tenant>.<region>.qlikcloud.com`
	embedClientPlaceholder = `<impersonation OAuth client id>`
	embedAppPlaceholder    = `app-id="<app id>"`
)

// installEmbedPackages installs examples/embed's pinned npm packages
// (@qlik/embed-web-components, @qlik/api; package-lock.json) into a cache
// directory named after the lockfile, once, and returns its node_modules.
// It skips the test when npm is missing.
func installEmbedPackages(t *testing.T) string {
	t.Helper()
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm is not on PATH: cannot install @qlik/embed-web-components and @qlik/api for the embed browser test")
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not on PATH: npm cannot run to install @qlik/embed-web-components and @qlik/api")
	}
	pkg, err1 := os.ReadFile("examples/embed/package.json")
	lock, err2 := os.ReadFile("examples/embed/package-lock.json")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	sum := sha256.Sum256(append(append([]byte{}, pkg...), lock...))
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "qtb", "embed-npm-"+hex.EncodeToString(sum[:6]))
	modules := filepath.Join(dir, "node_modules")
	if _, err := os.Stat(filepath.Join(modules, ".qtb-complete")); err == nil {
		return modules
	}
	// Install beside, then move into place: a run cut short leaves no
	// half-installed directory behind.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "embed-npm-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	for name, b := range map[string][]byte{"package.json": pkg, "package-lock.json": lock} {
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci for examples/embed: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(tmp, "node_modules", ".qtb-complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return modules
}

// brokerCall is one request the page made to the broker, as the recording
// front saw it.
type brokerCall struct {
	method, path string
	refused      string // X-QTB-Refused-Token
	status       int
	result       string // X-QTB-Refused-Token-Result
	retryAfter   string
	at           time.Time
}

// recordingFront is a reverse proxy in front of the broker that records
// every request the page makes to it.
type recordingFront struct {
	mu    sync.Mutex
	calls []brokerCall
	// failTokens answers this many POST /v1/token requests with a bare 502
	// and no CORS headers, as an ingress does while the broker restarts:
	// the page sees a network error (TypeError). (Dropping the connection
	// instead would let Chromium resend the POST on its own.)
	failTokens int
}

func (f *recordingFront) handler(t *testing.T, target string) http.Handler {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		r := resp.Request
		f.mu.Lock()
		f.calls = append(f.calls, brokerCall{method: r.Method, path: r.URL.Path, refused: r.Header.Get("X-QTB-Refused-Token"),
			status: resp.StatusCode, result: resp.Header.Get("X-QTB-Refused-Token-Result"),
			retryAfter: resp.Header.Get("Retry-After"), at: time.Now()})
		f.mu.Unlock()
		return nil
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		fail := r.Method == http.MethodPost && r.URL.Path == "/v1/token" && f.failTokens > 0
		if fail {
			f.failTokens--
			f.calls = append(f.calls, brokerCall{method: r.Method, path: r.URL.Path, refused: r.Header.Get("X-QTB-Refused-Token"),
				status: http.StatusBadGateway, at: time.Now()})
		}
		f.mu.Unlock()
		if fail {
			http.Error(w, "broker restarting", http.StatusBadGateway)
			return
		}
		rp.ServeHTTP(w, r)
	})
}

func (f *recordingFront) fail(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failTokens = n
}

// statuses lists the statuses of calls.
func statuses(calls []brokerCall) []int {
	var out []int
	for _, c := range calls {
		out = append(out, c.status)
	}
	return out
}

// tokenCalls returns the page's POST /v1/token requests since call n.
func (f *recordingFront) tokenCalls(n int) []brokerCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []brokerCall
	for _, c := range f.calls[min(n, len(f.calls)):] {
		if c.method == http.MethodPost && c.path == "/v1/token" {
			out = append(out, c)
		}
	}
	return out
}

func (f *recordingFront) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// embedResult is what the stand-in runtime's calls report (embed-vanilla.js).
type embedResult struct {
	Rest struct {
		Status int `json:"status"`
		Data   struct {
			Caller struct{ ID string } `json:"qliktestCaller"`
		} `json:"data"`
		Error string `json:"error"`
	} `json:"rest"`
	Engine struct {
		Opened      bool                 `json:"opened"`
		Reply       qliktest.EngineReply `json:"reply"`
		QueryParams []string             `json:"queryParams"`
		Error       string               `json:"error"`
	} `json:"engine"`
}

// TestBrowserEmbedWithQlikCode runs examples/embed/index.html in headless
// Chromium with Qlik's published code: @qlik/embed-web-components (the
// <qlik-embed> loader) and @qlik/api, pinned in examples/embed and
// installed from npm. The fake tenant serves a stand-in for the unpublished
// UI runtime (<host>/qlik-embed/main.js) whose auth, REST and token
// exchange are @qlik/api's own implementation, driven by the hostConfig
// qlik-embed builds from the page (Oauth2, getAccessToken). The broker sits
// between the page and the tenant, behind a front that records what the
// page asks it. It shows:
//
//   - one getAccessToken at start; the REST call carries that user's
//     token; the websocket opens through the token exchange;
//   - a token dropped behind the broker's back (revoked at the tenant):
//     the page's 401, a re-ask naming it, a fresh token, the retry 200;
//     the same on the websocket path (the exchange fails, re-ask, opens);
//   - a false claim (a 401 that was not the token's fault): the re-ask
//     names the token, the broker checks it and answers the same token,
//     with no token call; the retry is 200;
//   - getAccessToken retrying through the broker's 503 (the tenant's 429
//     cooldown, Retry-After honoured) and through network errors, and
//     giving a clear error when the broker stays unreachable or the
//     cooldown is too long to wait.
//
// What it does not exercise: Qlik's real UI runtime (unpublished) and the
// engine protocol (the stand-in opens the websocket with @qlik/api's
// websocket auth parameters and reads one reply; enigma.js is not run).
func TestBrowserEmbedWithQlikCode(t *testing.T) {
	chromium := chromiumPath()
	if chromium == "" {
		t.Skip("no Chromium found (apt-get install chromium, or set QTB_CHROMIUM): the browser test needs a real browser")
	}
	if testing.Short() {
		t.Skip("installs npm packages and drives Chromium; skipped with -short")
	}
	modules := installEmbedPackages(t)
	page, err := os.ReadFile("examples/embed/index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{embedBrokerPlaceholder, embedScriptPlaceholder, embedHostPlaceholder, embedClientPlaceholder, embedAppPlaceholder} {
		if !strings.Contains(string(page), p) {
			t.Fatalf("examples/embed/index.html no longer has the placeholder %s", p)
		}
	}

	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	if err := tn.ServeEmbedRuntime(os.DirFS(filepath.Join(modules, "@qlik", "api"))); err != nil {
		t.Fatal(err)
	}

	var front recordingFront
	var rendered []byte
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(rendered)
		case "/vendor/embed-web-components.js":
			http.ServeFile(w, r, filepath.Join(modules, "@qlik", "embed-web-components", "dist", "index.js"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(app.Close)
	p := startInProc(t, inProcOptions{tenant: tn, env: map[string]string{
		"QTB_SESSION_COOKIE": "app_session",
		"QTB_CORS_ORIGINS":   app.URL,
	}})
	// The page calls the tenant directly with the token: its origin must
	// be one of the impersonation client's allowed origins.
	oc := tn.AddClient(qliktest.OAuthClient{ID: p.client.ID, Secret: "in-process-client-secret", AllowedOrigins: []string{app.URL}})
	brokerFront := httptest.NewServer(front.handler(t, p.api))
	t.Cleanup(brokerFront.Close)
	rendered = []byte(strings.NewReplacer(
		embedBrokerPlaceholder, `content="`+brokerFront.URL+`"`,
		embedScriptPlaceholder, app.URL+"/vendor/embed-web-components.js",
		embedHostPlaceholder, tn.URL(),
		embedClientPlaceholder, oc.ID,
		embedAppPlaceholder, `app-id="app-1"`,
	).Replace(string(page)))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	allocCtx := headlessChromium(t, ctx, chromium)
	var consoleMu sync.Mutex
	var console []string
	bctx, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancelBrowser)
	if err := chromedp.Listen(bctx, func(ev any) {
		var line string
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			var args []string
			for _, a := range e.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			line = string(e.Type) + ": " + strings.Join(args, " ")
		case *runtime.EventExceptionThrown:
			line = "exception: " + e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				line += " " + e.ExceptionDetails.Exception.Description
			}
		default:
			return
		}
		consoleMu.Lock()
		console = append(console, line)
		consoleMu.Unlock()
	}); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	diag := func() string {
		consoleMu.Lock()
		defer consoleMu.Unlock()
		return "browser console:\n  " + strings.Join(console, "\n  ") + "\nbroker logs:\n" + p.logs.String()
	}

	signIn := func(userID string) {
		t.Helper()
		sess := p.session(t, userID)
		err := chromedp.Do(bctx, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
			_, err := cdp.Call(ctx, tgt, network.SetCookie, network.SetCookieParams{
				Name: "app_session", Value: sess, URL: app.URL + "/", Path: "/",
				HTTPOnly: &[]bool{true}[0], SameSite: network.CookieSameSiteLax,
			})
			return err
		}))
		if err != nil {
			t.Fatalf("chromium: set the session cookie: %v", err)
		}
	}
	// embed runs expr on the <qlik-embed> element's ref API (the stand-in
	// runtime's), awaits it and decodes the result.
	embed := func(what, expr string) embedResult {
		t.Helper()
		raw, err := chromedp.Run(bctx, chromedp.Evaluate[string](
			`document.querySelector("qlik-embed").getRefApi().then(api => `+expr+`).then(r => JSON.stringify(r))`,
			chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, diag())
		}
		var r embedResult
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			t.Fatalf("%s: %v: %s", what, err, raw)
		}
		return r
	}
	claim := func(token string) string {
		sum := sha256.Sum256([]byte(token))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	// current asks the broker (not through the page) for the user's token.
	current := func(userID string) string {
		t.Helper()
		resp, body := p.do(t, http.MethodGet, "/v1/token", p.session(t, userID), map[string]string{"Accept": "text/plain"}, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("broker: %d %s", resp.StatusCode, body)
		}
		return string(body)
	}

	ada := tn.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Status: "active"})
	signIn(ada.ID)

	// At start: one getAccessToken, the REST call with Ada's bearer
	// token, the websocket through the exchange.
	if err := chromedp.Do(bctx, chromedp.Navigate(app.URL+"/")); err != nil {
		t.Fatalf("chromium: navigate: %v", err)
	}
	got := embed("mount", "api.mounted()")
	if got.Rest.Status != 200 || got.Rest.Data.Caller.ID != ada.ID {
		t.Fatalf("the REST call at start: %+v, want 200 acting for Ada\n%s", got.Rest, diag())
	}
	if got.Engine.Reply.UserID != ada.ID || got.Engine.Reply.AppID != "app-1" || strings.Join(got.Engine.QueryParams, ",") != "accessToken" {
		t.Fatalf("the websocket at start: %+v, want Ada's, opened with ?accessToken=\n%s", got.Engine, diag())
	}
	if calls := front.tokenCalls(0); len(calls) != 1 || calls[0].refused != "" || calls[0].status != 200 {
		t.Errorf("getAccessToken calls at start: %+v, want one plain 200", calls)
	}
	if n := tn.UserTokenCalls(ada.ID); n != 1 {
		t.Errorf("%d token calls for Ada at start, want 1", n)
	}
	if n := tn.Exchanges(qliktest.PurposeWebsocket); n != 1 {
		t.Errorf("%d websocket exchanges at start, want 1", n)
	}
	t.Logf("at start: 1 getAccessToken, REST 200 as Ada, websocket opened with an exchanged token")

	// Dropped behind the broker's back: revoked at the tenant directly.
	old := current(ada.ID)
	tn.RevokeToken(old)
	tn.ResetCounters()
	mark := front.len()
	got = embed("REST after the revocation", "api.rest().then(rest => ({rest}))")
	if got.Rest.Status != 200 || got.Rest.Data.Caller.ID != ada.ID {
		t.Fatalf("REST after the revocation: %+v, want a retried 200\n%s", got.Rest, diag())
	}
	calls := front.tokenCalls(mark)
	if len(calls) != 1 || calls[0].refused != claim(old) || calls[0].result != "refused" || calls[0].status != 200 {
		t.Errorf("re-ask after the revocation: %+v, want one naming the revoked token, refused", calls)
	}
	fresh := current(ada.ID)
	if fresh == old || tn.UserTokenCalls(ada.ID) != 1 || tn.Calls(qliktest.EndpointApps) != 2 || tn.Calls(qliktest.EndpointUsersMe) != 1 {
		t.Errorf("after the revocation: fresh token %v, %d token calls (want 1), %d REST calls (want 401 + 200), %d checks (want 1)",
			fresh != old, tn.UserTokenCalls(ada.ID), tn.Calls(qliktest.EndpointApps), tn.Calls(qliktest.EndpointUsersMe))
	}
	t.Logf("dropped behind the broker's back: 401, re-ask naming it, fresh token, retry 200")

	// False claim: a 401 that was not the token's fault.
	tn.ResetCounters()
	tn.InjectFault(qliktest.EndpointApps, qliktest.Fault{Status: 401})
	mark = front.len()
	got = embed("REST after a stray 401", "api.rest().then(rest => ({rest}))")
	if got.Rest.Status != 200 || got.Rest.Data.Caller.ID != ada.ID {
		t.Fatalf("REST after a stray 401: %+v, want a retried 200\n%s", got.Rest, diag())
	}
	calls = front.tokenCalls(mark)
	if len(calls) != 1 || calls[0].refused != claim(fresh) || calls[0].result != "accepted" {
		t.Errorf("re-ask after a stray 401: %+v, want one naming the current token, accepted", calls)
	}
	if n := tn.Calls(qliktest.EndpointToken); n != 0 || current(ada.ID) != fresh {
		t.Errorf("a false claim cost %d token calls (want 0), or changed the token", n)
	}
	t.Logf("false claim: same token, 0 token calls, retry 200")

	// The websocket path: the exchange fails for a revoked token, @qlik/api
	// re-asks, the broker replaces the token, the socket opens.
	tn.RevokeToken(fresh)
	tn.ResetCounters()
	mark = front.len()
	got = embed("websocket after the revocation", `api.engine("again").then(engine => ({engine}))`)
	if got.Engine.Reply.UserID != ada.ID {
		t.Fatalf("websocket after the revocation: %+v\n%s", got.Engine, diag())
	}
	if calls := front.tokenCalls(mark); len(calls) != 1 || calls[0].refused != claim(fresh) || calls[0].result != "refused" {
		t.Errorf("re-ask after the failed exchange: %+v, want one naming the revoked token, refused", calls)
	}
	if n := tn.UserTokenCalls(ada.ID); n != 1 {
		t.Errorf("%d token calls after the failed exchange, want 1", n)
	}

	// A transient: the tenant answers 429, the broker 503 with
	// Retry-After; getAccessToken waits and tries again.
	bob := tn.AddUser(qliktest.User{Name: "Bob", Subject: "idp|bob", Status: "active"})
	signIn(bob.ID)
	tn.ResetCounters()
	tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 429, RetryAfter: "1"})
	mark = front.len()
	if err := chromedp.Do(bctx, chromedp.Navigate(app.URL+"/")); err != nil {
		t.Fatalf("chromium: navigate: %v", err)
	}
	got = embed("mount through a 503", "api.mounted()")
	if got.Rest.Status != 200 || got.Rest.Data.Caller.ID != bob.ID {
		t.Fatalf("the REST call after a 503: %+v\n%s", got.Rest, diag())
	}
	calls = front.tokenCalls(mark)
	if len(calls) < 2 || calls[0].status != 503 || calls[len(calls)-1].status != 200 {
		t.Errorf("getAccessToken through a 503: %+v, want a 503 then a 200", calls)
	}
	if n := tn.UserTokenCalls(bob.ID); n != 1 || tn.Exchanges(qliktest.PurposeWebsocket) != 1 || tn.Calls(qliktest.EndpointToken) != 3 {
		t.Errorf("%d token calls for Bob (want 1 besides the 429), %d exchanges (want 1), %d calls to /oauth/token (want 3)",
			n, tn.Exchanges(qliktest.PurposeWebsocket), tn.Calls(qliktest.EndpointToken))
	}
	t.Logf("getAccessToken through a 503: broker answers %v, then the embed mounted", statuses(calls))

	// A network error (the broker restarting behind an ingress): two
	// answers the page may not read; getAccessToken backs off and tries
	// again.
	front.fail(2)
	mark = front.len()
	tok, err := chromedp.Run(bctx, chromedp.Evaluate[string](`getAccessToken()`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("getAccessToken through network errors: %v\n%s", err, diag())
	}
	if u, err := tn.TokenUser(tok); err != nil || u.ID != bob.ID {
		t.Errorf("getAccessToken through network errors returned a token for %q (%v), want Bob's", u.ID, err)
	}
	calls = front.tokenCalls(mark)
	if got := statuses(calls); len(got) != 3 || got[0] != 502 || got[1] != 502 || got[2] != 200 {
		t.Errorf("getAccessToken through network errors: answers %v, want [502 502 200] (the 502s unreadable)", got)
	}
	t.Logf("getAccessToken through network errors: %v", statuses(calls))

	// Unreachable every time: a clear error after the last attempt.
	front.fail(4)
	mark = front.len()
	msg, err := chromedp.Run(bctx, chromedp.Evaluate[string](`getAccessToken().then(t => "token", e => e.name + ": " + e.message)`, chromedp.EvalAwaitPromise))
	if err != nil || !strings.HasPrefix(msg, "TypeError: token broker unreachable after 4 attempts") || len(front.tokenCalls(mark)) != 4 {
		t.Errorf("getAccessToken with the broker gone: %q (%v) after %d requests, want 4 and a clear error", msg, err, len(front.tokenCalls(mark)))
	}

	// An outage, not a transient: a Retry-After beyond what a page should
	// wait gives a clear error at once (the tenant's 429 asks for 10
	// minutes; the broker passes the cooldown on).
	carol := tn.AddUser(qliktest.User{Name: "Carol", Subject: "idp|carol", Status: "active"})
	signIn(carol.ID)
	tn.InjectFault(qliktest.EndpointToken, qliktest.Fault{Status: 429, RetryAfter: "600"})
	mark = front.len()
	msg, err = chromedp.Run(bctx, chromedp.Evaluate[string](`getAccessToken().then(t => "token", e => e.message)`, chromedp.EvalAwaitPromise))
	if err != nil || msg != "token broker: 503, retry after 600s" || len(front.tokenCalls(mark)) != 1 {
		t.Errorf("getAccessToken in a long cooldown: %q (%v) after %d requests, want one request and \"token broker: 503, retry after 600s\"",
			msg, err, len(front.tokenCalls(mark)))
	}
}
