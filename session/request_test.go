package session_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/labstack/echo/v4"

	"github.com/qtb-dev/qlik-token-broker/session"
)

func TestTokenFromRequest(t *testing.T) {
	t.Parallel()
	const cookie = "app_session"
	long := strings.Repeat("a", 101)
	tests := []struct {
		name    string
		auth    []string
		cookies []string // Cookie header values
		query   string
		cookie  string // cookieName argument
		want    string
		reason  session.Reason
	}{
		{name: "bearer", auth: []string{"Bearer tok"}, want: "tok"},
		{name: "bearer lower case", auth: []string{"bearer tok"}, want: "tok"},
		{name: "bearer upper case", auth: []string{"BEARER tok"}, want: "tok"},
		{name: "extra spaces", auth: []string{"Bearer   tok  "}, want: "tok"},
		{name: "bearer wins over cookie", auth: []string{"Bearer tok"}, cookies: []string{cookie + "=c"}, cookie: cookie, want: "tok"},
		{name: "cookie", cookies: []string{cookie + "=c"}, cookie: cookie, want: "c"},
		{name: "cookie among others", cookies: []string{"a=1; " + cookie + "=c; b=2"}, cookie: cookie, want: "c"},
		{name: "other scheme falls back to cookie", auth: []string{"Basic dXNlcjpwYXNz"}, cookies: []string{cookie + "=c"}, cookie: cookie, want: "c"},
		{name: "nothing", reason: session.ReasonMissing},
		{name: "cookie not configured", cookies: []string{cookie + "=c"}, reason: session.ReasonMissing},
		{name: "other cookie", cookies: []string{"x=c"}, cookie: cookie, reason: session.ReasonMissing},
		{name: "empty cookie", cookies: []string{cookie + "="}, cookie: cookie, reason: session.ReasonMissing},
		{name: "query string ignored", query: "access_token=tok&token=tok&" + cookie + "=tok", cookie: cookie, reason: session.ReasonMissing},
		{name: "bearer without token", auth: []string{"Bearer "}, reason: session.ReasonMissing},
		{name: "bearer alone", auth: []string{"Bearer"}, reason: session.ReasonMissing},
		{name: "basic", auth: []string{"Basic dXNlcjpwYXNz"}, reason: session.ReasonMalformed},
		{name: "token without scheme", auth: []string{"tok"}, reason: session.ReasonMalformed},
		{name: "bearer prefix without space", auth: []string{"Bearertok"}, reason: session.ReasonMalformed},
		{name: "two authorization headers", auth: []string{"Bearer a", "Bearer b"}, reason: session.ReasonMalformed},
		{name: "two session cookies", cookies: []string{cookie + "=a", cookie + "=b"}, cookie: cookie, reason: session.ReasonMalformed},
		{name: "bearer at limit", auth: []string{"Bearer " + long[:100]}, want: long[:100]},
		{name: "bearer too large", auth: []string{"Bearer " + long}, reason: session.ReasonTooLarge},
		{name: "other scheme too large is too large", auth: []string{"Basic " + long + "xx"}, reason: session.ReasonTooLarge},
		{name: "cookie at limit", cookies: []string{cookie + "=" + long[:100]}, cookie: cookie, want: long[:100]},
		{name: "cookie too large", cookies: []string{cookie + "=" + long}, cookie: cookie, reason: session.ReasonTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, "/token?"+tc.query, nil)
			for _, a := range tc.auth {
				r.Header.Add("Authorization", a)
			}
			for _, c := range tc.cookies {
				r.Header.Add("Cookie", c)
			}
			got, err := session.TokenFromRequest(r, tc.cookie, 100)
			if tc.reason != "" {
				wantReason(t, err, tc.reason)
				if got != "" {
					t.Fatalf("token %q returned with error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("token = %q, want %q", got, tc.want)
			}
		})
	}

	// maxBytes <= 0 means the default.
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+strings.Repeat("a", session.DefaultMaxTokenBytes+1))
	_, err := session.TokenFromRequest(r, "", 0)
	wantReason(t, err, session.ReasonTooLarge)
}

func TestMiddleware(t *testing.T) {
	t.Parallel()
	k := keys()
	v := newVerifier(t, session.Config{HMACSecret: k.hmac, TenantClaim: "tenant"})
	valid := sign(t, jwt.SigningMethodHS256, k.hmac, claims(map[string]any{"tenant": "acme"}), nil)
	expired := sign(t, jwt.SigningMethodHS256, k.hmac, claims(map[string]any{"tenant": "acme", "exp": now.Add(-time.Hour).Unix()}), nil)

	// handler reports the identity the middleware stored.
	handler := func(c echo.Context) error {
		id, ok := session.IdentityFrom(c)
		if !ok {
			return c.String(http.StatusInternalServerError, "no identity")
		}
		return c.JSON(http.StatusOK, map[string]string{"user": id.UserValue, "tenant": id.Tenant, "field": id.UserField})
	}

	var handled []error
	e := echo.New()
	e.GET("/default", handler, session.Middleware(v))
	e.GET("/custom", handler, session.MiddlewareWithConfig(session.MiddlewareConfig{
		Verifier:   v,
		CookieName: "sess",
		Skipper:    func(c echo.Context) bool { return c.Request().Header.Get("X-Skip") == "yes" },
		ErrorHandler: func(c echo.Context, err error) error {
			handled = append(handled, err)
			return c.String(http.StatusTeapot, string(session.ReasonOf(err)))
		},
	}))

	do := func(path string, header http.Header) *httptest.ResponseRecorder {
		t.Helper()
		r := httptest.NewRequest(http.MethodGet, path, nil)
		for k, vs := range header {
			r.Header[k] = vs
		}
		w := httptest.NewRecorder()
		e.ServeHTTP(w, r)
		return w
	}

	w := do("/default", http.Header{"Authorization": {"Bearer " + valid}})
	if w.Code != http.StatusOK {
		t.Fatalf("valid bearer: %d %s", w.Code, w.Body)
	}
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body["user"] != "alice" || body["tenant"] != "acme" || body["field"] != session.LookupUserID {
		t.Fatalf("identity seen by handler: %v", body)
	}

	for name, h := range map[string]http.Header{
		"missing":       nil,
		"expired":       {"Authorization": {"Bearer " + expired}},
		"cookie unused": {"Cookie": {"sess=" + valid}},
	} {
		w = do("/default", h)
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("%s: default handler answered %d, want 401", name, w.Code)
		}
		if got := w.Header().Get("WWW-Authenticate"); got != "Bearer" {
			t.Fatalf("%s: WWW-Authenticate = %q", name, got)
		}
		if strings.Contains(w.Body.String(), "eyJ") {
			t.Fatalf("%s: response body echoes a token: %s", name, w.Body)
		}
	}
	w = do("/default?access_token="+valid+"&token="+valid, nil)
	if w.Code != http.StatusUnauthorized {
		t.Fatalf("query string token was used: %d", w.Code)
	}

	w = do("/custom", http.Header{"Cookie": {"sess=" + valid}})
	if w.Code != http.StatusOK {
		t.Fatalf("cookie: %d %s", w.Code, w.Body)
	}
	w = do("/custom?token="+valid, nil)
	if w.Code != http.StatusTeapot || w.Body.String() != string(session.ReasonMissing) {
		t.Fatalf("custom handler on missing token: %d %q", w.Code, w.Body)
	}
	w = do("/custom", http.Header{"Authorization": {"Bearer " + expired}})
	if w.Code != http.StatusTeapot || w.Body.String() != string(session.ReasonExpired) {
		t.Fatalf("custom handler on expired token: %d %q", w.Code, w.Body)
	}
	if len(handled) != 2 {
		t.Fatalf("error handler called %d times, want 2", len(handled))
	}
	for _, err := range handled {
		var se *session.Error
		if !errors.As(err, &se) || err != error(se) {
			t.Fatalf("error handler got %T, want *session.Error", err)
		}
	}
	w = do("/custom", http.Header{"X-Skip": {"yes"}})
	if w.Code != http.StatusInternalServerError || w.Body.String() != "no identity" {
		t.Fatalf("skipper: %d %q", w.Code, w.Body)
	}
}

func TestMiddlewarePanicsWithoutVerifier(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Fatal("MiddlewareWithConfig without Verifier did not panic")
		}
	}()
	session.MiddlewareWithConfig(session.MiddlewareConfig{})
}

func TestIdentityFromWithoutMiddleware(t *testing.T) {
	t.Parallel()
	c := echo.New().NewContext(httptest.NewRequest(http.MethodGet, "/", nil), httptest.NewRecorder())
	if _, ok := session.IdentityFrom(c); ok {
		t.Fatal("IdentityFrom reported an identity")
	}
}
