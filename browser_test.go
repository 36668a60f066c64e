package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// chromiumPath finds a Chromium to drive: $QTB_CHROMIUM, else chromium on
// the PATH (Debian's package installs /usr/bin/chromium).
func chromiumPath() string {
	if p := os.Getenv("QTB_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestBrowserGetAccessToken runs examples/embed/index.html in headless
// Chromium the way qlik-embed would use it: the page on one origin calls
// getAccessToken, which fetches the raw token from the broker on another
// origin with the app's session cookie. The token it returns acts for the
// session's user. The same page served from an origin not on the allow-list
// gets a TypeError from fetch (no CORS grant), and the tenant is never asked.
func TestBrowserGetAccessToken(t *testing.T) {
	chromium := chromiumPath()
	if chromium == "" {
		t.Skip("no Chromium found (apt-get install chromium, or set QTB_CHROMIUM): the browser test needs a real browser")
	}
	page, err := os.ReadFile("examples/embed/index.html")
	if err != nil {
		t.Fatal(err)
	}
	const placeholder = `content="https://broker.example.com"`
	if !strings.Contains(string(page), placeholder) {
		t.Fatalf("examples/embed/index.html no longer has the %s placeholder", placeholder)
	}

	// The app's pages, on two origins: A is allowed, C is not. Both are
	// 127.0.0.1, like the broker: different ports are different origins but
	// the same site, so the session cookie (host-scoped, port-blind) goes
	// with cross-origin fetches to the broker.
	var brokerURL atomic.Value
	servePage := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		// The page's qlik-embed script is not loaded here (no network;
		// TestBrowserEmbedWithQlikCode runs it): only getAccessToken is.
		_, _ = w.Write([]byte(strings.NewReplacer(placeholder, `content="`+brokerURL.Load().(string)+`"`,
			embedScriptPlaceholder, "/no-embed-script.js").Replace(string(page))))
	})
	appA := httptest.NewServer(servePage)
	t.Cleanup(appA.Close)
	appC := httptest.NewServer(servePage)
	t.Cleanup(appC.Close)

	p := startInProc(t, inProcOptions{env: map[string]string{
		"QTB_SESSION_COOKIE": "app_session",
		"QTB_CORS_ORIGINS":   appA.URL,
	}})
	brokerURL.Store(p.api)
	ada := p.tenant.AddUser(qliktest.User{Name: "Ada", Subject: "idp|ada", Status: "active"})
	sess := p.session(t, ada.ID)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	allocCtx := headlessChromium(t, ctx, chromium)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancelBrowser)

	// settle runs getAccessToken and reports how its promise settled.
	settle := func(pageURL string) string {
		t.Helper()
		if err := chromedp.Do(bctx, chromedp.Navigate(pageURL)); err != nil {
			t.Fatalf("chromium: navigate to %s: %v", pageURL, err)
		}
		got, err := chromedp.Run(bctx, chromedp.Evaluate[string](
			`getAccessToken().then(t => "token:" + t, e => e.name + ": " + e.message)`, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("chromium: getAccessToken() on %s: %v\nbroker logs:\n%s", pageURL, err, p.logs.String())
		}
		return got
	}

	// The app signed the user in: its session cookie, as an app would set
	// it (HttpOnly, SameSite=Lax), for host 127.0.0.1.
	err = chromedp.Do(bctx, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
		_, err := cdp.Call(ctx, tgt, network.SetCookie, network.SetCookieParams{
			Name: "app_session", Value: sess, URL: appA.URL + "/", Path: "/",
			HTTPOnly: &[]bool{true}[0], SameSite: network.CookieSameSiteLax,
		})
		return err
	}))
	if err != nil {
		t.Fatalf("chromium: set the session cookie: %v", err)
	}

	// From the allowed origin: the raw token of the session's user.
	got := settle(appA.URL + "/")
	tok, ok := strings.CutPrefix(got, "token:")
	if !ok {
		t.Fatalf("getAccessToken() on %s: %s\nbroker logs:\n%s", appA.URL, got, p.logs.String())
	}
	u, err := p.tenant.TokenUser(tok)
	if err != nil || u.ID != ada.ID {
		t.Fatalf("the page got %q, which the tenant maps to %v (%v), want %s", tok, u.ID, err, ada.ID)
	}
	if n := p.tenant.UserTokenCalls(ada.ID); n != 1 {
		t.Errorf("%d upstream calls for Ada, want 1", n)
	}
	t.Logf("getAccessToken() on %s returned Ada's token (%d bytes) from the broker at %s", appA.URL, len(tok), p.api)

	// The same page on an origin that is not allowed: the browser sends the
	// cookie (same site) and the broker refuses before any token work; with
	// no CORS grant, fetch rejects with a TypeError.
	p.tenant.ResetCounters()
	got = settle(appC.URL + "/")
	if !strings.HasPrefix(got, "TypeError") {
		t.Errorf("getAccessToken() on the disallowed origin %s settled as %q, want a TypeError", appC.URL, got)
	}
	if n := p.tenant.Calls(qliktest.EndpointToken); n != 0 {
		t.Errorf("a request from a disallowed origin caused %d upstream token calls", n)
	}
	if m := p.scrape(t); !strings.Contains(m, "qlik_token_broker_http_origin_rejections_total 1") {
		t.Errorf("the broker did not count one origin rejection; the request may not have reached it")
	}
	t.Logf("getAccessToken() on %s: %s", appC.URL, got)

	// Back on the allowed origin after the app's session is gone: the
	// broker's 401 is readable (CORS granted), so the page's own error
	// surfaces rather than a TypeError.
	err = chromedp.Do(bctx, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
		_, err := cdp.Call(ctx, tgt, network.ClearBrowserCookies, cdp.Empty{})
		return err
	}))
	if err != nil {
		t.Fatalf("chromium: clear cookies: %v", err)
	}
	if got := settle(appA.URL + "/"); got != "Error: token broker: 401" {
		t.Errorf("getAccessToken() without a session settled as %q, want Error: token broker: 401", got)
	}
}

// headlessChromium starts an allocator for Debian's Chromium at path, headless
// and with the background networking this machine's closed network refuses
// turned off, in a fresh profile; it ends with the test.
func headlessChromium(t *testing.T, ctx context.Context, path string) context.Context {
	t.Helper()
	allocCtx, cancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	t.Cleanup(cancel)
	return allocCtx
}
